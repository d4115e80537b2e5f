"""After a burst of calls the gateway gives its freed memory back (glibc's malloc_trim), and its listening socket
queues as many connections as `[server] backlog` says."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from gateway.memory_trim import malloc_trim
from gateway.serving import _uvicorn
from tests.harness import running_gateway, wait_for


@pytest.mark.skipif(malloc_trim() is None, reason="this C library has no malloc_trim")
async def test_the_heap_is_trimmed_once_a_burst_of_calls_is_over(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h:
        memory = h.gateway.memory
        assert memory.available
        async with h.agent() as agent:
            for _ in range(3):
                await agent.call_tool("ibkr_get_open_orders", {})
            async with anyio.create_task_group() as tg:
                tg.start_soon(agent.call_tool, "ibkr_cancel_order", {"orderId": 1001, "confirm": True})
                [request] = await h.pending()
                await wait_for(lambda: memory.trims >= 1, within=30)
                assert (await h.api().post(f"/api/approvals/{request['id']}/approve", json={})).status_code == 200
        assert memory.requests >= 1


async def test_trimming_can_be_turned_off_and_the_backlog_is_the_configured_one(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, server={"trim_memory": False, "backlog": 8192}) as h:
        assert not h.gateway.memory.available
        assert _uvicorn(h.gateway.asgi(), h.settings, lifespan="off").config.backlog == 8192
