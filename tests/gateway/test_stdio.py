"""`countersign serve --stdio`: a client spawns the gateway (which spawns the broker); approval comes over HTTP."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from gateway.demo import DEMO_POLICY
from tests.harness import AGENT_TOKEN, ALICE_TOKEN, bound_socket

pytestmark = pytest.mark.slow

# The paper broker, started only once the test opens the gate: the test decides how long "connecting" lasts.
GATED_BROKER = """\
import pathlib, runpy, sys, time
gate = pathlib.Path(sys.argv.pop(1))
deadline = time.monotonic() + 30
while not gate.exists() and time.monotonic() < deadline:
    time.sleep(0.02)
runpy.run_module("gateway.paper_broker", run_name="__main__")
"""


def countersign_command() -> tuple[str, list[str]]:
    """The installed console script beside this interpreter, or the module when it is not installed."""
    script = Path(sys.executable).with_name("countersign")
    return (str(script), []) if script.is_file() else (sys.executable, ["-m", "gateway.cli"])


def write_config(folder: Path, port: int, upstream: list[str]) -> Path:
    (folder / "policy.json").write_text(json.dumps(DEMO_POLICY))
    config = folder / "countersign.toml"
    config.write_text(
        f"""\
[server]
host = "127.0.0.1"
port = {port}
database_url = "sqlite:///countersign.db"
progress_interval = "1s"
poll_interval = 0.2

[policy]
file = "policy.json"

[[upstreams]]
name = "paper"
command = {json.dumps(upstream)}

[[agents]]
name = "alpha"
token = "{AGENT_TOKEN}"

[[approvers]]
name = "alice"
groups = ["traders"]
api_token = "${{ALICE_API_TOKEN}}"
"""
    )
    return config


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


async def test_a_stdio_client_is_held_until_approved_over_the_processs_http_api_which_never_writes_to_stdout(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    with bound_socket() as probe:
        port = probe.getsockname()[1]  # free now; the gateway binds it once the probe is closed
    config = write_config(tmp_path, port, upstream=[sys.executable, "-c", GATED_BROKER, str(gate)])
    command, prefix = countersign_command()
    server = StdioServerParameters(
        command=command,
        args=[*prefix, "serve", "--stdio", "--config", str(config), "--agent", "alpha"],
        env={"ALICE_API_TOKEN": ALICE_TOKEN},
        cwd=tmp_path,
    )
    outcome: dict[str, Any] = {}
    # Anything on the gateway's stdout that is not an MCP message arrives here as a transport error.
    transport_errors: list[Exception] = []

    answered, finished = anyio.Event(), anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):
            transport_errors.append(message)

    async def agent_session() -> None:
        async with Client(server, message_handler=on_message, read_timeout_seconds=60) as agent:
            outcome["protocol"] = agent.protocol_version
            outcome["tools"] = {tool.name for tool in (await agent.list_tools()).tools}
            outcome["result"] = await agent.call_tool("ibkr_cancel_order", {"orderId": 1001, "confirm": True})
            answered.set()
            await finished.wait()  # keep the process up while the test reads the final state over HTTP

    async with (
        httpx2.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ALICE_TOKEN}"}, timeout=10
        ) as api,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(agent_session)

        async def get(path: str, **params: str) -> Any:
            """Poll until the API answers (it starts beside stdio, a moment after the process)."""
            with anyio.fail_after(20):
                while True:
                    try:
                        return (await api.get(path, params=params)).json()
                    except httpx2.TransportError:
                        await anyio.sleep(0.05)

        # The API answers, and access-logs, while the upstream is still connecting.
        health = await get("/healthz")
        assert health["upstreams"] == [{**health["upstreams"][0], "name": "paper", "state": "connecting"}]
        assert health["status"] == "degraded"
        gate.touch()

        with anyio.fail_after(20):
            while True:
                pending = (await get("/api/approvals", status="pending"))["approvals"]
                if pending:
                    break
                await anyio.sleep(0.05)
        [request] = pending
        assert (request["tool"], request["agent"]) == ("ibkr_cancel_order", "alpha")
        assert "result" not in outcome, "the call stays open until a human decides"
        health = await get("/healthz")
        assert (health["status"], health["database"], health["upstreams"][0]["state"]) == ("ok", "ok", "ready")

        response = await api.post(f"/api/approvals/{request['id']}/approve", json={"reason": "fine"})
        assert response.status_code == 200, response.text

        with anyio.fail_after(20):
            await answered.wait()
        final = (await api.get(f"/api/approvals/{request['id']}")).json()
        finished.set()

    assert transport_errors == [], "the gateway wrote something other than MCP messages to stdout"
    assert outcome["protocol"] >= "2026-07-28", "the SDK client negotiates the current era over stdio"
    assert {"ibkr_get_open_orders", "ibkr_cancel_order"} <= outcome["tools"]
    assert "ibkr_global_cancel" not in outcome["tools"], "the policy hides it"
    result = outcome["result"]
    assert not result.is_error, text(result)
    assert result.structured_content is not None
    assert result.structured_content["orderId"] == 1001
    assert result.structured_content["trade"]["orderStatus"]["status"] == "Cancelled"
    assert (final["status"], final["decided_by"]) == ("executed", "alice")
