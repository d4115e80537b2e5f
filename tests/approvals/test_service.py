"""The approval service on its own (no MCP), with a clock the test moves, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from approvals.approvers import Approver, ApproverDirectory
from approvals.audit import canonical_json
from approvals.db import Database
from approvals.errors import (
    AlreadyDecided,
    AlreadyOpen,
    ApprovalError,
    ArgumentsChanged,
    InvalidDecision,
    NotAllowed,
    RequestNotFound,
)
from approvals.service import ApprovalService
from approvals.states import EndReason, Status
from approvals.views import NewRequest, RequestView
from tests.factories import held_cancel
from tests.gateway.fakes import START, MovableClock

ALICE = Approver("alice", groups=("traders",))
BOB = Approver("bob", groups=("traders",))
CAROL = Approver("carol", groups=("ops",))
APPROVERS = ApproverDirectory([ALICE, BOB, CAROL])

CANCEL_1001 = {"orderId": 1001, "confirm": True}


def new_request(
    *,
    arguments: dict[str, Any] | None = None,
    timeout_seconds: float = 900.0,
    approvers: tuple[str, ...] = ("group:traders",),
    quorum: int = 1,
    reject_reason_required: bool = False,
) -> NewRequest:
    return held_cancel(
        arguments=CANCEL_1001 if arguments is None else arguments,
        timeout_seconds=timeout_seconds,
        approvers=approvers,
        quorum=quorum,
        reject_reason_required=reject_reason_required,
        session_id="session-1",
    )


@dataclass
class Env:
    service: ApprovalService
    clock: MovableClock

    async def kinds(self, request_id: str) -> list[str]:
        return [e.kind for e in await self.service.history.events(request_id=request_id)]

    async def event_count(self) -> int:
        return len(await self.service.history.events(limit=100_000))


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    db = Database(database_url)
    await db.create_schema()
    clock = MovableClock()
    try:
        yield Env(ApprovalService(db, APPROVERS, clock=clock), clock)
    finally:
        await db.dispose()


def sha256_of(arguments: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(arguments).encode()).hexdigest()


# ---- create


async def test_a_new_request_is_pending_with_canonical_arguments_their_hash_and_an_expiry(env: Env) -> None:
    request = await env.service.create(new_request(arguments={"orderId": 1001, "confirm": True}, timeout_seconds=120))

    assert request.id.startswith("apr_") and len(request.id) > 20
    assert request.status == Status.PENDING
    assert request.arguments == {"confirm": True, "orderId": 1001}
    assert request.arguments_json == '{"confirm":true,"orderId":1001}'
    assert request.arguments_sha256 == sha256_of({"orderId": 1001, "confirm": True})
    assert request.created_at == START
    assert request.expires_at == START + timedelta(seconds=120)
    assert request.agent_waiting
    assert await env.service.get(request.id) == request
    assert await env.kinds(request.id) == ["request.created"]
    # The same call while this request is open is refused (the one open request per call); another call is new.
    with pytest.raises(AlreadyOpen):
        await env.service.create(new_request(arguments={"confirm": True, "orderId": 1001}))
    assert (await env.service.create(new_request(arguments={"orderId": 1002, "confirm": True}))).id != request.id


# ---- approve and quorum


async def test_one_approval_from_an_allowed_approver_approves_a_quorum_one_request(env: Env) -> None:
    request = await env.service.create(new_request())
    env.clock.advance(30)

    outcome = await env.service.approve(request.id, ALICE, "api", "looks right")

    assert outcome.decided
    assert (outcome.approvals, outcome.needed) == (1, 1)
    approved = outcome.request
    assert approved.status == Status.APPROVED
    assert approved.decided_by == "alice"
    assert approved.decided_via == "api"
    assert approved.decision_reason == "looks right"
    assert approved.status_changed_at == START + timedelta(seconds=30)
    assert await env.kinds(request.id) == ["request.created", "request.approved"]


async def test_with_quorum_two_the_first_approval_leaves_the_request_pending_at_one_of_two(env: Env) -> None:
    request = await env.service.create(new_request(quorum=2))

    outcome = await env.service.approve(request.id, ALICE, "web")

    assert not outcome.decided
    assert outcome.request.status == Status.PENDING
    assert (outcome.approvals, outcome.needed) == (1, 2)
    assert "1 of 2" in outcome.message
    assert await env.kinds(request.id) == ["request.created", "request.approval"]


async def test_the_same_approver_approving_twice_does_not_count_twice_towards_the_quorum(env: Env) -> None:
    request = await env.service.create(new_request(quorum=2))
    await env.service.approve(request.id, ALICE, "web")

    again = await env.service.approve(request.id, ALICE, "slack")

    assert not again.decided
    assert again.request.status == Status.PENDING
    assert (again.approvals, again.needed) == (1, 2)
    assert "alice has already approved" in again.message
    assert [d.approver for d in await env.service.decisions(request.id)] == ["alice"]
    assert await env.kinds(request.id) == ["request.created", "request.approval"]


async def test_a_second_distinct_approver_meets_the_quorum_and_approves_the_request(env: Env) -> None:
    request = await env.service.create(new_request(quorum=2))
    await env.service.approve(request.id, ALICE, "web")
    env.clock.advance(5)

    outcome = await env.service.approve(request.id, BOB, "slack")

    assert outcome.decided
    assert (outcome.approvals, outcome.needed) == (2, 2)
    assert outcome.request.status == Status.APPROVED
    assert outcome.request.decided_by == "alice, bob"
    assert [(d.approver, d.channel, d.verdict) for d in await env.service.decisions(request.id)] == [
        ("alice", "web", "approve"),
        ("bob", "slack", "approve"),
    ]
    assert await env.kinds(request.id) == ["request.created", "request.approval", "request.approved"]


# ---- reject


async def test_a_rejection_records_who_rejected_and_why(env: Env) -> None:
    request = await env.service.create(new_request())

    outcome = await env.service.reject(request.id, BOB, "slack", "  that order protects a position  ")

    assert outcome.decided
    rejected = outcome.request
    assert rejected.status == Status.REJECTED
    assert rejected.decided_by == "bob"
    assert rejected.decided_via == "slack"
    assert rejected.decision_reason == "that order protects a position"
    assert await env.kinds(request.id) == ["request.created", "request.rejected"]


async def test_one_rejection_decides_a_quorum_two_request_even_after_an_approval(env: Env) -> None:
    request = await env.service.create(new_request(quorum=2))
    await env.service.approve(request.id, ALICE, "web")

    outcome = await env.service.reject(request.id, BOB, "web", "no")

    assert outcome.request.status == Status.REJECTED
    assert outcome.request.decided_by == "bob"


async def test_a_rejection_without_a_reason_is_refused_only_when_the_policy_requires_one(env: Env) -> None:
    request = await env.service.create(new_request(reject_reason_required=True))

    for missing in (None, "", "   "):
        with pytest.raises(InvalidDecision, match="requires a reason"):
            await env.service.reject(request.id, ALICE, "web", missing)

    assert (await env.service.get(request.id)).status == Status.PENDING
    assert await env.service.decisions(request.id) == []
    assert await env.kinds(request.id) == ["request.created"]
    outcome = await env.service.reject(request.id, ALICE, "web", "wrong order")
    assert outcome.request.status == Status.REJECTED

    optional = await env.service.create(new_request(reject_reason_required=False))
    outcome = await env.service.reject(optional.id, ALICE, "web", None)
    assert outcome.request.status == Status.REJECTED
    assert outcome.request.decision_reason is None


# ---- expire


async def test_expire_does_nothing_while_time_is_left(env: Env) -> None:
    request = await env.service.create(new_request(timeout_seconds=60))

    for seconds_before_expiry in (60, 30, 2):
        env.clock.now = request.expires_at - timedelta(seconds=seconds_before_expiry)
        assert await env.service.expire(request.id) is False

    assert (await env.service.get(request.id)).status == Status.PENDING
    assert await env.kinds(request.id) == ["request.created"]


async def test_expire_after_the_expiry_time_expires_the_request_once(env: Env) -> None:
    request = await env.service.create(new_request(timeout_seconds=60))
    env.clock.now = request.expires_at

    assert await env.service.expire(request.id) is True
    env.clock.advance(10)
    assert await env.service.expire(request.id) is False

    expired = await env.service.get(request.id)
    assert expired.status == Status.EXPIRED
    assert expired.decided_by is None and expired.ended_because == EndReason.TIMED_OUT
    assert expired.status_changed_at == request.expires_at
    events = await env.service.history.events(request_id=request.id)
    assert [e.kind for e in events] == ["request.created", "request.expired"]
    assert events[-1].message == "Nobody decided within 1m; the call was not executed."
    with pytest.raises(AlreadyDecided) as late:
        await env.service.approve(request.id, ALICE, "web")
    assert (late.value.status, late.value.by, late.value.at) == ("expired", None, request.expires_at)
    assert late.value.ended_because == "timed_out"
    assert late.value.summary == "Nobody decided within 1m; the call was not executed."


# ---- cancel


async def test_cancel_withdraws_a_pending_request_once(env: Env) -> None:
    request = await env.service.create(new_request())

    assert await env.service.withdraw(request.id, "the agent disconnected") is True
    assert await env.service.withdraw(request.id, "the agent disconnected") is False

    cancelled = await env.service.get(request.id)
    assert cancelled.status == Status.CANCELLED
    assert cancelled.ended_because == EndReason.WITHDRAWN and cancelled.decision_reason is None
    assert not cancelled.agent_waiting
    assert await env.kinds(request.id) == ["request.created", "request.cancelled"]


async def test_cancel_lapses_an_approval_whose_agent_left_before_execution_began(env: Env) -> None:
    request = await env.service.create(new_request())
    await env.service.approve(request.id, ALICE, "web", "fine")

    assert await env.service.withdraw(request.id, "the agent disconnected") is True

    cancelled = await env.service.get(request.id)
    assert cancelled.status == Status.CANCELLED
    assert cancelled.decided_by == "alice", "who approved stays on record"
    with pytest.raises(AlreadyDecided):
        await env.service.begin_execution(request.id, request.arguments_sha256)
    assert await env.kinds(request.id) == ["request.created", "request.approved", "request.cancelled"]


async def test_cancel_never_undoes_an_execution_that_has_begun(env: Env) -> None:
    request = await env.service.create(new_request())
    await env.service.approve(request.id, ALICE, "web")
    await env.service.begin_execution(request.id, request.arguments_sha256)

    assert await env.service.withdraw(request.id, "the agent disconnected") is False
    assert (await env.service.get(request.id)).status == Status.EXECUTING


# ---- execution


async def test_begin_execution_refuses_arguments_that_differ_from_the_approved_ones(env: Env) -> None:
    request = await env.service.create(new_request(arguments={"orderId": 1001, "confirm": True}))
    await env.service.approve(request.id, ALICE, "web")

    with pytest.raises(ArgumentsChanged):
        await env.service.begin_execution(request.id, sha256_of({"orderId": 1004, "confirm": True}))

    # Never run: the request ends failed, saying it is not what was approved, and the chain says so too.
    ended = await env.service.get(request.id)
    assert (ended.status, ended.ended_because) == (Status.FAILED, EndReason.NOT_AS_APPROVED)
    assert "not those recorded when the request was created" in (ended.error or "")
    assert await env.kinds(request.id) == ["request.created", "request.approved", "request.failed"]


async def test_begin_execution_starts_an_approved_call_once_and_refuses_a_second_start(env: Env) -> None:
    request = await env.service.create(new_request())
    await env.service.approve(request.id, ALICE, "web")

    executing = await env.service.begin_execution(request.id, sha256_of(CANCEL_1001))
    assert executing.status == Status.EXECUTING

    with pytest.raises(AlreadyDecided) as second:
        await env.service.begin_execution(request.id, sha256_of(CANCEL_1001))
    assert second.value.status == "executing"
    assert await env.kinds(request.id) == ["request.created", "request.approved", "request.executing"]


async def test_finish_execution_stores_the_result_of_a_successful_call(env: Env) -> None:
    request = await env.service.create(new_request())
    await env.service.approve(request.id, ALICE, "web")
    await env.service.begin_execution(request.id, request.arguments_sha256)
    result = {"content": [{"type": "text", "text": "cancelled"}], "structuredContent": {"orderId": 1001}}

    executed = await env.service.finish_execution(request.id, ok=True, result=result, error=None, summary="cancelled")

    assert executed.status == Status.EXECUTED
    assert executed.result == result
    assert executed.error is None
    assert await env.kinds(request.id) == [
        "request.created",
        "request.approved",
        "request.executing",
        "request.executed",
    ]


async def test_an_answer_after_the_lease_ran_out_is_refused_and_audited_as_late(env: Env) -> None:
    request = await env.service.create(new_request())
    await env.service.approve(request.id, ALICE, "web")
    await env.service.begin_execution(request.id, request.arguments_sha256, owner="gw-1", lease=30.0)
    env.clock.advance(31)
    assert await env.service.end_lapsed(request.id) is not None

    with pytest.raises(AlreadyDecided) as late:
        await env.service.finish_execution(request.id, ok=True, result={"content": []}, error=None, summary="done")

    assert late.value.status == "outcome_unknown"
    assert (await env.service.get(request.id)).status == Status.OUTCOME_UNKNOWN
    assert (await env.kinds(request.id))[-2:] == ["request.outcome_unknown", "request.answered_late"]
    with pytest.raises(RequestNotFound):
        await env.service.finish_execution("apr_missing", ok=True, result=None, error=None, summary="done")


async def test_finish_execution_records_a_failed_call_with_its_error(env: Env) -> None:
    request = await env.service.create(new_request())
    await env.service.approve(request.id, ALICE, "web")
    await env.service.begin_execution(request.id, request.arguments_sha256)

    failed = await env.service.finish_execution(
        request.id, ok=False, result=None, error="order 1001 is not active", summary="order 1001 is not active"
    )

    assert failed.status == Status.FAILED
    assert failed.error == "order 1001 is not active"
    events = await env.service.history.events(request_id=request.id)
    assert events[-1].kind == "request.failed"
    assert events[-1].detail == {"error": "order 1001 is not active"}


async def test_execution_cannot_begin_before_approval_nor_finish_before_it_began(env: Env) -> None:
    request = await env.service.create(new_request())
    with pytest.raises(AlreadyDecided):
        await env.service.begin_execution(request.id, request.arguments_sha256)
    assert (await env.service.get(request.id)).status == Status.PENDING

    await env.service.approve(request.id, ALICE, "web")
    with pytest.raises(AlreadyDecided):
        await env.service.finish_execution(request.id, ok=True, result={}, error=None, summary="executed")
    assert (await env.service.get(request.id)).status == Status.APPROVED
    assert await env.kinds(request.id) == ["request.created", "request.approved"]


# ---- terminal states


async def _to_executed(env: Env, request: RequestView) -> None:
    await env.service.approve(request.id, ALICE, "web")
    await env.service.begin_execution(request.id, request.arguments_sha256)
    await env.service.finish_execution(request.id, ok=True, result={"content": []}, error=None, summary="done")


async def _to_failed(env: Env, request: RequestView) -> None:
    await env.service.approve(request.id, ALICE, "web")
    await env.service.begin_execution(request.id, request.arguments_sha256)
    await env.service.finish_execution(request.id, ok=False, result=None, error="boom", summary="boom")


async def _to_rejected(env: Env, request: RequestView) -> None:
    await env.service.reject(request.id, ALICE, "web", "no")


async def _to_expired(env: Env, request: RequestView) -> None:
    env.clock.now = request.expires_at
    assert await env.service.expire(request.id)


async def _to_cancelled(env: Env, request: RequestView) -> None:
    assert await env.service.withdraw(request.id, "the agent disconnected")


TO_TERMINAL: dict[Status, Callable[[Env, RequestView], Awaitable[None]]] = {
    Status.EXECUTED: _to_executed,
    Status.FAILED: _to_failed,
    Status.REJECTED: _to_rejected,
    Status.EXPIRED: _to_expired,
    Status.CANCELLED: _to_cancelled,
}


async def test_a_request_in_any_terminal_state_never_changes_again(env: Env) -> None:
    for terminal, reach in TO_TERMINAL.items():
        env.clock.now = START
        request = await env.service.create(new_request(timeout_seconds=60))
        await reach(env, request)
        before = await env.service.get(request.id)
        assert before.status == terminal
        events_before = await env.event_count()
        env.clock.now = request.expires_at + timedelta(hours=1)

        with pytest.raises(AlreadyDecided):
            await env.service.approve(request.id, BOB, "web")
        with pytest.raises(AlreadyDecided):
            await env.service.reject(request.id, BOB, "web", "too late")
        assert await env.service.expire(request.id) is False
        assert await env.service.withdraw(request.id, "the agent disconnected") is False
        with pytest.raises(AlreadyDecided):
            await env.service.begin_execution(request.id, request.arguments_sha256)
        with pytest.raises(AlreadyDecided):
            await env.service.finish_execution(request.id, ok=True, result={}, error=None, summary="again")
        assert await env.service.abandon_start(request.id, "nothing was forwarded") is False
        await env.service.attach(request.id, "alpha", "repeated the call")
        assert await env.service.detach(request.id, "the connection dropped") is None

        assert await env.service.get(request.id) == before, terminal
        assert await env.event_count() == events_before, terminal


# ---- audit


async def test_every_transition_writes_exactly_one_audit_event_and_the_chain_verifies(env: Env) -> None:
    request = await env.service.create(new_request(quorum=2))
    steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("request.approval", lambda: env.service.approve(request.id, ALICE, "web")),
        ("request.approved", lambda: env.service.approve(request.id, BOB, "slack")),
        ("request.executing", lambda: env.service.begin_execution(request.id, request.arguments_sha256)),
        (
            "request.executed",
            lambda: env.service.finish_execution(request.id, ok=True, result={}, error=None, summary="done"),
        ),
    ]
    for kind, step in steps:
        count = await env.event_count()
        env.clock.advance(1)
        await step()
        events = await env.service.history.events(request_id=request.id)
        assert await env.event_count() == count + 1, kind
        assert events[-1].kind == kind
        assert events[-1].at == env.clock.now
        assert events[-1].request_id == request.id
        assert events[-1].agent == "alpha"
        assert events[-1].tool == "ibkr_cancel_order"

    approvals = [e for e in await env.service.history.events(request_id=request.id) if e.actor is not None]
    assert [(e.kind, e.actor, e.channel) for e in approvals] == [
        ("request.approval", "alice", "web"),
        ("request.approved", "bob", "slack"),
    ]
    report = await env.service.history.verify()
    assert report.ok, report.describe()
    assert report.checked == 5


# ---- refusals


async def test_an_approver_outside_the_requests_list_is_refused_and_the_refusal_is_audited(env: Env) -> None:
    request = await env.service.create(new_request(approvers=("group:traders",)))

    with pytest.raises(NotAllowed) as approve_refused:
        await env.service.approve(request.id, CAROL, "web")
    with pytest.raises(NotAllowed):
        await env.service.reject(request.id, CAROL, "slack", "no")

    assert approve_refused.value.approver == "carol"
    assert approve_refused.value.request_id == request.id
    assert (await env.service.get(request.id)).status == Status.PENDING
    assert await env.service.decisions(request.id) == []
    refusals = [e for e in await env.service.history.events(request_id=request.id) if e.kind == "decision.refused"]
    assert [(e.actor, e.channel, e.outcome) for e in refusals] == [
        ("carol", "web", "refused"),
        ("carol", "slack", "refused"),
    ]
    assert "approve" in refusals[0].message and "reject" in refusals[1].message


async def test_an_approver_named_individually_may_decide_and_an_empty_list_admits_every_approver(env: Env) -> None:
    named = await env.service.create(new_request(approvers=("bob",)))
    with pytest.raises(NotAllowed):
        await env.service.approve(named.id, ALICE, "web")
    assert (await env.service.approve(named.id, BOB, "web")).request.status == Status.APPROVED

    anyone = await env.service.create(new_request(approvers=(), arguments={"orderId": 1002, "confirm": True}))
    outcome = await env.service.approve(anyone.id, CAROL, "api")
    assert outcome.request.status == Status.APPROVED
    assert outcome.request.decided_by == "carol"


async def test_a_request_that_does_not_exist_is_reported_as_not_found_by_every_operation(env: Env) -> None:
    missing = "apr_does-not-exist"
    operations: list[Callable[[], Awaitable[Any]]] = [
        lambda: env.service.get(missing),
        lambda: env.service.approve(missing, ALICE, "web"),
        lambda: env.service.reject(missing, ALICE, "web", "no"),
        lambda: env.service.expire(missing),
        lambda: env.service.withdraw(missing, "gone"),
        lambda: env.service.begin_execution(missing, "0" * 64),
        lambda: env.service.finish_execution(missing, ok=True, result={}, error=None, summary="done"),
    ]
    for operation in operations:
        with pytest.raises(RequestNotFound) as raised:
            await operation()
        assert raised.value.request_id == missing
        assert isinstance(raised.value, ApprovalError)
    assert await env.event_count() == 0


async def test_already_decided_says_by_whom_and_when(env: Env) -> None:
    request = await env.service.create(new_request())
    decided_at = env.clock.advance(42)
    await env.service.reject(request.id, ALICE, "web", "no")
    env.clock.advance(60)

    with pytest.raises(AlreadyDecided) as late:
        await env.service.approve(request.id, BOB, "slack")

    assert late.value.request_id == request.id
    assert late.value.status == "rejected"
    assert late.value.by == "alice"
    assert late.value.at == decided_at
    assert str(late.value) == f"request {request.id} is already rejected by alice at 2026-03-02 14:30:42 UTC"
