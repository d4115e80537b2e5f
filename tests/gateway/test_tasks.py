"""Held calls as MCP tasks (2025-11-25): a real MCP client asks for a task, polls it and fetches its result.

The task is the approval request: its id is the request's id, its status says what it waits
for, its result is the call's result exactly once, and only its own agent can see it.
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

from gateway.app import Gateway
from gateway.config import Settings, parse_settings
from gateway.demo import DEMO_POLICY
from gateway.paper_book import PaperBook
from gateway.paper_broker import build_http_app
from tests.gateway.task_client import TaskClient, TaskError
from tests.harness import (
    AGENT_TOKEN,
    OTHER_AGENT_TOKEN,
    Harness,
    base_config,
    running_gateway,
    serve_asgi,
    write_policy,
)

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

CANCEL = "ibkr_cancel_order"
ORDER = {"orderId": 1001, "confirm": True}


def text(result: dict[str, Any]) -> str:
    return " ".join(b["text"] for b in result["content"] if b.get("type") == "text")


@asynccontextmanager
async def tasks_client(h: Harness, token: str = AGENT_TOKEN) -> AsyncIterator[TaskClient]:
    async with httpx2.AsyncClient(timeout=30.0) as http:
        client = TaskClient(http, h.base_url, token)
        await client.open()
        yield client


async def task_events(h: Harness) -> list[dict[str, Any]]:
    body = (await h.api().get("/api/audit", params={"limit": "500"})).json()
    return [e for e in body["events"] if e["kind"] == "call.gateway" and str(e["tool"]).startswith("tasks/")]


async def until_status(agent: TaskClient, task_id: str, status: str) -> dict[str, Any]:
    with anyio.fail_after(15):
        while True:
            task = await agent.get(task_id)
            if task["status"] == status:
                return task
            await anyio.sleep(0.05)


async def test_a_held_call_asked_as_a_task_is_its_approval_request_and_its_result_comes_once(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url) as h, tasks_client(h) as agent:
        tools = {t["name"]: t for t in (await agent.request("tools/list", {}))["tools"]}
        assert tools[CANCEL]["execution"] == {"taskSupport": "optional"}
        assert "execution" not in tools["ibkr_get_open_orders"]

        created = await agent.call(CANCEL, ORDER)
        task = created["task"]
        [request] = await h.pending()
        assert task["taskId"] == request["id"]
        assert task["status"] == "working"
        assert "waiting for approval by group:traders, expires" in task["statusMessage"]
        assert task["pollInterval"] > 0
        assert h.book.cancel_calls == 0

        polled = await agent.get(request["id"])
        assert polled["status"] == "working" and "waiting for approval" in polled["statusMessage"]
        response = await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
        assert response.status_code == 200, response.text

        # The approved call runs when its status is asked for: the agent is there to pick it up.
        done = await until_status(agent, request["id"], "completed")
        assert h.book.cancel_calls == 1
        first = await agent.result(request["id"])
        second = await agent.result(request["id"])
        again = await agent.get(request["id"])
        assert not first.get("isError") and "1001" in text(first)
        assert first == second
        assert first["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": request["id"]}
        assert again["status"] == "completed" and done["createdAt"] == again["createdAt"]
        assert h.book.cancel_calls == 1, "a repeated result or status never runs the call again"
        assert request["id"] in [t["taskId"] for t in await agent.list()]

        methods = [e["tool"] for e in await task_events(h)]
        assert {"tasks/get", "tasks/result", "tasks/list"} <= set(methods)


async def test_tasks_result_blocks_until_the_decision_and_returns_the_rejection(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url) as h, tasks_client(h) as agent:
        task_id = (await agent.call(CANCEL, ORDER))["task"]["taskId"]
        box: dict[str, dict[str, Any]] = {}

        async def fetch() -> None:
            box["result"] = await agent.result(task_id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch)
            await anyio.sleep(0.3)
            assert "result" not in box
            response = await h.api().post(f"/api/approvals/{task_id}/reject", json={"reason": "not today"})
            assert response.status_code == 200, response.text
        assert box["result"]["isError"] and text(box["result"]).startswith("[APPROVAL REJECTED]")
        assert "not today" in text(box["result"])
        failed = await agent.get(task_id)
        assert failed["status"] == "failed" and "[APPROVAL REJECTED]" in failed["statusMessage"]
        assert h.book.cancel_calls == 0


async def test_another_agents_task_is_not_found_for_any_method(tmp_path: Path, database_url: str) -> None:
    async with running_gateway(tmp_path, database_url) as h, tasks_client(h) as agent:
        task_id = (await agent.call(CANCEL, ORDER))["task"]["taskId"]
        async with tasks_client(h, OTHER_AGENT_TOKEN) as other:
            for attempt in (other.get, other.result, other.cancel):
                with pytest.raises(TaskError) as refused:
                    await attempt(task_id)
                assert refused.value.code == -32602
                assert "you have no task" in refused.value.message
            assert await other.list() == []
            with pytest.raises(TaskError):
                await other.get("apr_does_not_exist")
        assert (await agent.get(task_id))["status"] == "working"
        denied = [e for e in await task_events(h) if e["outcome"] == "denied"]
        assert len(denied) == 4 and all(e["agent"] == "bravo" for e in denied)


async def test_tasks_cancel_withdraws_the_pending_request_and_a_second_cancel_is_refused(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url) as h, tasks_client(h) as agent:
        task_id = (await agent.call(CANCEL, ORDER))["task"]["taskId"]
        cancelled = await agent.cancel(task_id)
        assert cancelled["status"] == "cancelled"
        request = (await h.api().get(f"/api/approvals/{task_id}")).json()
        assert request["status"] == "cancelled"
        with pytest.raises(TaskError) as again:
            await agent.cancel(task_id)
        assert "already ended" in again.value.message
        result = await agent.result(task_id)
        assert result["isError"] and text(result).startswith("[APPROVAL CANCELLED]")
        assert h.book.cancel_calls == 0


async def test_a_task_lives_for_the_approval_timeout_pick_up_window_and_repeat_window(
    tmp_path: Path, database_url: str
) -> None:
    document = json.loads(json.dumps(DEMO_POLICY))
    document["tools"][CANCEL]["approval"].update(timeout="1s", pickup_window="1s")
    server = {"repeat_window": 1.0}
    async with running_gateway(tmp_path, database_url, policy=document, server=server) as h, tasks_client(h) as agent:
        task = (await agent.call(CANCEL, ORDER))["task"]
        assert task["ttl"] == 3000
        expired = await until_status(agent, task["taskId"], "failed")
        assert "[APPROVAL EXPIRED]" in expired["statusMessage"]
        with anyio.fail_after(10):
            while True:
                try:
                    await agent.get(task["taskId"])
                except TaskError as gone:
                    assert "you have no task" in gone.message
                    break
                await anyio.sleep(0.1)
        assert await agent.list() == []


async def test_a_call_the_policy_answers_at_once_is_a_finished_task(tmp_path: Path, database_url: str) -> None:
    document = json.loads(json.dumps(DEMO_POLICY))
    document["tools"][CANCEL]["deny_if"] = [
        {"conditions": [{"path": "args.orderId", "op": "eq", "value": 1002}], "on_deny": "not that one"}
    ]
    async with running_gateway(tmp_path, database_url, policy=document) as h, tasks_client(h) as agent:
        task = (await agent.call(CANCEL, {"orderId": 1002, "confirm": True}))["task"]
        assert task["status"] == "failed" and "not that one" in task["statusMessage"]
        result = await agent.result(task["taskId"])
        assert result["isError"] and text(result).startswith("[POLICY DENIED]")
        assert await h.pending(0) == []


@asynccontextmanager
async def gateway_on(settings: Settings, book: PaperBook, policy_file: Path) -> AsyncIterator[Harness]:
    """One gateway process's life: started on `settings`, stopped (its lifespan ended) when the block ends."""
    gateway = Gateway(settings)
    async with serve_asgi(gateway.asgi()) as base_url:
        assert await gateway.upstreams.wait_connected(15)
        harness = Harness(base_url, gateway, book, settings, policy_file)
        try:
            yield harness
        finally:
            await harness.close()


