"""A waiter of this process has its request started by the approval's own transaction, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from sqlalchemy import update

from approvals.approvers import Approver, ApproverDirectory
from approvals.audit import canonical_json
from approvals.db import Database
from approvals.errors import AlreadyDecided, ArgumentsChanged
from approvals.execution import Start
from approvals.models import AuditEvent
from approvals.service import ApprovalService
from approvals.states import Status
from approvals.views import RequestView
from tests.factories import held_cancel
from tests.gateway.fakes import MovableClock

ALICE = Approver("alice", groups=("traders",))
BOB = Approver("bob", groups=("traders",))
CANCEL = {"orderId": 1001, "confirm": True}


def sha256_of(arguments: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(arguments).encode()).hexdigest()


@dataclass
class Waiter:
    """A starter as a held call offers one: it may start when `ready`, and hears whether it was started."""

    ready: bool = True
    forwarding: str = sha256_of(CANCEL)
    owner: str = "host:1:abc"
    claims: list[str] = field(default_factory=list)
    heard: list[RequestView | None] = field(default_factory=list)

    def claim(self, view: RequestView) -> Start | None:
        self.claims.append(view.status.value)
        return Start(self.owner, 60.0, self.forwarding) if self.ready else None

    def started(self, view: RequestView | None) -> None:
        self.heard.append(view)


@pytest.fixture
async def service(database_url: str) -> AsyncIterator[ApprovalService]:
    db = Database(database_url)
    await db.create_schema()
    try:
        yield ApprovalService(db, ApproverDirectory([ALICE, BOB]), clock=MovableClock())
    finally:
        await db.dispose()


async def kinds(service: ApprovalService, request_id: str) -> list[str]:
    return [e.kind for e in await service.history.events(request_id=request_id)]


async def test_an_approval_starts_the_call_of_a_waiter_here_in_the_same_transaction(service: ApprovalService) -> None:
    request = await service.create(held_cancel(arguments=CANCEL))
    waiter = Waiter()
    service.starts.add(request.id, waiter)

    outcome = await service.approve(request.id, ALICE, "api")

    # The approver hears the decision; the request has moved on to executing, by the waiter's process.
    assert outcome.request.status == Status.APPROVED
    assert waiter.claims == ["approved"]
    [started] = waiter.heard
    assert started is not None and started.status == Status.EXECUTING
    stored = await service.get(request.id)
    assert (stored.status, stored.executing_by) == (Status.EXECUTING, "host:1:abc")
    events = await service.history.events(request_id=request.id)
    assert [e.kind for e in events] == ["request.created", "request.approved", "request.executing"]
    approved, executing = events[1], events[2]
    assert approved.at == executing.at, "recorded in one step"
    # Nobody else can start it now: exactly one start.
    with pytest.raises(AlreadyDecided):
        await service.begin_execution(request.id, sha256_of(CANCEL))
    done = await service.finish_execution(request.id, ok=True, result={"content": []}, error=None, summary="ok")
    assert done.status == Status.EXECUTED


async def test_a_waiter_that_cannot_start_now_leaves_the_request_approved_for_a_later_start(
    service: ApprovalService,
) -> None:
    request = await service.create(held_cancel(arguments=CANCEL))
    declining, willing = Waiter(ready=False), Waiter()
    service.starts.add(request.id, declining)
    service.starts.add(request.id, willing)
    service.starts.discard(request.id, willing)  # stopped waiting before the decision

    await service.approve(request.id, ALICE, "api")

    assert declining.claims == ["approved"] and declining.heard == []
    assert willing.claims == []
    assert (await service.get(request.id)).status == Status.APPROVED
    started = await service.begin_execution(request.id, sha256_of(CANCEL))
    assert started.status == Status.EXECUTING
    assert await kinds(service, request.id) == ["request.created", "request.approved", "request.executing"]


async def test_arguments_that_differ_from_the_approved_ones_are_not_started_by_the_approval(
    service: ApprovalService,
) -> None:
    request = await service.create(held_cancel(arguments=CANCEL))
    waiter = Waiter(forwarding=sha256_of({"orderId": 1004, "confirm": True}))
    service.starts.add(request.id, waiter)

    await service.approve(request.id, ALICE, "api")

    # Claimed, not started: the request stays approved and the start that follows says why it never runs.
    assert waiter.heard == [None]
    assert (await service.get(request.id)).status == Status.APPROVED


async def test_an_approval_with_changes_starts_the_changed_call_and_the_chain_holds_both_events(
    service: ApprovalService,
) -> None:
    changed = {"orderId": 1002, "confirm": True}
    request = await service.create(held_cancel(arguments=CANCEL, editable=("orderId",)))
    waiter = Waiter(forwarding=sha256_of(changed))
    service.starts.add(request.id, waiter)

    await service.approve(request.id, ALICE, "api", edits={"orderId": 1002})

    # Judged against the approval being recorded (not yet in the chain when the start was decided), it starts.
    [started] = waiter.heard
    assert started is not None and started.arguments == changed
    events = await service.history.events(request_id=request.id)
    assert [e.kind for e in events] == ["request.created", "request.approved", "request.executing"]
    assert [e.seq for e in events[1:]] == [events[1].seq, events[1].seq + 1], "appended together, in order"
    report = await service.history.verify()
    assert report.ok, report.describe()


async def test_changes_the_approval_may_not_make_are_never_started_by_it(service: ApprovalService) -> None:
    request = await service.create(held_cancel(arguments=CANCEL, editable=("orderId",)))
    waiter = Waiter(forwarding=sha256_of(CANCEL))  # the call as asked, not as approved
    service.starts.add(request.id, waiter)

    await service.approve(request.id, ALICE, "api", edits={"orderId": 1002})

    assert waiter.heard == [None]
    assert (await service.get(request.id)).status == Status.APPROVED
    assert await kinds(service, request.id) == ["request.created", "request.approved"]


async def test_a_creation_altered_in_the_database_keeps_the_approval_from_starting_the_call(
    service: ApprovalService,
) -> None:
    request = await service.create(held_cancel(arguments=CANCEL))
    async with service.db.write() as conn:
        await conn.execute(
            update(AuditEvent.__table__)  # type: ignore[attr-defined]
            .where(AuditEvent.request_id == request.id, AuditEvent.kind == "request.created")
            .values(message="held for approval: something else")
        )
    waiter = Waiter()
    service.starts.add(request.id, waiter)

    await service.approve(request.id, ALICE, "api")

    # The approval is recorded; the start is not, and begin_execution ends it failed, never forwarded.
    assert waiter.heard == [None]
    assert (await service.get(request.id)).status == Status.APPROVED
    assert await kinds(service, request.id) == ["request.created", "request.approved"]
    with pytest.raises(ArgumentsChanged):
        await service.begin_execution(request.id, sha256_of(CANCEL))
    assert (await service.get(request.id)).status == Status.FAILED


async def test_the_first_of_two_approvals_starts_nothing(service: ApprovalService) -> None:
    request = await service.create(held_cancel(arguments=CANCEL, quorum=2))
    waiter = Waiter()
    service.starts.add(request.id, waiter)

    await service.approve(request.id, ALICE, "api")
    assert waiter.claims == [] and (await service.get(request.id)).status == Status.PENDING

    await service.approve(request.id, BOB, "api")
    assert waiter.claims == ["approved"]
    assert (await service.get(request.id)).status == Status.EXECUTING


async def test_a_start_given_back_returns_the_request_to_approved_but_never_anyone_elses(
    service: ApprovalService,
) -> None:
    request = await service.create(held_cancel(arguments=CANCEL))
    waiter = Waiter()
    service.starts.add(request.id, waiter)
    await service.approve(request.id, ALICE, "api")
    [mine] = waiter.heard
    assert mine is not None

    assert await service.abandon_start(request.id, "the agent went away", start=mine)
    assert (await service.get(request.id)).status == Status.APPROVED

    # Started again by someone else: giving back the old start does not touch the new one.
    theirs = await service.begin_execution(request.id, sha256_of(CANCEL), owner="host:2:def")
    assert not await service.abandon_start(request.id, "the agent went away", start=mine)
    stored = await service.get(request.id)
    assert (stored.status, stored.executing_by) == (Status.EXECUTING, theirs.executing_by)


async def test_approvals_and_results_arriving_together_each_start_and_end_their_own_call(
    service: ApprovalService,
) -> None:
    """Written together (approvals.decision_batches): each call is started once, by its own approval, and each
    result ends its own request; a waiter that declines, or forwards other arguments, is not started."""
    orders = [{"orderId": 2000 + n, "confirm": True} for n in range(9)]
    requests = [await service.create(held_cancel(arguments=order)) for order in orders]
    waiters = [Waiter(forwarding=sha256_of(order)) for order in orders]
    waiters[3].ready = False
    waiters[5].forwarding = sha256_of(CANCEL)  # not what was approved
    for request, waiter in zip(requests, waiters, strict=True):
        service.starts.add(request.id, waiter)
    approved: dict[str, Status] = {}

    async def approve(request_id: str) -> None:
        approved[request_id] = (await service.approve(request_id, ALICE, "api")).request.status

    async with anyio.create_task_group() as tg:
        for request in requests:
            tg.start_soon(approve, request.id)

    assert set(approved.values()) == {Status.APPROVED}
    starting = [n for n in range(9) if n not in (3, 5)]
    for n, (request, waiter) in enumerate(zip(requests, waiters, strict=True)):
        stored = await service.get(request.id)
        if n in starting:
            assert [v.status if v else None for v in waiter.heard] == [Status.EXECUTING]
            assert stored.status == Status.EXECUTING
            assert await kinds(service, request.id) == ["request.created", "request.approved", "request.executing"]
        else:
            assert stored.status == Status.APPROVED
            assert await kinds(service, request.id) == ["request.created", "request.approved"]
    # The approval is recorded just before its own start, in the chain's order.
    events = await service.history.events(limit=100)
    for n in starting:
        mine = [e for e in events if e.request_id == requests[n].id]
        assert mine[-1].seq == mine[-2].seq + 1

    ended: dict[str, object] = {}

    async def finish(request_id: str, ok: bool) -> None:
        try:
            ended[request_id] = await service.finish_execution(
                request_id, ok=ok, result={"content": []} if ok else None, error=None if ok else "boom", summary="done"
            )
        except AlreadyDecided as exc:
            ended[request_id] = exc

    async with anyio.create_task_group() as tg:
        for n in starting:
            tg.start_soon(finish, requests[n].id, n % 2 == 0)
        tg.start_soon(finish, requests[3].id, True)  # never started: refused, nothing written
        tg.start_soon(finish, requests[0].id, True)  # a second answer for one request: the first stands

    for n in starting:
        stored = await service.get(requests[n].id)
        assert stored.status == (Status.EXECUTED if n % 2 == 0 else Status.FAILED)
        assert (await kinds(service, requests[n].id))[-1] == f"request.{stored.status.value}"
    assert isinstance(ended[requests[3].id], AlreadyDecided)
    assert (await service.get(requests[3].id)).status == Status.APPROVED
    assert (await kinds(service, requests[0].id)).count("request.executed") == 1
    report = await service.history.verify()
    assert report.ok, report.describe()
