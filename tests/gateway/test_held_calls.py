"""A held call end to end: real MCP clients over streamable HTTP in both protocol eras, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from tests.harness import BOB_TOKEN, running_gateway, wait_for

ERAS = ["legacy", "auto"]


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


@pytest.mark.parametrize("mode", ERAS)
async def test_an_approved_cancel_returns_the_brokers_result_to_the_waiting_agent(
    tmp_path: Path, database_url: str, mode: str
) -> None:
    async with running_gateway(tmp_path, database_url) as h, h.agent(mode=mode) as agent:
        progress: list[str] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(message or "")

        outcome: dict[str, Any] = {}

        async def call() -> None:
            outcome["result"] = await agent.call_tool(
                "ibkr_cancel_order", {"orderId": 1001, "confirm": True}, progress_callback=on_progress
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await h.pending()
            assert request["tool"] == "ibkr_cancel_order"
            assert request["agent"] == "alpha"
            assert request["arguments"] == {"orderId": 1001, "confirm": True}
            await wait_for(lambda: any("Waiting for approval" in m for m in progress))
            assert "result" not in outcome, "the call must stay open until a human decides"
            assert h.book.cancel_calls == 0
            response = await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
            assert response.status_code == 200, response.text
            assert response.json()["decided"] is True

        result = outcome["result"]
        assert not result.is_error, text(result)
        assert result.structured_content is not None
        assert result.structured_content["orderId"] == 1001
        assert h.book.cancel_calls == 1
        assert any(request["id"] in m and "expires at" in m for m in progress)
        final = (await h.api().get(f"/api/approvals/{request['id']}")).json()
        assert final["status"] == "executed"
        assert final["decided_by"] == "alice"
        assert final["result"]["structuredContent"]["orderId"] == 1001
        kinds = [e["kind"] for e in final["events"]]
        assert kinds == ["call.lookup", "request.created", "request.approved", "request.executing", "request.executed"]


@pytest.mark.parametrize("mode", ERAS)
async def test_a_rejected_cancel_tells_the_agent_who_rejected_it_and_why(
    tmp_path: Path, database_url: str, mode: str
) -> None:
    async with running_gateway(tmp_path, database_url) as h, h.agent(mode=mode) as agent:
        outcome: dict[str, Any] = {}

        async def call() -> None:
            outcome["result"] = await agent.call_tool("ibkr_cancel_order", {"orderId": 1001, "confirm": True})

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await h.pending()
            response = await h.api(BOB_TOKEN).post(
                f"/api/approvals/{request['id']}/reject", json={"reason": "that order protects a position"}
            )
            assert response.status_code == 200, response.text

        result = outcome["result"]
        assert result.is_error
        assert (
            text(result)
            == "[APPROVAL REJECTED] Rejected by bob: that order protects a position. The call was not executed."
        )
        assert h.book.cancel_calls == 0


@pytest.mark.parametrize("mode", ERAS)
async def test_reads_pass_hidden_tools_are_absent_and_the_eleventh_preview_is_rate_limited(
    tmp_path: Path, sqlite_url: str, mode: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, h.agent(mode=mode) as agent:
        names = {t.name for t in (await agent.list_tools()).tools}
        assert "ibkr_global_cancel" not in names
        assert {"ibkr_get_open_orders", "ibkr_cancel_order", "ibkr_preview_order"} <= names

        orders = await agent.call_tool("ibkr_get_open_orders", {})
        assert not orders.is_error
        assert "1001" in text(orders)

        hidden = await agent.call_tool("ibkr_global_cancel", {"confirm": True})
        assert hidden.is_error and text(hidden).startswith("[POLICY DENIED]")
        assert h.book.global_cancel_calls == 0

        preview = {
            "contract": {"symbol": "AAPL", "secType": "STK", "exchange": "SMART", "currency": "USD"},
            "order": {"action": "BUY", "totalQuantity": 10, "orderType": "LMT", "lmtPrice": 150},
        }
        for n in range(10):
            result = await agent.call_tool("ibkr_preview_order", preview)
            assert not result.is_error, f"preview {n + 1}: {text(result)}"
        eleventh = await agent.call_tool("ibkr_preview_order", preview)
        assert eleventh.is_error
        assert text(eleventh).startswith("[RATE LIMITED]")
        assert "10 calls per minute" in text(eleventh)


async def test_a_call_to_an_unlisted_tool_under_default_deny_is_refused_and_audited(
    tmp_path: Path, sqlite_url: str
) -> None:
    policy = {"version": "1", "default": "deny", "tools": {"ibkr_get_open_orders": {}}}
    async with running_gateway(tmp_path, sqlite_url, policy=policy) as h, h.agent() as agent:
        result = await agent.call_tool("ibkr_get_portfolio", {})
        assert result.is_error
        assert text(result).startswith("[POLICY DENIED]")
        events = (await h.api().get("/api/audit")).json()["events"]
        assert events[-1]["kind"] == "call.denied"
        assert events[-1]["agent"] == "alpha"
        assert events[-1]["tool"] == "ibkr_get_portfolio"