async def test_a_task_pending_across_a_gateway_restart_is_approved_and_its_result_comes_through_the_new_one(
    tmp_path: Path, database_url: str
) -> None:
    book = PaperBook()
    policy_file = write_policy(tmp_path / "policy.json", DEMO_POLICY)
    async with serve_asgi(build_http_app(book)) as broker_url:
        config = base_config(database_url=database_url, policy_file=policy_file, upstream_url=f"{broker_url}/mcp")
        settings = parse_settings(config, source="<test>", base_dir=str(tmp_path), environ={})

        async with gateway_on(settings, book, policy_file) as first, tasks_client(first) as agent:
            task_id = (await agent.call(CANCEL, ORDER))["task"]["taskId"]
            assert (await agent.get(task_id))["status"] == "working"
        # The first gateway is gone; the request, and so the task, is in the database.
        async with gateway_on(settings, book, policy_file) as restarted, tasks_client(restarted) as agent:
            assert (await agent.get(task_id))["status"] == "working"
            response = await restarted.api().post(f"/api/approvals/{task_id}/approve", json={})
            assert response.status_code == 200, response.text
            await until_status(agent, task_id, "completed")
            result = await agent.result(task_id)
            assert not result.get("isError") and "1001" in text(result)
            assert (await agent.result(task_id)) == result
    assert book.cancel_calls == 1


async def test_a_task_made_on_one_gateway_is_polled_and_fetched_on_another_and_runs_once(
    tmp_path: Path, database_url: str
) -> None:
    async with (
        running_gateway(tmp_path, database_url) as h,
        gateway_on(h.settings, h.book, h.policy_file) as twin,
        tasks_client(h) as here,
        tasks_client(twin) as there,
    ):
        task_id = (await here.call(CANCEL, ORDER))["task"]["taskId"]
        assert (await there.get(task_id))["status"] == "working"
        response = await h.api().post(f"/api/approvals/{task_id}/approve", json={})
        assert response.status_code == 200, response.text
        first, second = await there.result(task_id), await here.result(task_id)
        assert not first.get("isError") and "1001" in text(first)
        assert first == second
        assert (await here.get(task_id))["status"] == (await there.get(task_id))["status"] == "completed"
    assert h.book.cancel_calls == 1
