"""Races: approve vs reject vs timeout vs cancel from many tasks, two replicas, and through the gateway.

Whoever wins the compare-and-set decides; every other contender hears "already decided" (or False),
and an approved call is forwarded upstream at most once.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types

from approvals.approvers import Approver, ApproverDirectory
from approvals.db import Database
from approvals.errors import AlreadyDecided
from approvals.service import ApprovalService
from approvals.states import Status
from approvals.views import NewRequest
from gateway.demo import DEMO_POLICY
from tests.factories import held_cancel
from tests.harness import ALICE_TOKEN, running_gateway, wait_for

START = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
APPROVERS = [Approver(f"trader-{n:02d}", groups=("traders",)) for n in range(1, 11)]
DIRECTORY = ApproverDirectory(APPROVERS)

# What each contender's success leaves behind in the audit log.
WINNER_EVENT = {
    "approve": "request.approved",
    "reject": "request.rejected",
    "expire": "request.expired",
    "cancel": "request.cancelled",
}


def new_request(*, quorum: int = 1, timeout_seconds: float = 60.0) -> NewRequest:
    return held_cancel(timeout_seconds=timeout_seconds, quorum=quorum)


@asynccontextmanager
async def replicas(url: str, count: int, clock: Callable[[], datetime]) -> AsyncIterator[list[ApprovalService]]:
    """`count` independent services, each with its own Database (engine, pool, locks) on the same URL."""
    async with AsyncExitStack() as stack:
        services = []
        for _ in range(count):
            db = Database(url)
            stack.push_async_callback(db.dispose)
            services.append(ApprovalService(db, DIRECTORY, clock=clock))
        await services[0].db.create_schema()
        yield services


Contender = tuple[str, Callable[[], Awaitable[bool]]]


def contenders(services: Sequence[ApprovalService], request_id: str) -> list[Contender]:
    """Five of each kind, spread over the services, in a shuffled order."""
    entries: list[Contender] = []
    for n in range(5):
        service = services[n % len(services)]

        async def approve(service: ApprovalService = service, n: int = n) -> bool:
            outcome = await service.approve(request_id, APPROVERS[n], "api")
            return outcome.decided

        async def reject(service: ApprovalService = service, n: int = n) -> bool:
            outcome = await service.reject(request_id, APPROVERS[5 + n], "api", "no")
            return outcome.decided

        async def expire(service: ApprovalService = service) -> bool:
            return await service.expire(request_id)

        async def cancel(service: ApprovalService = service) -> bool:
            return await service.withdraw(request_id, "the agent disconnected")

        entries += [("approve", approve), ("reject", reject), ("expire", expire), ("cancel", cancel)]
    random.shuffle(entries)
    return entries


async def race(entries: list[Contender]) -> tuple[list[str], Counter[str]]:
    """Start every contender at once. Returns the kinds that won, and how the others lost."""
    winners: list[str] = []
    losses: Counter[str] = Counter()
    start = anyio.Event()

    async def run(kind: str, attempt: Callable[[], Awaitable[bool]]) -> None:
        await start.wait()
        # A few milliseconds of jitter, so the two-step approve and reject sometimes get in first too.
        await anyio.sleep(random.uniform(0, 0.02))
        try:
            won = await attempt()
        except AlreadyDecided:
            losses["AlreadyDecided"] += 1
            return
        if won:
            winners.append(kind)
        else:
            losses["False"] += 1

    async with anyio.create_task_group() as tg:
        for kind, attempt in entries:
            tg.start_soon(run, kind, attempt)
        start.set()
    return winners, losses


async def assert_exactly_one_decision(service: ApprovalService, request_id: str, winners: list[str]) -> None:
    transitions = [e.kind for e in await service.history.events(request_id=request_id)][1:]
    final = await service.get(request_id)
    if transitions == ["request.approved", "request.cancelled"]:
        # An approval lapses when its agent leaves before execution begins: the one later
        # transition the state machine allows after a decision. It is not a second decision.
        assert sorted(winners) == ["approve", "cancel"]
        assert final.status == Status.CANCELLED
        return
    assert len(winners) == 1, f"exactly one contender may win, not {winners}"
    assert transitions == [WINNER_EVENT[winners[0]]]
    assert final.status.value == WINNER_EVENT[winners[0]].removeprefix("request.")


ROUNDS = 4


async def test_approve_reject_expire_and_cancel_racing_from_many_tasks_leave_exactly_one_winner(
    database_url: str,
) -> None:
    clock = {"now": START}
    async with replicas(database_url, 1, lambda: clock["now"]) as [service]:
        for _ in range(ROUNDS):
            clock["now"] = START
            request = await service.create(new_request())
            # Past the expiry, so the timeout is a real contender.
            clock["now"] = request.expires_at
            entries = contenders([service], request.id)

            winners, losses = await race(entries)

            await assert_exactly_one_decision(service, request.id, winners)
            assert sum(losses.values()) == len(entries) - len(winners)
        report = await service.history.verify()
        assert report.ok, report.describe()


async def test_two_replicas_on_one_database_racing_every_decision_leave_exactly_one_winner(database_url: str) -> None:
    clock = {"now": START}
    async with replicas(database_url, 2, lambda: clock["now"]) as services:
        for _ in range(ROUNDS):
            clock["now"] = START
            request = await services[0].create(new_request())
            clock["now"] = request.expires_at

            winners, _ = await race(contenders(services, request.id))

            await assert_exactly_one_decision(services[1], request.id, winners)
        report = await services[1].history.verify()
        assert report.ok, report.describe()


async def test_many_approvers_racing_to_meet_a_quorum_of_two_approve_the_request_exactly_once(
    database_url: str,
) -> None:
    async with replicas(database_url, 2, lambda: START) as services:
        request = await services[0].create(new_request(quorum=2))
        outcomes: list[tuple[str, bool]] = []
        late: list[AlreadyDecided] = []

        async def approve(service: ApprovalService, approver: Approver) -> None:
            try:
                outcome = await service.approve(request.id, approver, "api")
            except AlreadyDecided as exc:
                late.append(exc)
            else:
                outcomes.append((approver.name, outcome.decided))

        async with anyio.create_task_group() as tg:
            for n, approver in enumerate(APPROVERS):
                tg.start_soon(approve, services[n % 2], approver)

        approved = await services[0].get(request.id)
        assert approved.status == Status.APPROVED
        first, second = (approved.decided_by or "").split(", ")
        assert [name for name, decided in outcomes if not decided] == [first]
        assert [name for name, decided in outcomes if decided] == [second]
        assert len(late) == len(APPROVERS) - 2
        assert all(exc.status == "approved" for exc in late)
        assert len(await services[0].decisions(request.id)) == 2
        kinds = [e.kind for e in await services[0].history.events(request_id=request.id)]
        assert kinds == ["request.created", "request.approval", "request.approved"]


async def test_an_approved_call_starts_executing_exactly_once_when_many_replicas_try(database_url: str) -> None:
    async with replicas(database_url, 2, lambda: START) as services:
        request = await services[0].create(new_request())
        await services[0].approve(request.id, APPROVERS[0], "api")
        started: list[int] = []
        refused: list[AlreadyDecided] = []

        async def begin(n: int) -> None:
            try:
                await services[n % 2].begin_execution(request.id, request.arguments_sha256)
            except AlreadyDecided as exc:
                refused.append(exc)
            else:
                started.append(n)

        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(begin, n)

        assert len(started) == 1
        assert len(refused) == 9
        kinds = [e.kind for e in await services[1].history.events(request_id=request.id)]
        assert kinds.count("request.executing") == 1


# ---- through the gateway


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def many_approvers(count: int) -> list[dict[str, Any]]:
    return [
        {"name": f"trader-{n:02d}", "groups": ["traders"], "api_token": f"trader-{n:02d}-api-token"}
        for n in range(1, count + 1)
    ]


# alice stays configured (outside the traders) because the harness reads the queue with her token.
OBSERVER = {"name": "alice", "groups": ["ops"], "api_token": ALICE_TOKEN}


def policy_with_timeout(timeout: str) -> dict[str, Any]:
    tools = dict(DEMO_POLICY["tools"])
    tools["ibkr_cancel_order"] = {
        **tools["ibkr_cancel_order"],
        "approval": {**tools["ibkr_cancel_order"]["approval"], "timeout": timeout},
    }
    return {**DEMO_POLICY, "tools": tools}


def forwarded_cancels(calls: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [arguments for name, arguments in calls if name == "ibkr_cancel_order"]


async def test_ten_approvals_and_ten_rejections_posted_at_once_decide_a_held_cancel_once(
    tmp_path: Path, database_url: str
) -> None:
    approvers = many_approvers(20)
    async with (
        running_gateway(tmp_path, database_url, config={"approvers": [OBSERVER, *approvers]}) as h,
        h.agent() as agent,
    ):
        outcome: dict[str, types.CallToolResult] = {}

        async def call() -> None:
            outcome["result"] = await agent.call_tool("ibkr_cancel_order", {"orderId": 1001, "confirm": True})

        responses: list[tuple[str, str, int, dict[str, Any]]] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await h.pending()
            clients = [(a["name"], h.api(a["api_token"])) for a in approvers]
            start = anyio.Event()

            async def post(verdict: str, name: str, api: Any) -> None:
                await start.wait()
                response = await api.post(f"/api/approvals/{request['id']}/{verdict}", json={"reason": "race"})
                responses.append((verdict, name, response.status_code, response.json()))

            async with anyio.create_task_group() as posts:
                for n, (name, api) in enumerate(clients):
                    posts.start_soon(post, "approve" if n % 2 == 0 else "reject", name, api)
                start.set()

        decided = [r for r in responses if r[2] == 200]
        assert len(decided) == 1, [(v, n, c) for v, n, c, _ in responses]
        verdict, winner, _, body = decided[0]
        assert body["decided"] is True
        losers = [r for r in responses if r[2] != 200]
        assert len(losers) == 19
        assert all(code == 409 and b["error"] == "already_decided" for _, _, code, b in losers)
        assert {b["decided_by"] for _, _, _, b in losers} == {winner}

        result = outcome["result"]
        cancels = forwarded_cancels(h.book.calls)
        final = (await h.api().get(f"/api/approvals/{request['id']}")).json()
        if verdict == "approve":
            assert not result.is_error, text(result)
            assert cancels == [{"orderId": 1001, "confirm": True}]
            assert h.book.cancel_calls == 1
            assert final["status"] == "executed"
        else:
            assert result.is_error
            assert text(result) == f"[APPROVAL REJECTED] Rejected by {winner}: race. The call was not executed."
            assert cancels == []
            assert h.book.cancel_calls == 0
            assert final["status"] == "rejected"
        assert final["decided_by"] == winner
        assert [d["approver"] for d in final["decisions"]] == [winner]


async def test_an_approval_posted_at_the_moment_of_expiry_either_executes_once_or_not_at_all(
    tmp_path: Path, database_url: str
) -> None:
    async with (
        running_gateway(tmp_path, database_url, policy=policy_with_timeout("1s")) as h,
        h.agent() as agent,
    ):
        outcome: dict[str, types.CallToolResult] = {}
        approval: dict[str, Any] = {}

        async def call() -> None:
            outcome["result"] = await agent.call_tool("ibkr_cancel_order", {"orderId": 1001, "confirm": True})

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await h.pending()
            expires_at = datetime.fromisoformat(request["expires_at"])
            # Not a sleep-to-wait: the race is with the clock, so the approval must land on the expiry.
            await anyio.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()))
            response = await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
            approval.update(code=response.status_code, body=response.json())

        result = outcome["result"]
        cancels = forwarded_cancels(h.book.calls)
        final = (await h.api().get(f"/api/approvals/{request['id']}")).json()
        if approval["code"] == 200:
            assert approval["body"]["decided"] is True
            assert not result.is_error, text(result)
            assert cancels == [{"orderId": 1001, "confirm": True}]
            assert final["status"] == "executed"
        else:
            assert approval["code"] == 409
            assert approval["body"]["status"] == "expired"
            assert approval["body"]["ended_because"] == "timed_out"
            assert text(result) == "[APPROVAL EXPIRED] Nobody decided within 1s; the call was not executed."
            assert cancels == []
            assert final["status"] == "expired"
        kinds = [e["kind"] for e in final["events"]]
        assert kinds.count("request.approved") + kinds.count("request.expired") == 1
        # The timeout job, the waiting call and the sweep must not leave anything armed behind.
        await wait_for(lambda: h.gateway.timeouts.armed() == 0, within=5)
