"""Two gateways on one database: what a decision causes happens whichever gateway made it, and only once.

Each test serves a second `Gateway` on the first one's settings (same database, policy and
upstream), then decides through one and watches the other: quota, reminders, unattended runs and
held agents all follow the change feed, not the process that wrote the change.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from approvals.states import Status
from gateway.app import Gateway
from gateway.demo import DEMO_POLICY
from tests.harness import Harness, held_call, running_gateway, serve_asgi, wait_for
from tests.slack.stack import CANCEL, cancel_policy, slack_stack

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def cancel_with(**approval: Any) -> dict[str, Any]:
    document = json.loads(json.dumps(DEMO_POLICY))
    document["tools"]["ibkr_cancel_order"]["approval"].update(approval)
    return document


@asynccontextmanager
async def second(h: Harness) -> AsyncIterator[Harness]:
    """Another gateway on the same settings: the same database, policy file and upstream."""
    other = Gateway(h.settings)
    async with serve_asgi(other.asgi()) as base_url:
        assert await other.upstreams.wait_connected(15)
        twin = Harness(base_url, other, h.book, h.settings, h.policy_file)
        try:
            yield twin
        finally:
            await twin.close()


async def feeds_caught_up(*harnesses: Harness) -> None:
    """Wait until every gateway's change feed has read to the end of the log."""
    async with harnesses[0].gateway.db.read() as conn:
        from sqlalchemy import text as sql

        head = int((await conn.execute(sql("SELECT COALESCE(MAX(seq), 0) FROM audit_event"))).scalar_one())
    await wait_for(lambda: all((h.gateway.feed.cursor or 0) >= head for h in harnesses))


async def test_a_held_calls_quota_returns_when_the_other_gateway_rejects_it(tmp_path: Path, database_url: str) -> None:
    policy = cancel_with()
    policy["tools"]["ibkr_cancel_order"]["limits"] = [
        {"counter": "cancels", "window": "hour", "max": 1, "scope": "grant"}
    ]
    async with running_gateway(tmp_path, database_url, policy=policy) as a, second(a) as b:
        # Held in A; rejected through B's API. The agent held in A hears B's decision.
        async with held_call(a, "ibkr_cancel_order", CANCEL) as (request, box):
            response = await b.api().post(f"/api/approvals/{request['id']}/reject", json={"reason": "not now"})
            assert response.status_code == 200
        assert text(box["result"]).startswith("[APPROVAL REJECTED] Rejected by alice: not now.")
        # The quota of one cancel an hour came back: the next cancel is held again, not rate limited. (Another
        # order: the identical call would get its rejection again, within the repeat window.)
        async with held_call(a, "ibkr_cancel_order", {**CANCEL, "orderId": 1002}) as (again, box):
            await b.api().post(f"/api/approvals/{again['id']}/reject", json={"reason": "still no"})
        assert text(box["result"]).startswith("[APPROVAL REJECTED] Rejected by alice: still no.")
    assert a.book.cancel_calls == 0


async def test_the_quota_of_a_call_whose_agent_stopped_waiting_returns_when_the_other_gateway_rejects_it(
    tmp_path: Path, sqlite_url: str
) -> None:
    policy = cancel_with(max_hold="0.3s")
    policy["tools"]["ibkr_cancel_order"]["limits"] = [
        {"counter": "cancels", "window": "hour", "max": 1, "scope": "grant"}
    ]
    async with running_gateway(tmp_path, sqlite_url, policy=policy) as a, second(a) as b, a.agent() as agent:
        pending = await agent.call_tool("ibkr_cancel_order", CANCEL)
        assert text(pending).startswith("[APPROVAL PENDING]")
        approval_id = pending.structured_content["approval_id"]  # type: ignore[index]
        limited = await agent.call_tool("ibkr_cancel_order", {"orderId": 1002, "confirm": True})
        assert text(limited).startswith("[RATE LIMITED]"), "one cancel an hour, and one is parked"
        await b.api().post(f"/api/approvals/{approval_id}/reject", json={"reason": "no"})
        await feeds_caught_up(a, b)
        next_one = await agent.call_tool("ibkr_cancel_order", {"orderId": 1002, "confirm": True})
        assert text(next_one).startswith("[APPROVAL PENDING]"), text(next_one)


async def test_a_decision_made_in_one_gateway_reaches_an_agent_held_in_the_other(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url, policy=cancel_with()) as a, second(a) as b:
        async with held_call(b, "ibkr_cancel_order", CANCEL) as (request, box):
            response = await a.api().post(f"/api/approvals/{request['id']}/approve", json={})
            assert response.status_code == 200
        assert not box["result"].is_error, text(box["result"])
        assert box["result"].structured_content["orderId"] == 1001
    assert a.book.cancel_calls == 1


async def test_an_unattended_run_executes_exactly_once_with_two_gateways_hearing_the_approval(
    tmp_path: Path, database_url: str
) -> None:
    policy = cancel_with(max_hold="0.3s", run_unattended=True)
    async with running_gateway(tmp_path, database_url, policy=policy) as a, second(a) as b, a.agent() as agent:
        pending = await agent.call_tool("ibkr_cancel_order", CANCEL)
        approval_id = pending.structured_content["approval_id"]  # type: ignore[index]
        await b.api().post(f"/api/approvals/{approval_id}/approve", json={})

        async def executed() -> bool:
            return bool((await a.service.get(approval_id)).status == Status.EXECUTED)

        await wait_for(executed)
        await feeds_caught_up(a, b)
        kinds = [e.kind for e in await a.service.history.events(request_id=approval_id)]
        assert kinds.count("request.executing") == 1
        result = await agent.call_tool("countersign_approval_wait", {"approval_id": approval_id})
        assert result.structured_content["orderId"] == 1001  # type: ignore[index]
    assert a.book.cancel_calls == 1


async def test_a_reminder_is_sent_once_with_two_gateways_running(tmp_path: Path, database_url: str) -> None:
    policy = cancel_policy(timeout="4s")
    async with slack_stack(tmp_path, database_url, policy=policy, slack={"reminder_before": "2s"}) as (a, slack):
        async with held_call(a, "ibkr_cancel_order", CANCEL) as (request, box):
            message = await slack.message()
            # B starts while the request is pending and its message is out: it arms the same reminder.
            async with second(a) as b:
                await wait_for(lambda: box.get("result") is not None, within=15)
                await feeds_caught_up(a, b)
        reminders = [m for m in slack.messages.values() if m.thread_ts == message.ts]
        assert len(reminders) == 1, [m.text for m in reminders]
        assert len(slack.calls_to("chat.postMessage")) == 2, "one message, one reminder"
        kinds = [e.kind for e in await a.service.history.events(request_id=request["id"])]
        assert kinds.count("request.reminded") == 1


async def test_each_change_is_shown_on_slack_by_one_gateway(tmp_path: Path, database_url: str) -> None:
    async with slack_stack(tmp_path, database_url) as (a, slack), second(a) as b:
        async with held_call(a, "ibkr_cancel_order", CANCEL) as (request, _):
            message = await slack.message()
            await b.api().post(f"/api/approvals/{request['id']}/reject", json={"reason": "twice?"})
            await slack.message_shows(message, "Rejected by alice: twice?")
        await feeds_caught_up(a, b)
        with anyio.move_on_after(0.5):  # give a second, wrong update the chance to show up
            await wait_for(lambda: len(slack.calls_to("chat.update")) > 1)
    assert len(slack.calls_to("chat.postMessage")) == 1
    assert len(slack.calls_to("chat.update")) == 1
