"""TypeScript task clients against the gateway: a held call outlives a 2 s request timeout, in both eras.

2025-11-25: the SDK's `client.experimental.tasks.callToolStream` asks for a task, polls `tasks/get`
with a timeout per request, and fetches `tasks/result` once the task completed. 2026-07-28:
`@modelcontextprotocol/ext-tasks` on `@modelcontextprotocol/client` 2.x declares the tasks
extension and polls `tasks/get` until it carries the result. Either way the approval can come
long after any one request would have timed out. Skips, saying why, without node or the packages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import skip_unless_present
from tests.gateway.test_typescript_client import NODE_DIR, _problem
from tests.harness import AGENT_TOKEN, Harness, running_gateway

CLIENT = NODE_DIR / "call_tool_task.mjs"
EXT_TASKS_CLIENT = NODE_DIR / "call_tool_ext_tasks.mjs"
REQUEST_TIMEOUT_MS = 2000
APPROVAL_AFTER = 5.0
EXTENSION = "io.modelcontextprotocol/tasks"
CANCEL_ORDER = {"tool": "ibkr_cancel_order", "arguments": {"orderId": 1001, "confirm": True}}


async def run_task_client(h: Harness, box: dict[str, Any], script: Path = CLIENT, **spec: Any) -> None:
    spec = {"url": f"{h.base_url}/mcp", "token": AGENT_TOKEN, "timeoutMs": REQUEST_TIMEOUT_MS, **CANCEL_ORDER, **spec}
    process = await anyio.run_process(["node", str(script), json.dumps(spec)], check=False)
    assert process.returncode == 0, process.stderr.decode()
    box.update(json.loads(process.stdout.decode().strip().splitlines()[-1]))


async def decided_after_the_timeout(
    h: Harness, verdict: str, body: dict[str, Any], script: Path = CLIENT
) -> dict[str, Any]:
    """Run the client; decide its request APPROVAL_AFTER seconds after it appeared; return what the client printed."""
    box: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_task_client, h, box, script)
        [request] = await h.pending()
        await anyio.sleep(APPROVAL_AFTER)  # the scenario: decided well after any one request timed out
        response = await h.api().post(f"/api/approvals/{request['id']}/{verdict}", json=body)
        assert response.status_code == 200, response.text
    assert box["taskId"] == request["id"], box
    return box


@pytest.fixture(autouse=True)
def _node() -> None:
    skip_unless_present("node", _problem())


async def test_an_approval_after_five_seconds_reaches_a_client_with_a_two_second_timeout(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h:
        out = await decided_after_the_timeout(h, "approve", {})
        assert out["protocolVersion"] == "2025-11-25"
        assert out["serverTasks"]["requests"]["tools"]["call"] == {}
        assert "ibkr_cancel_order" in out["taskTools"] and "ibkr_get_open_orders" not in out["taskTools"]
        assert "error" not in out, out
        assert out["elapsedMs"] > APPROVAL_AFTER * 1000
        assert out["messages"][0]["type"] == "taskCreated"
        assert "waiting for approval by group:traders" in out["messages"][0]["statusMessage"]
        assert out["messages"][-1]["status"] == "completed"
        assert not out["result"].get("isError")
        assert "1001" in json.dumps(out["result"])
        assert h.book.cancel_calls == 1


async def test_a_rejection_after_five_seconds_reaches_the_client_with_its_text(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h:
        out = await decided_after_the_timeout(h, "reject", {"reason": "market is closed"})
        assert "result" not in out
        assert out["messages"][-1]["status"] == "failed"
        assert out["messages"][-1]["statusMessage"].startswith("[APPROVAL REJECTED]")
        assert "market is closed" in out["messages"][-1]["statusMessage"]
        assert "failed" in out["error"]["message"]
        assert h.book.cancel_calls == 0


async def test_tasks_cancel_from_the_client_withdraws_the_request(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h:
        box: dict[str, Any] = {}
        await run_task_client(h, box, cancelAfterMs=500)
        assert box["cancelled"]["status"] == "cancelled"
        assert box["messages"][-1]["status"] == "cancelled"
        request = (await h.api().get(f"/api/approvals/{box['taskId']}")).json()
        assert request["status"] == "cancelled" and request["ended_because"] == "withdrawn"
        assert h.book.cancel_calls == 0


def _no_ext_tasks() -> None:
    if not (NODE_DIR / "node_modules" / "@modelcontextprotocol" / "ext-tasks").is_dir():
        skip_unless_present("node", "@modelcontextprotocol/ext-tasks is not installed (npm ci --prefix tests/node)")


async def test_2026_an_approval_after_five_seconds_reaches_an_ext_tasks_client_with_a_two_second_timeout(
    tmp_path: Path, sqlite_url: str
) -> None:
    _no_ext_tasks()
    async with running_gateway(tmp_path, sqlite_url) as h:
        out = await decided_after_the_timeout(h, "approve", {}, EXT_TASKS_CLIENT)
        assert "error" not in out, out
        assert out["era"] == "modern" and out["serverCapabilities"]["extensions"] == {EXTENSION: {}}
        assert out["kind"] == "task" and out["status"] == "completed"
        assert out["elapsedMs"] > APPROVAL_AFTER * 1000
        assert out["methods"][0] == "tools/call" and out["methods"].count("tasks/get") >= 2
        assert not out["result"].get("isError") and "1001" in json.dumps(out["result"])
        assert h.book.cancel_calls == 1


async def test_2026_a_rejection_reaches_the_ext_tasks_client_as_the_tagged_result(
    tmp_path: Path, sqlite_url: str
) -> None:
    _no_ext_tasks()
    async with running_gateway(tmp_path, sqlite_url) as h:
        out = await decided_after_the_timeout(h, "reject", {"reason": "market is closed"}, EXT_TASKS_CLIENT)
        assert out["status"] == "completed" and out["result"]["isError"]
        text = " ".join(block["text"] for block in out["result"]["content"])
        assert text.startswith("[APPROVAL REJECTED]") and "market is closed" in text
        assert h.book.cancel_calls == 0


async def test_2026_cancelling_the_ext_tasks_execution_withdraws_the_request(tmp_path: Path, sqlite_url: str) -> None:
    _no_ext_tasks()
    async with running_gateway(tmp_path, sqlite_url) as h:
        box: dict[str, Any] = {}
        await run_task_client(h, box, EXT_TASKS_CLIENT, cancelAfterMs=500)
        assert "tasks/cancel" in box["methods"], box
        request = (await h.api().get(f"/api/approvals/{box['taskId']}")).json()
        assert request["status"] == "cancelled" and request["ended_because"] == "withdrawn"
        assert h.book.cancel_calls == 0
