"""Agents whose clients give up before a human decides: bounded holds, re-attach, the approval tools,
result pick-up. Real MCP clients against a real gateway and paper broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import MCPError

from gateway.demo import DEMO_POLICY
from tests.harness import OTHER_AGENT_TOKEN, Harness, running_gateway, wait_for

CANCEL = {"orderId": 1001, "confirm": True}
STATUS = "countersign_approval_status"
WAIT = "countersign_approval_wait"


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def policy(**approval: Any) -> dict[str, Any]:
    document = json.loads(json.dumps(DEMO_POLICY))
    document["tools"]["ibkr_cancel_order"]["approval"].update(approval)
    return document


async def approve(h: Harness, request_id: str) -> None:
    response = await h.api().post(f"/api/approvals/{request_id}/approve", json={})
    assert response.status_code == 200, response.text


async def request_body(h: Harness, request_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await h.api().get(f"/api/approvals/{request_id}")).json()
    return body


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_call_held_past_the_agents_limit_returns_pending_and_the_wait_tool_later_returns_the_result(
    tmp_path: Path, database_url: str, mode: str
) -> None:
    async with (
        running_gateway(tmp_path, database_url, policy=policy(max_hold="1s")) as h,
        h.agent(mode=mode, read_timeout=5) as agent,
    ):
        listed = {t.name: t for t in (await agent.list_tools()).tools}
        assert {STATUS, WAIT} <= set(listed)
        # The SDK client validates structured content against the advertised output schema: the pending
        # result must be allowed by it, so this call would raise if the schema had not been widened.
        pending = await agent.call_tool("ibkr_cancel_order", CANCEL)
        assert not pending.is_error, text(pending)
        assert text(pending).startswith("[APPROVAL PENDING]")
        info = pending.structured_content
        assert info is not None and info["status"] == "pending"
        approval_id = info["approval_id"]
        assert info["expires_at"].startswith("20")
        assert WAIT in text(pending) and approval_id in text(pending)

        request = await request_body(h, approval_id)
        assert request["status"] == "pending" and request["agent_waiting"] is False

        status = await agent.call_tool(STATUS, {"approval_id": approval_id})
        assert status.structured_content is not None and status.structured_content["status"] == "pending"

        await approve(h, approval_id)
        assert (await request_body(h, approval_id))["status"] == "approved"
        assert h.book.cancel_calls == 0, "approved, but the agent is not there: nothing runs yet"

        result = await agent.call_tool(WAIT, {"approval_id": approval_id, "timeout_seconds": 3})
        assert not result.is_error, text(result)
        assert result.structured_content is not None and result.structured_content["orderId"] == 1001
        assert h.book.cancel_calls == 1

        # The stored result is returned to every later status and wait call, without running it again.
        again = await agent.call_tool(WAIT, {"approval_id": approval_id})
        assert again.structured_content == result.structured_content
        final = await agent.call_tool(STATUS, {"approval_id": approval_id})
        assert final.structured_content is not None
        assert final.structured_content["status"] == "executed"
        assert final.structured_content["result"]["structuredContent"]["orderId"] == 1001
        assert h.book.cancel_calls == 1


async def test_repeating_the_same_call_attaches_to_the_pending_request(tmp_path: Path, sqlite_url: str) -> None:
    # The repeat is held up to max_hold again: long enough for the approval below even on a busy machine.
    async with (
        running_gateway(tmp_path, sqlite_url, policy=policy(max_hold="4s")) as h,
        h.agent() as agent,
    ):
        first = await agent.call_tool("ibkr_cancel_order", CANCEL)
        assert first.structured_content is not None
        approval_id = first.structured_content["approval_id"]
        assert (await request_body(h, approval_id))["agent_waiting"] is False

        outcome: dict[str, types.CallToolResult] = {}

        async def repeat() -> None:
            outcome["result"] = await agent.call_tool("ibkr_cancel_order", {"confirm": True, "orderId": 1001})

        async with anyio.create_task_group() as tg:
            tg.start_soon(repeat)

            async def waiting_again() -> bool:
                return bool((await request_body(h, approval_id))["agent_waiting"])

            await wait_for(waiting_again, within=5)
            assert [r["id"] for r in await h.pending()] == [approval_id], "one card, not two"
            await approve(h, approval_id)

        assert not outcome["result"].is_error, text(outcome["result"])
        assert h.book.cancel_calls == 1
        kinds = [e["kind"] for e in (await request_body(h, approval_id))["events"]]
        assert kinds == [
            "call.lookup",
            "request.created",
            "request.detached",
            "request.attached",
            "request.approved",
            "request.executing",
            "request.executed",
        ]


async def test_another_agent_cannot_read_or_wait_on_an_approval(tmp_path: Path, sqlite_url: str) -> None:
    async with (
        running_gateway(tmp_path, sqlite_url, policy=policy(max_hold="1s")) as h,
        h.agent() as alpha,
        h.agent(OTHER_AGENT_TOKEN) as bravo,
    ):
        pending = await alpha.call_tool("ibkr_cancel_order", CANCEL)
        assert pending.structured_content is not None
        approval_id = pending.structured_content["approval_id"]
        for tool in (STATUS, WAIT):
            foreign = await bravo.call_tool(tool, {"approval_id": approval_id})
            assert foreign.is_error
            assert text(foreign) == f"[NOT FOUND] you have no approval request {approval_id!r}"
            unknown = await bravo.call_tool(tool, {"approval_id": "apr_nope"})
            assert text(unknown) == "[NOT FOUND] you have no approval request 'apr_nope'"
        assert (await request_body(h, approval_id))["agent_waiting"] is False


async def test_an_approval_not_picked_up_in_time_expires_and_never_runs(tmp_path: Path, sqlite_url: str) -> None:
    async with (
        running_gateway(tmp_path, sqlite_url, policy=policy(max_hold="1s", pickup_window="1s")) as h,
        h.agent() as agent,
    ):
        pending = await agent.call_tool("ibkr_cancel_order", CANCEL)
        assert pending.structured_content is not None
        approval_id = pending.structured_content["approval_id"]
        await approve(h, approval_id)

        async def expired() -> bool:
            return (await request_body(h, approval_id))["status"] == "expired"

        await wait_for(expired, within=10, interval=0.05)
        late = await agent.call_tool(WAIT, {"approval_id": approval_id})
        assert late.is_error
        assert text(late).startswith(
            "[APPROVAL EXPIRED] Approved by alice, but the agent did not come back for it within 1s"
        )
        assert h.book.cancel_calls == 0
        events = (await request_body(h, approval_id))["events"]
        [lapse] = [e for e in events if e["kind"] == "request.expired"]
        assert "the call was not executed" in lapse["message"]
        assert [e["kind"] for e in events][-1] == "call.gateway", "the agent's late wait is on the request's record"


async def test_a_policy_may_let_an_approved_call_run_with_nobody_waiting(tmp_path: Path, sqlite_url: str) -> None:
    document = policy(max_hold="1s", run_unattended=True)
    async with running_gateway(tmp_path, sqlite_url, policy=document) as h, h.agent() as agent:
        pending = await agent.call_tool("ibkr_cancel_order", CANCEL)
        assert pending.structured_content is not None
        approval_id = pending.structured_content["approval_id"]
        await approve(h, approval_id)

        async def executed() -> bool:
            return (await request_body(h, approval_id))["status"] == "executed"

        await wait_for(executed, within=10, interval=0.05)
        assert h.book.cancel_calls == 1
        result = await agent.call_tool(WAIT, {"approval_id": approval_id})
        assert result.structured_content is not None and result.structured_content["orderId"] == 1001
        assert h.book.cancel_calls == 1


async def test_a_client_timeout_detaches_and_an_explicit_cancel_withdraws(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, h.agent() as agent:
        # No hold limit: the client's own read timeout ends the call, and it says so in its cancel.
        with pytest.raises(MCPError):
            await agent.call_tool("ibkr_cancel_order", CANCEL, read_timeout_seconds=1)
        [request] = await h.pending()

        async def detached() -> bool:
            return (await request_body(h, request["id"]))["agent_waiting"] is False

        await wait_for(detached, within=5)
        assert (await request_body(h, request["id"]))["status"] == "pending"

        scope = anyio.CancelScope()

        async def withdraw() -> None:
            with scope:
                await agent.call_tool("ibkr_cancel_order", {"orderId": 1005, "confirm": True})

        async with anyio.create_task_group() as tg:
            tg.start_soon(withdraw)
            await h.pending(2)
            scope.cancel()
        second = next(r for r in await h.pending_or_all() if r["arguments"]["orderId"] == 1005)

        async def withdrawn() -> bool:
            return (await request_body(h, second["id"]))["status"] == "cancelled"

        await wait_for(withdrawn, within=5)
        gone = await agent.call_tool(WAIT, {"approval_id": second["id"]})
        assert gone.is_error and text(gone).startswith("[APPROVAL CANCELLED]")


async def test_a_policy_may_keep_a_request_pending_when_its_agent_cancels(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=policy(on_cancel="keep")) as h, h.agent() as agent:
        scope = anyio.CancelScope()

        async def call() -> None:
            with scope:
                await agent.call_tool("ibkr_cancel_order", CANCEL)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await h.pending()
            scope.cancel()

        async def detached() -> bool:
            return (await request_body(h, request["id"]))["agent_waiting"] is False

        await wait_for(detached, within=5)
        assert (await request_body(h, request["id"]))["status"] == "pending"
