"""Held calls under the timeouts clients ship with: keep-alive bytes, the default hold bound, and what
the audit log says when a client gives up or its connection closes. Real MCP clients, real gateway."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from gateway.config import DEFAULT_MAX_HOLD, ServerSettings
from gateway.demo import DEMO_POLICY
from gateway.held import HeldCalls
from gateway.ratelimit import RateLimiter
from tests.conftest import skip_unless_present
from tests.gateway.test_lifecycle import RawLegacySession
from tests.gateway.test_typescript_client import _problem as node_problem
from tests.gateway.test_typescript_client import run_client
from tests.harness import AGENT_TOKEN, Harness, running_gateway, wait_for

CANCEL = {"orderId": 1001, "confirm": True}
WAIT = "countersign_approval_wait"


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


async def approve(h: Harness, request_id: str) -> None:
    response = await h.api().post(f"/api/approvals/{request_id}/approve", json={})
    assert response.status_code == 200, response.text


async def events_of(h: Harness, request_id: str) -> list[dict[str, Any]]:
    body = (await h.api().get(f"/api/approvals/{request_id}")).json()
    return list(body["events"])


async def detached_because(h: Harness, request_id: str) -> str:
    """The message of the request's `request.detached` event ("" until there is one)."""
    messages = [e["message"] for e in await events_of(h, request_id) if e["kind"] == "request.detached"]
    return messages[0] if messages else ""


# ---- the shipped default, and how the bounds combine


def test_the_shipped_default_bound_answers_before_a_60_second_client_gives_up() -> None:
    assert DEFAULT_MAX_HOLD == 50.0
    assert ServerSettings().default_max_hold == 50.0
    assert ServerSettings().keepalive_interval < 5.0, "under httpx's default 5 s read timeout"


@pytest.mark.parametrize(
    ("tool", "agent", "default", "stored"),
    [
        (None, None, 50.0, 50.0),  # nothing set: the server's default
        (None, None, math.inf, None),  # default_max_hold = "none"
        (30.0, None, 50.0, 30.0),  # the tool's bound replaces the default
        (120.0, None, 50.0, 120.0),  # ... also when it is longer
        (None, 20.0, 50.0, 20.0),  # the agent's bound replaces the default
        (None, math.inf, 50.0, None),  # agent max_hold = "none": its client waits
        (math.inf, None, 50.0, None),  # tool max_hold = "none"
        (30.0, 20.0, 50.0, 20.0),  # both set: the shorter wins
        (math.inf, 20.0, 50.0, 20.0),  # "none" never wins over a bound
    ],
)
def test_a_request_stores_the_bound_of_its_tool_and_agent_else_the_default(
    tool: float | None, agent: float | None, default: float, stored: float | None
) -> None:
    held = HeldCalls(
        service=None,  # type: ignore[arg-type]  # request_bound consults the settings only
        upstreams=None,  # type: ignore[arg-type]
        limiter=RateLimiter(),
        progress_interval=5.0,
        inbox_url="",
        agent_max_hold={} if agent is None else {"alpha": agent},
        default_max_hold=default,
    )
    assert held.request_bound("alpha", tool) == stored


