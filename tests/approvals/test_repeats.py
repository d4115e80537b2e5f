"""The reads a park makes, on SQLite and PostgreSQL: the request a repeat of a call belongs to, and the agent's
pending count that refuses a park at `max_pending`."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from approvals.approvers import Approver, ApproverDirectory
from approvals.audit import canonical_json
from approvals.db import Database
from approvals.errors import TooManyPending
from approvals.service import ApprovalService
from approvals.states import Status
from tests.factories import held_cancel
from tests.gateway.fakes import MovableClock

ALICE = Approver("alice", groups=("traders",))
WINDOW = timedelta(minutes=10)


@pytest.fixture
async def service(database_url: str) -> AsyncIterator[tuple[ApprovalService, MovableClock]]:
    db = Database(database_url)
    await db.create_schema()
    clock = MovableClock()
    try:
        yield ApprovalService(db, ApproverDirectory([ALICE]), clock=clock), clock
    finally:
        await db.dispose()


def digest(arguments: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(arguments).encode()).hexdigest()


async def repeat_of(service: ApprovalService, clock: MovableClock, arguments: dict[str, Any]) -> str | None:
    found = await service.find_repeat("alpha", "ibkr_cancel_order", digest(arguments), ended_since=clock() - WINDOW)
    return None if found is None else found.id


async def test_a_repeat_belongs_to_the_open_request_else_the_newest_that_ended_in_the_window_never_a_withdrawal(
    service: tuple[ApprovalService, MovableClock],
) -> None:
    svc, clock = service
    call = {"orderId": 1, "confirm": True}
    assert await repeat_of(svc, clock, call) is None
    first = await svc.create(held_cancel(arguments=call))
    assert await repeat_of(svc, clock, call) == first.id
    # Another agent's or another tool's identical arguments are not this call.
    other = await svc.find_repeat("beta", "ibkr_cancel_order", digest(call), ended_since=clock() - WINDOW)
    assert other is None
    await svc.reject(first.id, ALICE, "web", "no")
    clock.advance(60)
    assert await repeat_of(svc, clock, call) == first.id
    # A new request for the call while the rejected one is still in the window: the open one answers.
    second = await svc.create(held_cancel(arguments=call))
    clock.advance(60)
    assert await repeat_of(svc, clock, call) == second.id
    await svc.reject(second.id, ALICE, "web", "still no")
    clock.advance(60)
    assert await repeat_of(svc, clock, call) == second.id, "the newest ended one"
    # The agent's own withdrawal is not an outcome a repeat gets again.
    third = await svc.create(held_cancel(arguments=call))
    assert await svc.withdraw(third.id, "the agent disconnected")
    assert await repeat_of(svc, clock, call) == second.id
    clock.advance(WINDOW.total_seconds() + 1)
    assert await repeat_of(svc, clock, call) is None, "out of the window"


async def test_a_call_approved_with_changes_answers_the_changed_call_while_open_and_both_once_ended(
    service: tuple[ApprovalService, MovableClock],
) -> None:
    svc, clock = service
    asked, changed = {"orderId": 7, "confirm": True}, {"orderId": 8, "confirm": True}
    request = await svc.create(held_cancel(arguments=asked, editable=("orderId",)))
    await svc.approve(request.id, ALICE, "web", edits={"orderId": 8})
    approved = await svc.get(request.id)
    assert (approved.status, approved.arguments_sha256) == (Status.APPROVED, digest(changed))
    assert await repeat_of(svc, clock, changed) == request.id
    assert await repeat_of(svc, clock, asked) is None
    await svc.begin_execution(request.id, approved.arguments_sha256)
    await svc.finish_execution(request.id, ok=True, result={"content": []}, error=None, summary="done")
    assert await repeat_of(svc, clock, asked) == request.id
    assert await repeat_of(svc, clock, changed) == request.id


async def test_the_agents_pending_count_refuses_its_park_at_max_pending_and_no_other_agents(
    service: tuple[ApprovalService, MovableClock],
) -> None:
    svc, _ = service
    for n in range(3):
        await svc.create(held_cancel(arguments={"orderId": n}), max_pending=3)
    with pytest.raises(TooManyPending):
        await svc.create(held_cancel(arguments={"orderId": 99}), max_pending=3)
    await svc.create(held_cancel(agent="beta", arguments={"orderId": 99}), max_pending=3)
    decided = (await svc.list_requests(statuses={Status.PENDING}, agent="alpha"))[0]
    await svc.reject(decided.id, ALICE, "web", "no")
    await svc.create(held_cancel(arguments={"orderId": 99}), max_pending=3)
    assert await svc.pending_by_agent() == {"alpha": 3, "beta": 1}
