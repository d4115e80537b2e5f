"""Held calls across replicas, through HAProxy: decided on one replica, held on another, and held by one that dies.

The broker's ledger is the proof of "once": it lists every call that reached the upstream,
whichever replica sent it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
import pytest
from anyio.abc import TaskGroup

from tests.replicas.cluster import HELD_TOOL, REPLICAS, Cluster

pytestmark = pytest.mark.slow


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def cancels_of(cluster: Cluster, order_id: int) -> list[dict[str, Any]]:
    return [c for c in cluster.ledger(HELD_TOOL) if c["arguments"].get("orderId") == order_id]


async def pending_for(cluster: Cluster, order_id: int) -> dict[str, Any]:
    with anyio.fail_after(15):
        while True:
            for request in await cluster.pending(0):
                if request["arguments"]["orderId"] == order_id:
                    return request
            await anyio.sleep(0.05)


@asynccontextmanager
async def calling(
    cluster: Cluster, tg: TaskGroup, tool: str, arguments: dict[str, Any], **agent: Any
) -> AsyncIterator[dict[str, Any]]:
    """An agent calls `tool` through the balancer in the background; the box gets "result" or "error"."""
    box: dict[str, Any] = {"done": anyio.Event()}

    async def call() -> None:
        try:
            async with cluster.agent(**agent) as client:
                box["result"] = await client.call_tool(tool, arguments)
        except Exception as exc:  # a dropped connection surfaces here, in whatever form the client gives it
            box["error"] = exc
        finally:
            box["done"].set()

    tg.start_soon(call)
    yield box


async def first(replicas: list[str]) -> str:
    """The replica that answered the call (its response headers come as soon as it holds the call)."""
    with anyio.fail_after(15):
        while True:
            if replicas:
                return replicas[0]
            await anyio.sleep(0.02)


async def approve(cluster: Cluster, request_id: str, via: str) -> None:
    async with cluster.api(via=cluster.replica(via).url) as api:
        response = await api.post(f"/api/approvals/{request_id}/approve", json={})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_cancel_held_on_one_replica_and_approved_through_the_api_on_another_returns_the_result(
    cluster: Cluster, mode: str
) -> None:
    order_id = await cluster.place_order()
    seen: list[str] = []
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            call = {"orderId": order_id, "confirm": True}
            async with calling(cluster, tg, HELD_TOOL, call, mode=mode, calls_seen=seen) as box:
                request = await pending_for(cluster, order_id)
                holder = await first(seen)
                other = next(name for name in REPLICAS if name != holder)
                await approve(cluster, request["id"], via=other)
                await box["done"].wait()

    assert "error" not in box, box.get("error")
    result = box["result"]
    assert not result.is_error, text(result)
    assert result.structured_content["orderId"] == order_id
    assert len(cancels_of(cluster, order_id)) == 1


@pytest.mark.parametrize(
    ("how", "mode"),
    [("repeats the identical call", "legacy"), ("calls countersign_approval_wait", "auto")],
)
async def test_when_the_replica_holding_a_call_is_killed_the_agent_reattaches_through_the_balancer_and_it_runs_once(
    cluster: Cluster, how: str, mode: str
) -> None:
    order_id = await cluster.place_order()
    call = {"orderId": order_id, "confirm": True}
    seen: list[str] = []
    killed: list[str] = []
    try:
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                # A 2025-era agent's call, held on whichever replica the balancer picked.
                async with calling(cluster, tg, HELD_TOOL, call, mode="legacy", calls_seen=seen) as original:
                    request = await pending_for(cluster, order_id)
                    holder = await first(seen)
                    cluster.kill(holder)
                    killed.append(holder)
                    await original["done"].wait()
                assert "result" not in original or original["result"].is_error, "the killed replica answered"

                # The agent comes back through the balancer and lands on a live replica.
                again: list[str] = []
                if how == "repeats the identical call":
                    tool, arguments = HELD_TOOL, call
                else:
                    tool, arguments = "countersign_approval_wait", {"approval_id": request["id"]}
                async with calling(cluster, tg, tool, arguments, mode=mode, calls_seen=again) as second:
                    await attached(cluster, request["id"])
                    follower = await first(again)
                    assert follower != holder
                    approver = next(name for name in REPLICAS if name not in (holder, follower))
                    await approve(cluster, request["id"], via=approver)
                    await second["done"].wait()
    finally:
        for name in killed:  # the next test finds three replicas again
            await anyio.to_thread.run_sync(cluster.restart, name)

    assert "error" not in second, second.get("error")
    result = second["result"]
    assert not result.is_error, text(result)
    assert result.structured_content["orderId"] == order_id
    assert len(cancels_of(cluster, order_id)) == 1
    verified = cluster.audit_verify()
    assert verified.returncode == 0 and verified.stdout.startswith("audit chain intact"), verified.stdout


async def attached(cluster: Cluster, request_id: str) -> None:
    """Wait until the request's audit trail shows an agent waiting for it again."""
    async with cluster.api() as api:
        with anyio.fail_after(20):
            while True:
                events = (await api.get("/api/audit", params={"request_id": request_id})).json()["events"]
                if any(e["kind"] == "request.attached" for e in events):
                    return
                await anyio.sleep(0.05)
