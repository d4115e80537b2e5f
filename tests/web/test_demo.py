"""`countersign demo` serves the inbox, and the demo approver signs in with demo / demo."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from gateway.app import Gateway
from gateway.demo import DEMO_AGENT_TOKEN, DEMO_APPROVER, DEMO_PASSWORD, demo_settings
from tests.harness import agent_client, serve_asgi, wait_for
from tests.web.support import browser_client, sign_in


@pytest.mark.slow
async def test_the_demo_serves_the_inbox_to_the_demo_approver(tmp_path: Path) -> None:
    settings = demo_settings(tmp_path / "demo")
    gateway = Gateway(settings)
    async with serve_asgi(gateway.asgi()) as base_url, browser_client(base_url) as web:
        assert await gateway.upstreams.wait_connected(30), gateway.upstreams.status()
        await sign_in(web, DEMO_APPROVER, DEMO_PASSWORD)
        async with agent_client(base_url, DEMO_AGENT_TOKEN) as agent, anyio.create_task_group() as tg:
            tg.start_soon(agent.call_tool, "ibkr_cancel_order", {"orderId": 1001, "confirm": True})
            await wait_for(gateway.service.list_requests, within=15)
            pending = await gateway.service.list_requests()
            inbox = (await web.get("/inbox")).text
            assert f'id="req-{pending[0].id}"' in inbox
            assert "btn-approve" in inbox, "the demo approver may decide the demo's held cancels"
            await gateway.service.withdraw(pending[0].id, "test over")
