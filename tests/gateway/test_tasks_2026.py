"""Held calls as tasks in protocol 2026-07-28 (the tasks extension, SEP-2663), spoken as raw JSON-RPC.

The client declares `io.modelcontextprotocol/tasks` on each request; the gateway answers a held
call with `resultType: "task"` whose id is the approval request's, and `tasks/get` carries the
call's result once it has ended. `@modelcontextprotocol/ext-tasks` is not installed here, so the
client is `tests/gateway/task_client.py`'s, following the extension's specification.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from gateway.demo import DEMO_POLICY
from tests.gateway.task_client import ModernTaskClient, TaskError
from tests.harness import AGENT_TOKEN, OTHER_AGENT_TOKEN, Harness, running_gateway

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

CANCEL = "ibkr_cancel_order"
ORDER = {"orderId": 1001, "confirm": True}


def text(result: dict[str, Any]) -> str:
    return " ".join(b["text"] for b in result["content"] if b.get("type") == "text")


@asynccontextmanager
async def modern_client(
    h: Harness, token: str = AGENT_TOKEN, *, declare: bool = True
) -> AsyncIterator[ModernTaskClient]:
    async with httpx2.AsyncClient(timeout=30.0) as http:
        yield ModernTaskClient(http, h.base_url, token, declare=declare)


async def until_ended(agent: ModernTaskClient, task_id: str) -> dict[str, Any]:
    with anyio.fail_after(15):
        while True:
            task = await agent.get(task_id)
            if task["status"] != "working":
                return task
            await anyio.sleep(0.05)


async def test_a_held_call_is_answered_with_a_task_and_tasks_get_carries_its_result_once_approved(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url) as h, modern_client(h) as agent:
        discovered = await agent.request("server/discover", {})
        assert discovered["capabilities"]["extensions"]["io.modelcontextprotocol/tasks"] == {}
        created = await agent.call(CANCEL, ORDER)
        [request] = await h.pending()
        assert created["resultType"] == "task" and created["taskId"] == request["id"]
        assert created["status"] == "working" and "waiting for approval by group:traders" in created["statusMessage"]
        assert created["ttlMs"] == (15 * 60 + 600 + 600) * 1000 and created["pollIntervalMs"] > 0
        response = await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
        assert response.status_code == 200, response.text

        done = await until_ended(agent, request["id"])
        again = await agent.get(request["id"])
        assert done["status"] == "completed" and done["resultType"] == "complete"
        assert not done["result"]["isError"] and "1001" in text(done["result"])
        assert again["result"] == done["result"]
        assert h.book.cancel_calls == 1, "repeated polls return the stored result and never run the call again"
        for gone in ("tasks/result", "tasks/list"):
            with pytest.raises(TaskError) as missing:
                await agent.request(gone, {"taskId": request["id"]}, request["id"])
            assert missing.value.code == -32601


async def test_a_rejection_completes_the_task_with_the_tagged_result(tmp_path: Path, database_url: str) -> None:
    async with running_gateway(tmp_path, database_url) as h, modern_client(h) as agent:
        task_id = (await agent.call(CANCEL, ORDER))["taskId"]
        response = await h.api().post(f"/api/approvals/{task_id}/reject", json={"reason": "market is closed"})
        assert response.status_code == 200, response.text
        done = await until_ended(agent, task_id)
        assert done["status"] == "completed" and done["result"]["isError"]
        assert text(done["result"]).startswith("[APPROVAL REJECTED]") and "market is closed" in text(done["result"])
        assert h.book.cancel_calls == 0


async def test_tasks_cancel_withdraws_and_tasks_update_is_acknowledged(tmp_path: Path, database_url: str) -> None:
    async with running_gateway(tmp_path, database_url) as h, modern_client(h) as agent:
        task_id = (await agent.call(CANCEL, ORDER))["taskId"]
        assert (await agent.update(task_id))["resultType"] == "complete"
        assert (await agent.cancel(task_id))["resultType"] == "complete"
        assert (await agent.get(task_id))["status"] == "cancelled"
        request = (await h.api().get(f"/api/approvals/{task_id}")).json()
        assert request["status"] == "cancelled" and request["ended_because"] == "withdrawn"
        assert h.book.cancel_calls == 0


async def test_another_agents_task_is_not_found_and_an_undeclared_client_is_refused(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url) as h, modern_client(h) as agent:
        task_id = (await agent.call(CANCEL, ORDER))["taskId"]
        async with modern_client(h, OTHER_AGENT_TOKEN) as other:
            for attempt in (other.get, other.cancel, other.update):
                with pytest.raises(TaskError) as refused:
                    await attempt(task_id)
                assert refused.value.code == -32602 and "you have no task" in refused.value.message
        async with modern_client(h, declare=False) as undeclared:
            with pytest.raises(TaskError) as missing:
                await undeclared.get(task_id)
            assert missing.value.code == -32021
        assert (await agent.get(task_id))["status"] == "working"


async def test_a_call_the_policy_answers_at_once_gets_its_plain_result(tmp_path: Path, database_url: str) -> None:
    document = json.loads(json.dumps(DEMO_POLICY))
    document["tools"][CANCEL]["deny_if"] = [
        {"conditions": [{"path": "args.orderId", "op": "eq", "value": 1002}], "on_deny": "not that one"}
    ]
    async with running_gateway(tmp_path, database_url, policy=document) as h, modern_client(h) as agent:
        result = await agent.call(CANCEL, {"orderId": 1002, "confirm": True})
        assert result["resultType"] == "complete" and "taskId" not in result
        assert result["isError"] and text(result).startswith("[POLICY DENIED]")
