"""Slack's "Approve for N min": offered only where the tool's policy allows standing approvals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from gateway.slack.messages import ACTION_APPROVE, ACTION_APPROVE_GRANT, ACTION_REJECT
from tests.slack.stack import ALICE, CANCEL, call_tool, cancel_policy, slack_stack, text


async def test_approve_for_n_minutes_approves_and_grants_and_the_next_identical_call_runs_without_asking(
    tmp_path: Path, sqlite_url: str
) -> None:
    policy = cancel_policy(grants={"max_duration": "20m", "max_uses": 3})
    async with slack_stack(tmp_path, sqlite_url, policy=policy) as (h, slack), h.agent() as agent:
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            buttons = message.buttons()
            assert set(buttons) == {ACTION_APPROVE, ACTION_APPROVE_GRANT, ACTION_REJECT}
            grant_button = buttons[ACTION_APPROVE_GRANT]
            assert grant_button["text"]["text"] == "Approve for 20 min"
            assert "up to 20m and 3 calls, for the same arguments" in grant_button["confirm"]["text"]["text"]
            assert (await slack.click(message, ACTION_APPROVE_GRANT, ALICE))[0] == 200
        assert not outcome["result"].is_error, text(outcome["result"])

        await slack.wait_until(lambda: bool(slack.ephemerals))
        told = slack.ephemerals[-1]
        assert told["user"] == ALICE.id and "the same call is allowed until" in told["text"]
        [grant] = (await h.api().get("/api/grants")).json()["grants"]
        assert (grant["approver"], grant["channel"], grant["max_uses"]) == ("alice", "slack", 3)

        with anyio.fail_after(15):
            again = await agent.call_tool("ibkr_cancel_order", CANCEL)
        # It reached the broker, which says the order is cancelled already (by the approved call).
        assert "order 1001 cannot be cancelled: its status is Cancelled" in text(again)
        kinds = [e.kind for e in await h.service.history.events(limit=50)]
        assert kinds[-2:] == ["call.granted", "call.failed"]
        assert len([m for m in slack.messages.values() if m.thread_ts is None]) == 1, "nobody was asked again"
        assert (await h.api().get(f"/api/grants/{grant['id']}")).json()["uses"] == 1


async def test_a_tool_without_grants_gets_no_grant_button(tmp_path: Path, sqlite_url: str) -> None:
    async with slack_stack(tmp_path, sqlite_url) as (h, slack), h.agent() as agent:
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            assert set(message.buttons()) == {ACTION_APPROVE, ACTION_REJECT}
            assert (await slack.click(message, ACTION_APPROVE, ALICE))[0] == 200
        assert not outcome["result"].is_error
