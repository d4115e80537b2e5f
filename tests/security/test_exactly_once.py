"""Exactly once, as an agent sees it: waits that end on time, one request per call, outcomes that repeat.

Findings of the adversarial review (issue 9): `countersign_approval_wait` did not return within its
`timeout_seconds`; five identical calls made at once created five requests; an agent could repeat
a rejected call until somebody approved the new request. Each test drives the gateway through real
MCP clients and the approver API, in front of an upstream that records every execution in a ledger.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types

from approvals.errors import AlreadyOpen
from approvals.states import Status
from approvals.views import NewRequest
from tests.gateway.fakes import MovableClock
from tests.harness import agent_client, wait_for
from tests.ledger import TOOL, decide, held_policy, ledger_gateway, ledger_upstream, text


def structured(result: types.CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, text(result)
    return dict(result.structured_content)


async def requests_of(gateway: Any) -> list[Any]:
    return list(await gateway.service.list_requests(limit=1000))


async def test_the_wait_tool_returns_within_its_timeout_in_every_state(tmp_path: Path, database_url: str) -> None:
    policy = held_policy(max_hold="1s")
    async with (
        ledger_upstream(tmp_path / "ledger.jsonl") as (upstream, upstream_url),
        ledger_gateway(tmp_path, database_url, upstream_url, policy=policy) as (url, gateway),
        agent_client(url) as agent,
    ):

        async def wait(approval_id: str, seconds: float) -> tuple[types.CallToolResult, float]:
            started = anyio.current_time()
            with anyio.fail_after(seconds + 8):
                result = await agent.call_tool(
                    "countersign_approval_wait", {"approval_id": approval_id, "timeout_seconds": seconds}
                )
            return result, anyio.current_time() - started

        held = await agent.call_tool(TOOL, {"op": "wait-1"})
        approval_id = structured(held)["approval_id"]

        # Pending: nobody decides within the wait.
        result, took = await wait(approval_id, 1)
        assert structured(result)["status"] == "pending" and took < 4, (text(result), took)

        # Approved, and this wait starts the execution itself; the upstream takes its time.
        upstream.hold()
        assert (await decide(url, approval_id, "approve")).status_code == 200
        result, took = await wait(approval_id, 2)
        assert structured(result)["status"] == "executing", text(result)
        assert took < 5, f"the wait that started the execution took {took:.1f}s"
        assert upstream.entered.is_set()

        # Executing (started by the wait before): a second wait ends on time too.
        result, took = await wait(approval_id, 1)
        assert structured(result)["status"] == "executing" and took < 4, (text(result), took)

        # The execution went on without anyone waiting: once the upstream answers, its result is kept.
        upstream.release()
        await wait_for(lambda: _status(gateway, approval_id, Status.EXECUTED), within=15)
        result, took = await wait(approval_id, 5)
        assert text(result) == "done wait-1" and took < 3
    assert upstream.executions() == {"wait-1": 1}


async def _status(gateway: Any, request_id: str, status: Status) -> bool:
    return bool((await gateway.service.get(request_id)).status == status)


async def test_five_identical_calls_at_once_make_one_request(tmp_path: Path, database_url: str) -> None:
    policy = held_policy(max_hold="2s")
    async with (
        ledger_upstream(tmp_path / "ledger.jsonl") as (upstream, upstream_url),
        ledger_gateway(tmp_path, database_url, upstream_url, policy=policy) as (url, gateway),
        agent_client(url) as a1,
        agent_client(url) as a2,
        agent_client(url) as a3,
        agent_client(url) as a4,
        agent_client(url) as a5,
    ):
        agents = (a1, a2, a3, a4, a5)
        results = await asyncio.gather(*(agent.call_tool(TOOL, {"op": "same"}) for agent in agents))
        ids = {structured(result)["approval_id"] for result in results}
        assert len(ids) == 1, [text(r) for r in results]
        assert len(await requests_of(gateway)) == 1

        # The database itself refuses a second open request for the call, whoever asks.
        [request] = await requests_of(gateway)
        new = NewRequest(
            upstream="ledger",
            tool=TOOL,
            upstream_tool="act",
            arguments={"op": "same"},
            agent="alpha",
            rule=request.rule,
            reason="again",
            timeout_seconds=60,
        )
        try:
            await gateway.service.create(new)
            raise AssertionError("a second open request for the same call was created")
        except AlreadyOpen as exc:
            assert exc.request_id == request.id

        # Approved once, it runs once, and every agent that waits gets the one result.
        assert (await decide(url, request.id, "approve")).status_code == 200
        results = await asyncio.gather(*(agent.call_tool(TOOL, {"op": "same"}) for agent in agents))
        assert {text(r) for r in results} == {"done same"}
    assert upstream.executions() == {"same": 1}


async def test_a_rejected_call_repeated_within_the_window_is_rejected_again_not_asked_anew(
    tmp_path: Path, database_url: str
) -> None:
    clock = MovableClock(datetime.now(UTC))
    policy = held_policy(max_hold="1s")
    async with (
        ledger_upstream(tmp_path / "ledger.jsonl") as (upstream, upstream_url),
        ledger_gateway(tmp_path, database_url, upstream_url, policy=policy, clock=clock, repeat_window="10m") as (
            url,
            gateway,
        ),
        agent_client(url) as agent,
    ):
        held = await agent.call_tool(TOOL, {"op": "risky"})
        approval_id = structured(held)["approval_id"]
        assert (await decide(url, approval_id, "reject")).status_code == 200

        # Nine minutes later, the identical call: the same rejection, no new request for anyone to approve.
        clock.advance(9 * 60)
        again = await agent.call_tool(TOOL, {"op": "risky"})
        assert again.is_error
        assert text(again).startswith("[APPROVAL REJECTED] Rejected by alice: not this one."), text(again)
        assert f"This is request {approval_id} again" in text(again)
        assert structured(again)["approval_id"] == approval_id
        assert [r.id for r in await requests_of(gateway)] == [approval_id]
        kinds = [e.kind for e in await gateway.service.history.events(request_id=approval_id)]
        assert "call.repeated" in kinds

        # After the window, asking again is a new request that a human decides afresh.
        clock.advance(2 * 60)
        fresh = await agent.call_tool(TOOL, {"op": "risky"})
        assert structured(fresh)["status"] == "pending" and structured(fresh)["approval_id"] != approval_id
    assert upstream.executions() == {}


async def test_an_expired_call_repeated_within_the_window_gets_expired_again(tmp_path: Path, sqlite_url: str) -> None:
    policy = held_policy(timeout="1s", max_hold="none")
    async with (
        ledger_upstream(tmp_path / "ledger.jsonl") as (upstream, upstream_url),
        ledger_gateway(tmp_path, sqlite_url, upstream_url, policy=policy) as (url, gateway),
        agent_client(url) as agent,
    ):
        expired = await agent.call_tool(TOOL, {"op": "late"})
        assert text(expired).startswith("[APPROVAL EXPIRED]"), text(expired)
        again = await agent.call_tool(TOOL, {"op": "late"})
        assert text(again).startswith("[APPROVAL EXPIRED]"), text(again)
        assert structured(again)["approval_id"] == structured(expired)["approval_id"]
        assert len(await requests_of(gateway)) == 1
    assert upstream.executions() == {}


async def test_repeating_a_call_that_is_executing_waits_for_its_one_result(tmp_path: Path, database_url: str) -> None:
    policy = held_policy(max_hold="1s")
    async with (
        ledger_upstream(tmp_path / "ledger.jsonl") as (upstream, upstream_url),
        ledger_gateway(tmp_path, database_url, upstream_url, policy=policy) as (url, gateway),
        agent_client(url) as agent,
    ):
        held = await agent.call_tool(TOOL, {"op": "slow"})
        approval_id = structured(held)["approval_id"]
        upstream.hold()
        await decide(url, approval_id, "approve")
        first = await agent.call_tool(TOOL, {"op": "slow"})  # starts it; the upstream holds it past the hold limit
        assert structured(first)["status"] == "executing", text(first)
        assert "Repeating this exact call joins this same request while it is open" in text(first)
        repeated = await agent.call_tool(TOOL, {"op": "slow"})  # executing: joins it, never a new request
        assert structured(repeated) | {"expires_at": None} == structured(first) | {"expires_at": None}
        assert len(await requests_of(gateway)) == 1
        upstream.release()
        await wait_for(lambda: _status(gateway, approval_id, Status.EXECUTED), within=15)
        # And once it has run, the identical call gets its result again (within the window), not a second run.
        again = await agent.call_tool(TOOL, {"op": "slow"})
        assert text(again) == "done slow"
        # The result is the upstream's, exactly; `_meta` tells a client that looks that it is a repeat.
        assert (again.meta or {})["io.countersign/repeat"]["approval_id"] == approval_id, again.meta
        assert len(await requests_of(gateway)) == 1
    assert upstream.executions() == {"slow": 1}
