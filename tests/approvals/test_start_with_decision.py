"""A waiter of this process has its request started by the approval's own transaction, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

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
