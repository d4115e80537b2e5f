"""Socket Mode end to end: slack-sdk's SocketModeClient against the fake Slack's websocket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from gateway.slack.messages import ACTION_APPROVE, ACTION_REJECT
from tests.slack.fake_slack import APP_TOKEN
from tests.slack.stack import ALICE, BOB, CANCEL, MALLORY, call_tool, cancel_policy, slack_stack, text


async def test_an_approve_click_over_socket_mode_returns_the_brokers_result(tmp_path: Path, sqlite_url: str) -> None:
    async with slack_stack(tmp_path, sqlite_url, mode="socket") as (h, slack), h.agent() as agent:
        [opened] = slack.calls_to("apps.connections.open")
        assert opened.token == APP_TOKEN
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            ack = await slack.click(message, ACTION_APPROVE, ALICE)
            assert ack == (200, None), "the envelope is acknowledged within Slack's 3 seconds"

        assert not outcome["result"].is_error, text(outcome["result"])
        assert h.book.cancel_calls == 1
        await slack.message_shows(message, "Approved by alice and executed. _(decided via slack)_")
        assert message.buttons() == {}


async def test_reject_with_a_reason_over_socket_mode(tmp_path: Path, sqlite_url: str) -> None:
    policy = cancel_policy(reject_reason="required")
    async with slack_stack(tmp_path, sqlite_url, policy=policy, mode="socket") as (h, slack), h.agent() as agent:
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            await slack.click(message, ACTION_APPROVE, MALLORY)
            await slack.wait_until(lambda: bool(slack.ephemerals))
            assert "not allowed" in slack.ephemerals[0]["text"]

            await slack.click(message, ACTION_REJECT, BOB)
            await slack.wait_until(lambda: bool(slack.views))
            [modal] = slack.views
            _, ack = await slack.submit(modal, BOB, "")
            assert ack["response_action"] == "errors" and "reason" in ack["errors"]
            _, ack = await slack.submit(modal, BOB, "position limit reached")
            assert ack is None

        assert text(outcome["result"]) == (
            "[APPROVAL REJECTED] Rejected by bob: position limit reached. The call was not executed."
        )
        await slack.message_shows(
            message, "Rejected by bob: position limit reached. The call was not executed. _(decided via slack)_"
        )


async def test_socket_mode_reconnects_when_slack_asks_or_the_connection_drops(tmp_path: Path, sqlite_url: str) -> None:
    async with slack_stack(tmp_path, sqlite_url, mode="socket") as (h, slack), h.agent() as agent:
        assert (slack.connection_opens, slack.links_dialled) == (1, 1)
        await slack.ask_to_reconnect()
        await slack.wait_until(lambda: (slack.connection_opens, slack.links_dialled, len(slack.sockets)) == (2, 2, 1))
        await slack.drop_connections()
        await slack.wait_until(lambda: (slack.connection_opens, slack.links_dialled, len(slack.sockets)) == (3, 3, 1))

        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            await slack.click(message, ACTION_APPROVE, ALICE)
        assert not outcome["result"].is_error
        await slack.message_shows(message, "executed")
