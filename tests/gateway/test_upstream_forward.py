"""A forwarded call's way back from the upstream, over stdio (both eras) and streamable HTTP.

The gateway writes an allowed call upstream as a request of its own and reads the answer off the
wire; these check what the agent gets for each kind of answer: progress before the result, a
JSON-RPC error, a result that breaks the tool's output schema, no answer within the call timeout
(the upstream is told to stop), and an upstream process that dies during the call.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from gateway.app import Gateway
from gateway.config import parse_settings
from tests.gateway import forward_upstream
from tests.harness import agent_client, base_config, serve_asgi, wait_for, write_policy

REPO = Path(__file__).resolve().parents[2]
ALLOW_ALL = {"version": "1", "default": "allow"}
UPSTREAMS = ["stdio", "stdio-2025", "http"]


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


@asynccontextmanager
async def forwarding(
    tmp_path: Path, kind: str, *, call_timeout: str = "30s", mode: str = "legacy"
) -> AsyncIterator[tuple[Client, Gateway, Callable[[], list[str]]]]:
    """An agent on a gateway whose one upstream ("fwd") is the forward upstream, and what that upstream recorded."""
    record_file = tmp_path / "record.txt"
    heard: list[str] = []

    def records() -> list[str]:
        return record_file.read_text().split() if record_file.exists() else list(heard)

    async with _upstream(kind, record_file, heard.append) as where:
        data = base_config(
            database_url=f"sqlite:///{tmp_path / 'gw.db'}",
            policy_file=write_policy(tmp_path / "policy.json", ALLOW_ALL),
            upstream_url="http://unused",
        )
        data["upstreams"] = [{"name": "fwd", "call_timeout": call_timeout, "connect_timeout": "20s", **where}]
        gateway = Gateway(parse_settings(data, source="<test>", base_dir=str(tmp_path), environ={}))
        async with serve_asgi(gateway.asgi()) as base, agent_client(base, mode=mode) as agent:
            assert await gateway.upstreams.wait_connected(20)
            yield agent, gateway, records


@asynccontextmanager
async def _upstream(kind: str, record_file: Path, record: Callable[[str], None]) -> AsyncIterator[dict[str, Any]]:
    if kind in ("http", "http-closing"):
        app = forward_upstream.build(record).streamable_http_app()
        async with serve_asgi(app if kind == "http" else _closing(app)) as url:
            yield {"url": f"{url}/mcp"}
        return
    command = [sys.executable, "-m", "tests.gateway.forward_upstream", "--record", str(record_file)]
    if kind == "stdio-2025":
        command.append("--legacy")
    yield {"command": command, "cwd": str(REPO)}


@pytest.mark.parametrize("kind", UPSTREAMS)
async def test_the_upstreams_progress_reaches_the_agent_before_its_result(tmp_path: Path, kind: str) -> None:
    messages: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with forwarding(tmp_path, kind) as (agent, _, _):
        result = await agent.call_tool("steps", {}, progress_callback=on_progress)
        assert text(result) == "three steps done"
        await wait_for(lambda: len(messages) >= 3)
        assert messages == ["step 1", "step 2", "step 3"]


@pytest.mark.parametrize("kind", UPSTREAMS)
async def test_an_error_the_upstream_answers_with_is_an_upstream_error(tmp_path: Path, kind: str) -> None:
    async with forwarding(tmp_path, kind, mode="auto") as (agent, gateway, _):
        result = await agent.call_tool("refuse", {})
        assert result.is_error
        assert text(result) == "[UPSTREAM ERROR] upstream 'fwd' failed refuse: the upstream will not do that"
        # An answer, even a refusal, is not a broken connection.
        assert gateway.upstreams.status()[0]["state"] == "ready"
        assert text(await agent.call_tool("count", {})) == "counted"


@pytest.mark.parametrize("kind", UPSTREAMS)
async def test_a_result_that_breaks_the_tools_output_schema_is_not_passed_on(tmp_path: Path, kind: str) -> None:
    async with forwarding(tmp_path, kind) as (agent, _, _):
        good = await agent.call_tool("count", {})
        assert not good.is_error and good.structured_content == {"n": 3}
        bad = await agent.call_tool("miscount", {})
        assert bad.is_error
        assert text(bad).startswith("[UPSTREAM ERROR] upstream 'fwd' returned an invalid result for miscount")
        assert "many" not in str(bad.structured_content)


@pytest.mark.parametrize("kind", UPSTREAMS)
async def test_a_call_past_its_timeout_is_answered_so_and_cancelled_upstream(tmp_path: Path, kind: str) -> None:
    async with forwarding(tmp_path, kind, call_timeout="1s") as (agent, gateway, records):
        with anyio.fail_after(20):
            result = await agent.call_tool("hang", {})
        assert result.is_error
        assert text(result).startswith("[UPSTREAM TIMEOUT] upstream 'fwd' did not answer hang within 1s")
        await wait_for(lambda: records() == ["cancelled"], within=10)
        # The connection itself is fine: the next call goes through.
        assert gateway.upstreams.status()[0]["state"] == "ready"
        assert text(await agent.call_tool("count", {})) == "counted"


@pytest.mark.parametrize("kind", ["stdio", "stdio-2025"])
async def test_an_upstream_that_dies_during_a_call_fails_it_and_is_started_again(tmp_path: Path, kind: str) -> None:
    async with forwarding(tmp_path, kind) as (agent, gateway, _):
        with anyio.fail_after(20):
            result = await agent.call_tool("crash", {})
        assert result.is_error
        assert text(result).startswith("[UPSTREAM ERROR] upstream 'fwd' failed crash")
        await wait_for(lambda: gateway.upstreams.status()[0]["reconnects"] >= 1, within=30)
        await wait_for(lambda: gateway.upstreams.status()[0]["state"] == "ready", within=30)
        assert text(await agent.call_tool("count", {})) == "counted"


async def test_an_http_upstream_that_closes_every_connection_still_answers_every_call(tmp_path: Path) -> None:
    # The calls' connections are kept for the next call only when the upstream keeps them open.
    async with forwarding(tmp_path, "http-closing", mode="auto") as (agent, gateway, _):
        for _ in range(4):
            assert text(await agent.call_tool("count", {})) == "counted"
        assert gateway.upstreams.status()[0]["reconnects"] == 0


def _closing(app: Any) -> Any:
    """`app`, answering every HTTP request with `connection: close`."""

    async def closing(scope: Any, receive: Any, send: Any) -> None:
        async def send_closing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await app(scope, receive, send_closing if scope["type"] == "http" else send)

    return closing
