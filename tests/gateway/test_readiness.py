"""Readiness: `/readyz` keeps a starting gateway out of service, and no agent meets an empty catalog.

`/healthz` is liveness only. `/readyz` answers 503 until the schema is current and every
upstream's first connection attempt has ended; `/mcp` requests that arrive before that wait at
the door; an upstream that failed its first attempt is named, and its tools answer
`[UPSTREAM UNAVAILABLE]`, never `[UNKNOWN TOOL]`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest

from gateway.app import Gateway
from gateway.config import parse_settings
from gateway.demo import DEMO_POLICY
from gateway.paper_book import PaperBook
from gateway.paper_broker import build_http_app
from tests.harness import AGENT_TOKEN, ALICE_TOKEN, agent_client, base_config, serve_asgi, wait_for, write_policy
from tests.processes import serving

# A stdio upstream that serves only once the test opens the gate: the test decides how long "connecting" lasts.
GATED_BROKER = """\
import pathlib, runpy, sys, time
gate = pathlib.Path(sys.argv.pop(1))
deadline = time.monotonic() + 60
while not gate.exists() and time.monotonic() < deadline:
    time.sleep(0.02)
runpy.run_module("gateway.paper_broker", run_name="__main__")
"""
# An upstream whose process exits at once: its first attempt fails.
BROKEN = [sys.executable, "-c", "import sys; sys.exit(3)"]


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


@pytest.mark.slow
async def test_a_slow_stdio_upstream_keeps_the_replica_unready_and_no_agent_sees_its_tools_as_unknown(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    write_policy(tmp_path / "policy.json", DEMO_POLICY)
    config: dict[str, Any] = {
        "server": {"database_url": f"sqlite:///{tmp_path / 'countersign.db'}", "startup_timeout": "60s"},
        "policy": {"file": str(tmp_path / "policy.json")},
        "upstreams": [{"name": "paper", "command": [sys.executable, "-c", GATED_BROKER, str(gate)]}],
        "agents": [{"name": "alpha", "token": AGENT_TOKEN}],
        "approvers": [{"name": "alice", "groups": ["traders"], "api_token": ALICE_TOKEN}],
    }
    results: list[types.CallToolResult] = []
    with serving(tmp_path, "gateway", config) as gateway:
        # Alive at once, not ready: the upstream is still connecting.
        await gateway.wait_until("/healthz")
        async with httpx2.AsyncClient(base_url=gateway.url, timeout=10, trust_env=False) as http:
            starting = await http.get("/readyz")
            assert starting.status_code == 503
            assert starting.json() == {"status": "starting", "database": "ok", "upstreams": {"connecting": 1}}

            async def agent(tool: str, arguments: dict[str, Any]) -> None:
                async with agent_client(gateway.url) as client:
                    results.append(await client.call_tool(tool, arguments))

            async with anyio.create_task_group() as tg:
                # Agents that do not wait for readiness: both the handshake and the calls are held at the door.
                tg.start_soon(agent, "ibkr_get_open_orders", {})
                tg.start_soon(agent, "ibkr_get_account_summary", {})
                with anyio.move_on_after(1.0):
                    await wait_for(lambda: bool(results))
                assert results == [], "no call is answered before the upstream's first connection attempt ends"
                assert (await http.get("/readyz")).status_code == 503
                gate.touch()
                ready = await gateway.wait_until("/readyz")
            assert ready.json() == {"status": "ready", "database": "ok", "upstreams": {"ready": 1}}
    assert len(results) == 2
    for result in results:
        assert not result.is_error, text(result)
    assert "[UNKNOWN TOOL]" not in gateway.log_text()


async def test_an_upstream_that_failed_its_first_attempt_is_named_and_its_tools_are_unavailable_not_unknown(
    tmp_path: Path, sqlite_url: str
) -> None:
    policy = json.loads(json.dumps(DEMO_POLICY))
    # Allowed by name, so what the agent hears is about the upstream, not the policy's default deny.
    policy["tools"].update({"q_get_quote": {}, "no_such_tool": {}})
    policy_file = write_policy(tmp_path / "policy.json", policy)
    async with serve_asgi(build_http_app(PaperBook())) as broker_url:
        data = base_config(database_url=sqlite_url, policy_file=policy_file, upstream_url=f"{broker_url}/mcp")
        data["upstreams"].append({"name": "quotes", "command": BROKEN, "prefix": "q_", "connect_timeout": "5s"})
        data["server"]["startup_timeout"] = "20s"
        settings = parse_settings(data, source="<test>", base_dir=str(tmp_path), environ={})
        gateway = Gateway(settings)
        async with serve_asgi(gateway.asgi()) as url, httpx2.AsyncClient(base_url=url, timeout=10) as http:
            await wait_for(lambda: gateway.readiness.started.is_set(), within=20)
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            # Anyone (a load balancer) learns that one upstream failed; an approver learns which, and why.
            assert ready.json() == {
                "status": "ready",
                "database": "ok",
                "upstreams": {"failed at start": 1, "ready": 1},
            }
            detailed = (await http.get("/readyz", headers={"Authorization": f"Bearer {ALICE_TOKEN}"})).json()
            assert detailed["upstreams"] == {"paper": "ready", "quotes": "failed at start"}
            assert set(detailed["upstream_errors"]) == {"quotes"}
            async with agent_client(url) as agent:
                served = await agent.call_tool("ibkr_get_open_orders", {})
                assert not served.is_error, "the replica serves the upstreams that did connect"
                waiting = await agent.call_tool("q_get_quote", {"symbol": "AAPL"})
                assert text(waiting).startswith("[UPSTREAM UNAVAILABLE] no tool named 'q_get_quote' is known yet")
                assert "'quotes' has not connected since the gateway started" in text(waiting)
                assert "Try again in a few seconds." in text(waiting)
                # Outside the failed upstream's prefix a name is simply unknown.
                unknown = await agent.call_tool("no_such_tool", {})
                assert text(unknown).startswith("[UNKNOWN TOOL]")
            kinds = [e.kind for e in await gateway.service.history.events(limit=50)]
            assert "call.unavailable" in kinds


async def test_an_upstream_still_connecting_after_the_startup_timeout_does_not_keep_agents_waiting(
    tmp_path: Path, sqlite_url: str
) -> None:
    policy_file = write_policy(tmp_path / "policy.json", {"version": "1", "default": "allow"})
    # A process that never answers the MCP handshake: its first attempt lasts its whole connect_timeout.
    silent = [sys.executable, "-c", "import time; time.sleep(120)"]
    async with serve_asgi(build_http_app(PaperBook())) as broker_url:
        data = base_config(database_url=sqlite_url, policy_file=policy_file, upstream_url=f"{broker_url}/mcp")
        data["upstreams"].append({"name": "slow", "command": silent, "prefix": "slow_", "connect_timeout": "60s"})
        data["server"]["startup_timeout"] = "1s"
        settings = parse_settings(data, source="<test>", base_dir=str(tmp_path), environ={})
        gateway = Gateway(settings)
        async with serve_asgi(gateway.asgi()) as url, httpx2.AsyncClient(base_url=url, timeout=10) as http:
            # Start-up settles after the 1 s bound, long before the silent upstream's 60 s attempt ends.
            await wait_for(lambda: gateway.readiness.started.is_set(), within=10)
            slow = gateway.upstreams.get("slow")
            assert slow is not None and not slow.attempted.is_set()
            await wait_for(lambda: gateway.upstreams.get("paper").ready, within=15)  # type: ignore[union-attr]
            async with agent_client(url) as agent:
                served = await agent.call_tool("ibkr_get_open_orders", {})
                waiting = await agent.call_tool("slow_anything", {})
            assert not served.is_error, text(served)
            assert text(waiting).startswith("[UPSTREAM UNAVAILABLE]"), text(waiting)
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["upstreams"] == {"connecting": 1, "ready": 1}
