"""The official TypeScript MCP SDK client against the gateway: held calls and its request timeout.

The client runs under node from `tests/node` (`npm ci --prefix tests/node` installs it; `.ci/run`
and `scripts/test` do). Without node or the package the tests skip and say why.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import anyio

from gateway.demo import DEMO_POLICY
from tests.conftest import skip_unless_present
from tests.harness import AGENT_TOKEN, Harness, running_gateway

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
CLIENT = NODE_DIR / "call_tool.mjs"


def _problem() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        return "the TypeScript SDK is not installed (npm ci --prefix tests/node)"
    return None


async def run_client(h: Harness, **spec: Any) -> dict[str, Any]:
    spec = {"url": f"{h.base_url}/mcp", "token": AGENT_TOKEN, **spec}
    process = await anyio.run_process(["node", str(CLIENT), json.dumps(spec)], check=False)
    assert process.returncode == 0, process.stderr.decode()
    out: dict[str, Any] = json.loads(process.stdout.decode().strip().splitlines()[-1])
    return out


async def test_with_reset_on_progress_a_held_call_outlives_the_request_timeout(tmp_path: Path, sqlite_url: str) -> None:
    skip_unless_present("node", _problem())
    async with running_gateway(tmp_path, sqlite_url) as h:
        outcome: dict[str, Any] = {}

        async def agent() -> None:
            outcome.update(
                await run_client(
                    h,
                    tool="ibkr_cancel_order",
                    arguments={"orderId": 1001, "confirm": True},
                    timeoutMs=1500,
                    resetTimeoutOnProgress=True,
                    listFirst=True,
                )
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(agent)
            [request] = await h.pending()
            # Hold it for more than twice the client's request timeout before deciding.
            await anyio.sleep(3.5)
            response = await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
            assert response.status_code == 200

        assert "error" not in outcome, outcome
        assert outcome["elapsedMs"] > 3000
        assert outcome["result"]["structuredContent"]["orderId"] == 1001
        assert any("Waiting for approval" in message for message in outcome["progress"])
        assert h.book.cancel_calls == 1


async def test_without_reset_on_progress_the_bounded_hold_answers_before_the_timeout(
    tmp_path: Path, sqlite_url: str
) -> None:
    skip_unless_present("node", _problem())
    document = json.loads(json.dumps(DEMO_POLICY))
    document["tools"]["ibkr_cancel_order"]["approval"]["max_hold"] = "1s"
    async with running_gateway(tmp_path, sqlite_url, policy=document) as h:
        outcome = await run_client(
            h,
            tool="ibkr_cancel_order",
            arguments={"orderId": 1001, "confirm": True},
            timeoutMs=3000,
            resetTimeoutOnProgress=False,
            listFirst=True,
        )
        assert "error" not in outcome, outcome
        result = outcome["result"]
        assert result.get("isError") in (None, False)
        assert result["structuredContent"]["status"] == "pending"
        assert result["content"][0]["text"].startswith("[APPROVAL PENDING]")
        approval_id = result["structuredContent"]["approval_id"]
        [request] = await h.pending()
        assert request["id"] == approval_id and request["agent_waiting"] is False

        response = await h.api().post(f"/api/approvals/{approval_id}/approve", json={})
        assert response.status_code == 200
        picked = await run_client(
            h,
            tool="countersign_approval_wait",
            arguments={"approval_id": approval_id, "timeout_seconds": 8},
            timeoutMs=10000,
        )
        assert picked["result"]["structuredContent"]["orderId"] == 1001
        assert h.book.cancel_calls == 1