# ---- keep-alive: a Python client with httpx's default timeout and no progress token


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_python_client_with_httpx_default_timeouts_outlives_a_long_hold(
    tmp_path: Path, sqlite_url: str, mode: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h:
        outcome: dict[str, Any] = {}
        # No timeout given: httpx's defaults, 5 s to read, as a script that just passes headers gets.
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {AGENT_TOKEN}"}) as http:
            assert http.timeout.read == 5.0
            async with Client(streamable_http_client(f"{h.base_url}/mcp", http_client=http), mode=mode) as agent:

                async def call() -> None:
                    # No progress callback, so no progress token: the gateway has no progress to send.
                    outcome["result"] = await agent.call_tool("ibkr_cancel_order", CANCEL)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    [request] = await h.pending()
                    started = anyio.current_time()
                    # The subject of the test: the call stays held past the client's 5 s read timeout.
                    await anyio.sleep(6.5)
                    assert "result" not in outcome, "the call must still be held when it is approved"
                    await approve(h, request["id"])

        result = outcome["result"]
        assert anyio.current_time() - started > 6
        assert not result.is_error, text(result)
        assert result.structured_content is not None and result.structured_content["orderId"] == 1001
        assert h.book.cancel_calls == 1


async def test_a_2025_era_stream_without_a_progress_token_carries_keep_alive_comments(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with (
        running_gateway(tmp_path, sqlite_url, server={"keepalive_interval": "0.3s"}) as h,
        httpx2.AsyncClient(timeout=10) as http,
    ):
        session = RawLegacySession(h.base_url)
        await session.open(http)
        call = session.call("ibkr_cancel_order", CANCEL)
        del call["params"]["_meta"]  # no progress token
        comments = 0
        async with http.stream("POST", session.url, headers=session.headers, json=call) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            with anyio.fail_after(10):
                async for line in response.aiter_lines():
                    # The stream opens with a priming event (an id, empty data); after it, only keep-alives.
                    message = line.startswith("data:") and line[len("data:") :].strip()
                    assert not message, f"nothing but keep-alives while held: {line}"
                    if line == ": keep-alive":
                        comments += 1
                        if comments == 3:
                            break
        assert comments == 3


# ---- the default bound: clients that give up at 60 s


async def test_a_client_that_gives_up_at_60_seconds_gets_an_honest_pending_result_from_the_default_bound(
    tmp_path: Path, sqlite_url: str
) -> None:
    # The shipped default is 50 s (checked above); 2 s here keeps the test fast.
    async with (
        running_gateway(tmp_path, sqlite_url, server={"default_max_hold": "2s"}) as h,
        h.agent() as agent,
    ):
        started = anyio.current_time()
        pending = await agent.call_tool("ibkr_cancel_order", CANCEL, read_timeout_seconds=60)
        assert anyio.current_time() - started < 10
        assert not pending.is_error, text(pending)
        assert text(pending).startswith("[APPROVAL PENDING]")
        assert pending.structured_content is not None
        approval_id = pending.structured_content["approval_id"]
        assert approval_id in text(pending)
        [request] = await h.pending()
        assert (request["id"], request["agent_waiting"]) == (approval_id, False)
        assert any("held as long as the agent can wait" in e["message"] for e in await events_of(h, approval_id))

        await approve(h, approval_id)
        picked = await agent.call_tool(WAIT, {"approval_id": approval_id}, read_timeout_seconds=60)
        assert not picked.is_error, text(picked)
        assert picked.structured_content is not None and picked.structured_content["orderId"] == 1001
        assert h.book.cancel_calls == 1


async def test_an_agent_whose_client_waits_lifts_the_default_bound(tmp_path: Path, sqlite_url: str) -> None:
    agents = [{"name": "alpha", "token": AGENT_TOKEN, "max_hold": "none"}]
    async with (
        running_gateway(tmp_path, sqlite_url, server={"default_max_hold": "0.5s"}, config={"agents": agents}) as h,
        h.agent() as agent,
    ):
        outcome: dict[str, Any] = {}

        async def call() -> None:
            outcome["result"] = await agent.call_tool("ibkr_cancel_order", CANCEL)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await h.pending()
            # Well past the server's default bound, the call is still held: this agent set "none".
            await anyio.sleep(1.5)
            assert "result" not in outcome
            assert (await h.pending())[0]["agent_waiting"] is True
            await approve(h, request["id"])
        assert outcome["result"].structured_content["orderId"] == 1001


# ---- the TypeScript SDK with its default 60 s timeout and no resetTimeoutOnProgress


async def test_the_typescript_sdk_with_its_defaults_gets_the_approved_result_or_an_honest_pending_one(
    tmp_path: Path, sqlite_url: str
) -> None:
    skip_unless_present("node", node_problem())
    document = json.loads(json.dumps(DEMO_POLICY))
    async with running_gateway(tmp_path, sqlite_url, policy=document, server={"default_max_hold": "3s"}) as h:
        # Approved while it is held: the result. (No timeoutMs: the SDK's default 60 s; no reset on progress.)
        approved: dict[str, Any] = {}

        async def agent() -> None:
            approved.update(await run_client(h, tool="ibkr_cancel_order", arguments=CANCEL))

        async with anyio.create_task_group() as tg:
            tg.start_soon(agent)
            [request] = await h.pending()
            await approve(h, request["id"])
        assert "error" not in approved, approved
        assert approved["result"]["structuredContent"]["orderId"] == 1001

        # Nobody decides in time: an honest pending result with the approval id, never a timeout error.
        pending = await run_client(h, tool="ibkr_cancel_order", arguments={"orderId": 1002, "confirm": True})
        assert "error" not in pending, pending
        result = pending["result"]
        assert result.get("isError") in (None, False)
        assert result["content"][0]["text"].startswith("[APPROVAL PENDING]")
        approval_id = result["structuredContent"]["approval_id"]
        assert 2500 <= pending["elapsedMs"] < 60_000
        [request] = await h.pending()
        assert request["id"] == approval_id and request["agent_waiting"] is False
        assert h.book.cancel_calls == 1


# ---- what the audit log says when the agent leaves


async def test_the_audit_log_tells_a_client_timeout_from_a_withdrawal(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, h.agent(mode="legacy") as agent:
        # A 2025-era client whose own timeout fires sends a cancel that says so.
        with pytest.raises(MCPError):
            await agent.call_tool("ibkr_cancel_order", CANCEL, read_timeout_seconds=1)
        [timed_out] = await h.pending()
        await wait_for(lambda: detached_because(h, timed_out["id"]), within=5)
        said = await detached_because(h, timed_out["id"])
        assert said.startswith("the agent's client gave up waiting (")
        assert "timed out" in said.lower() or "timeout" in said.lower()

        # A cancel for another reason withdraws the request, in the client's words.
        scope = anyio.CancelScope()

        async def withdraw() -> None:
            with scope:
                await agent.call_tool("ibkr_cancel_order", {"orderId": 1005, "confirm": True})

        async with anyio.create_task_group() as tg:
            tg.start_soon(withdraw)
            await h.pending(2)
            scope.cancel()
        second = next(r for r in await h.pending_or_all() if r["arguments"]["orderId"] == 1005)

        async def withdrawn() -> bool:
            return any(e["kind"] == "request.cancelled" for e in await events_of(h, second["id"]))

        await wait_for(withdrawn, within=5)
        [ended] = [e for e in await events_of(h, second["id"]) if e["kind"] == "request.cancelled"]
        assert ended["message"].startswith("the agent cancelled the call")
        assert await detached_because(h, second["id"]) == ""


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_audit_log_says_the_connection_closed_when_it_closes_without_a_cancel(
    tmp_path: Path, sqlite_url: str, mode: str
) -> None:
    if mode == "auto":
        # A 2026-era client has no cancel notification: closing the response stream is how it leaves.
        async with running_gateway(tmp_path, sqlite_url) as h:
            async with h.agent(mode="auto") as agent, anyio.create_task_group() as tg:

                async def call() -> None:
                    await agent.call_tool("ibkr_cancel_order", CANCEL)

                tg.start_soon(call)
                [request] = await h.pending()
                tg.cancel_scope.cancel()
            await wait_for(lambda: detached_because(h, request["id"]), within=10)
            assert await detached_because(h, request["id"]) == "the agent's connection closed"
        return

    async with running_gateway(tmp_path, sqlite_url) as h, httpx2.AsyncClient(timeout=10) as http:
        session = RawLegacySession(h.base_url)
        await session.open(http)
        async with (
            httpx2.AsyncClient(timeout=10) as held,
            held.stream(
                "POST", session.url, headers=session.headers, json=session.call("ibkr_cancel_order", CANCEL)
            ) as response,
        ):
            assert response.status_code == 200
            [request] = await h.pending()
            # Closing the client without reading on drops the connection: no cancel is sent.
        await wait_for(lambda: detached_because(h, request["id"]), within=10)
        assert await detached_because(h, request["id"]) == "the agent's connection closed"
