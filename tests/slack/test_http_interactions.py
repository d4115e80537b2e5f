"""Slack over HTTP interactivity, end to end: a real agent's held call, the fake Slack, signed clicks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio

from approvals.states import Status
from gateway.slack.messages import ACTION_APPROVE, ACTION_REJECT
from tests.harness import ALICE_TOKEN
from tests.slack.fake_slack import APPROVALS, sign
from tests.slack.stack import ALICE, BOB, CANCEL, CAROL, MALLORY, call_tool, cancel_policy, slack_stack, text


async def test_a_held_call_posts_a_message_and_a_signed_approve_click_returns_the_brokers_result(
    tmp_path: Path, database_url: str
) -> None:
    async with slack_stack(tmp_path, database_url) as (h, slack), h.agent() as agent:
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            [request] = await h.pending()
            shown = message.block_text()
            assert message.channel == APPROVALS
            for expected in (
                "ibkr_cancel_order",
                "`paper`",
                "alpha",
                "Cancelling a live order needs a human.",
                '"orderId": 1001',
                "<!date^",
                f"<{h.settings.server.base_url}/inbox|",
                f"<{h.settings.server.base_url}/approvals/{request['id']}|",
            ):
                assert expected in shown, expected
            assert set(message.buttons()) == {ACTION_APPROVE, ACTION_REJECT}
            assert message.buttons()[ACTION_APPROVE]["value"] == request["id"]
            assert h.book.cancel_calls == 0

            started = time.monotonic()
            status, body = await slack.click(message, ACTION_APPROVE, ALICE)
            assert (status, body) == (200, None)
            assert time.monotonic() - started < 3, "Slack needs the acknowledgement within 3 seconds"

        result = outcome["result"]
        assert not result.is_error, text(result)
        assert result.structured_content is not None and result.structured_content["orderId"] == 1001
        assert h.book.cancel_calls == 1
        await slack.message_shows(message, "executed")
        assert "Approved by alice and executed. _(decided via slack)_" in message.block_text()
        assert message.buttons() == {}, "buttons disappear once the request is decided"
        final = (await h.api().get(f"/api/approvals/{request['id']}")).json()
        assert (final["status"], final["decided_by"], final["decided_via"]) == ("executed", "alice", "slack")


async def test_reject_opens_a_modal_and_the_reason_reaches_the_agent(tmp_path: Path, sqlite_url: str) -> None:
    async with slack_stack(tmp_path, sqlite_url) as (h, slack), h.agent() as agent:
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            click = slack.click_payload(message, ACTION_REJECT, BOB)
            assert await slack.deliver(click) == (200, None)
            await slack.wait_until(lambda: bool(slack.views))
            [modal] = slack.views
            assert modal["trigger_id"] == click["trigger_id"]
            [reason_input] = [b for b in modal["blocks"] if b["type"] == "input"]
            assert reason_input["optional"] is True
            assert [c.args["user"] for c in slack.calls_to("users.info")] == [BOB.id], "bob is matched by email"

            status, body = await slack.submit(modal, BOB, "that order protects a position")
            assert (status, body) == (200, None), "an empty 200 closes the modal"

        result = outcome["result"]
        assert result.is_error
        assert text(result) == (
            "[APPROVAL REJECTED] Rejected by bob: that order protects a position. The call was not executed."
        )
        assert h.book.cancel_calls == 0
        await slack.message_shows(
            message, "Rejected by bob: that order protects a position. The call was not executed. _(decided via slack)_"
        )
        assert message.buttons() == {}


async def test_a_reason_the_policy_requires_is_asked_for_in_the_modal(tmp_path: Path, sqlite_url: str) -> None:
    policy = cancel_policy(reject_reason="required")
    async with slack_stack(tmp_path, sqlite_url, policy=policy) as (h, slack), h.agent() as agent:
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            await slack.click(message, ACTION_REJECT, ALICE)
            await slack.wait_until(lambda: bool(slack.views))
            [modal] = slack.views
            assert [b["optional"] for b in modal["blocks"] if b["type"] == "input"] == [False]

            for _ in range(2):  # the same empty submission again is asked again, not dropped as a repeat
                status, body = await slack.submit(modal, ALICE, "   ")
                assert status == 200
                assert body["response_action"] == "errors"
                assert "requires a reason" in body["errors"]["reason"]
            [request] = await h.pending()
            assert request["status"] == "pending"

            status, body = await slack.submit(modal, ALICE, "stale order")
            assert (status, body) == (200, None)

        assert text(outcome["result"]) == (
            "[APPROVAL REJECTED] Rejected by alice: stale order. The call was not executed."
        )


async def test_a_forged_or_stale_request_gets_401_and_decides_nothing(tmp_path: Path, sqlite_url: str) -> None:
    async with slack_stack(tmp_path, sqlite_url) as (h, slack), h.agent() as agent:
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            payload = slack.click_payload(message, ACTION_APPROVE, ALICE)
            now = int(time.time())
            forgeries = {
                "wrong signature": {"signature": "v0=" + "0" * 64},
                "unsigned": {"signature": ""},
                "stale timestamp": {"timestamp": str(now - 301)},
                "future timestamp": {"timestamp": str(now + 400)},
                "timestamp not a number": {"timestamp": "soon", "signature": sign("x", "soon", "x")},
            }
            for name, forgery in forgeries.items():
                assert (await slack.deliver(payload, **forgery))[0] == 401, name
            slack.signing_secret = "not-the-secret"
            assert (await slack.deliver(payload))[0] == 401, "signed with another secret"

            [request] = await h.pending()
            assert request["status"] == "pending"
            assert await h.service.decisions(request["id"]) == []
            assert slack.ephemerals == [] and slack.views == []
            await h.api().post(f"/api/approvals/{request['id']}/reject", json={"reason": "test over"})
        assert h.book.cancel_calls == 0
        assert text(outcome["result"]).startswith("[APPROVAL REJECTED] Rejected by alice")


async def test_a_repeated_delivery_and_a_double_click_are_one_decision(tmp_path: Path, sqlite_url: str) -> None:
    async with slack_stack(tmp_path, sqlite_url) as (h, slack), h.agent() as agent:
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            [request] = await h.pending()
            click = slack.click_payload(message, ACTION_APPROVE, ALICE)
            second_click = slack.click_payload(message, ACTION_APPROVE, ALICE)
            statuses: list[int] = []

            async def deliver(payload: dict[str, Any]) -> None:
                statuses.append((await slack.deliver(payload))[0])

            async with anyio.create_task_group() as clicks:
                clicks.start_soon(deliver, click)
                clicks.start_soon(deliver, click)  # Slack retrying the same delivery
                clicks.start_soon(deliver, second_click)  # the approver clicking twice
            assert statuses == [200, 200, 200]

        assert not outcome["result"].is_error
        assert h.book.cancel_calls == 1
        decisions = await h.service.decisions(request["id"])
        assert [(d.approver, d.verdict, d.channel) for d in decisions] == [("alice", "approve", "slack")]
        await slack.message_shows(message, "executed")
        assert slack.ephemerals == [], "a double click needs no 'already decided' reply"


async def test_people_who_may_not_decide_are_told_privately_and_audited(tmp_path: Path, sqlite_url: str) -> None:
    async with slack_stack(tmp_path, sqlite_url) as (h, slack), h.agent() as agent:
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            [request] = await h.pending()
            await slack.click(message, ACTION_APPROVE, CAROL)  # an approver, but not in group:traders
            await slack.click(message, ACTION_APPROVE, MALLORY)  # no approver at all
            await slack.click(message, ACTION_REJECT, MALLORY)
            await slack.wait_until(lambda: len(slack.ephemerals) == 3)
            to = {e["user"]: e["text"] for e in slack.ephemerals}
            assert "not allowed" in to[CAROL.id]
            assert "not allowed" in to[MALLORY.id] and "not linked" in to[MALLORY.id]
            assert {e["channel"] for e in slack.ephemerals} == {APPROVALS}
            assert slack.views == [], "no reason dialog for someone who may not reject"

            assert (await h.service.get(request["id"])).status == Status.PENDING
            assert await h.service.decisions(request["id"]) == []
            refused = [
                e for e in await h.service.history.events(request_id=request["id"]) if e.kind == "decision.refused"
            ]
            # Clicks are acknowledged first and handled after, so their refusals may be written in any order.
            assert sorted((e.actor, e.channel) for e in refused) == [
                ("carol", "slack"),
                ("slack:U0MALLORY", "slack"),
                ("slack:U0MALLORY", "slack"),
            ]
            tg.cancel_scope.cancel()


async def test_with_a_quorum_the_message_shows_progress_until_enough_approve(tmp_path: Path, sqlite_url: str) -> None:
    async with slack_stack(tmp_path, sqlite_url, policy=cancel_policy(quorum=2)) as (h, slack), h.agent() as agent:
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            assert "0 of 2 approvals" in message.block_text()
            await slack.click(message, ACTION_APPROVE, ALICE)
            await slack.message_shows(message, "1 of 2 approvals* (alice)")
            assert set(message.buttons()) == {ACTION_APPROVE, ACTION_REJECT}
            await slack.wait_until(lambda: bool(slack.ephemerals))
            assert "1 of 2 approvals" in slack.ephemerals[0]["text"]
            assert h.book.cancel_calls == 0
            await slack.click(message, ACTION_APPROVE, BOB)

        assert not outcome["result"].is_error
        await slack.message_shows(message, "Approved by alice, bob and executed. _(decided via slack)_")


async def test_injected_markup_in_arguments_arrives_inert(tmp_path: Path, sqlite_url: str) -> None:
    hostile = "<!channel> <http://evil.example|click me> <@U0ALICE> <#C0APPROVALS> ```done``` & `x`"
    async with slack_stack(tmp_path, sqlite_url) as (h, slack), h.agent() as agent, anyio.create_task_group() as tg:
        tg.start_soon(call_tool, agent, {}, "ibkr_cancel_order", {**CANCEL, "note": hostile})
        message = await slack.message()
        shown = message.block_text()
        for live in ("<!channel>", "<http://evil", "<@U0ALICE>", "<#C0APPROVALS>", "```done```"):
            assert live not in shown, live
        assert "&lt;!channel&gt; &lt;http://evil.example|click me&gt; &lt;@U0ALICE&gt;" in shown
        assert "&amp;" in shown
        [arguments] = [t for t in shown.split("\n*") if t.startswith("Arguments")]
        assert arguments.count("```") == 2, "the arguments' code block cannot be closed from inside"
        [post] = slack.calls_to("chat.postMessage")
        assert post.args["unfurl_links"] is False and post.args["link_names"] is False
        assert "<" not in post.args["text"]
        tg.cancel_scope.cancel()


async def test_decisions_made_in_the_api_or_the_web_inbox_update_the_message(tmp_path: Path, sqlite_url: str) -> None:
    async with slack_stack(tmp_path, sqlite_url) as (h, slack), h.agent() as agent:
        first: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, first, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            [request] = await h.pending()
            response = await h.api(ALICE_TOKEN).post(f"/api/approvals/{request['id']}/approve", json={})
            assert response.status_code == 200
        await slack.message_shows(message, "Approved by alice and executed. _(decided via api)_")
        assert message.buttons() == {}
        assert "*Result*" in message.block_text()

        second: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, second, "ibkr_cancel_order", {"orderId": 1002, "confirm": True})
            await slack.wait_until(lambda: len(slack.messages) == 2)
            [request] = await h.pending()
            other = next(m for m in slack.messages.values() if m is not message)
            bob = h.gateway.approvers.get("bob")
            await h.service.reject(request["id"], bob, "web", "not during the auction")
        await slack.message_shows(
            other, "Rejected by bob: not during the auction. The call was not executed. _(decided via web)_"
        )
        assert other.buttons() == {}


async def test_expiry_is_shown_and_a_reminder_is_posted_in_the_thread(tmp_path: Path, sqlite_url: str) -> None:
    policy = cancel_policy(timeout="3s")
    async with (
        slack_stack(tmp_path, sqlite_url, policy=policy, slack={"reminder_before": "2s"}) as (h, slack),
        h.agent() as agent,
    ):
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            await slack.wait_until(lambda: any(m.thread_ts == message.ts for m in slack.messages.values()))
            [reminder] = [m for m in slack.messages.values() if m.thread_ts == message.ts]
            assert "Still waiting" in reminder.text and "expires in" in reminder.text

        assert text(outcome["result"]).startswith("[APPROVAL EXPIRED]")
        await slack.message_shows(message, "Nobody decided within 3s; the call was not executed.")
        assert message.buttons() == {}


async def test_an_agent_that_goes_away_leaves_the_message_cancelled(tmp_path: Path, sqlite_url: str) -> None:
    async with slack_stack(tmp_path, sqlite_url) as (h, slack):
        async with h.agent() as agent, anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, {}, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            tg.cancel_scope.cancel()
        await slack.message_shows(message, "Withdrawn by the agent")
        assert message.buttons() == {}
        [request] = (await h.api().get("/api/approvals", params={"status": "cancelled"})).json()["approvals"]
        assert request["status"] == "cancelled"


async def test_the_policy_chooses_the_channel_or_leaves_slack_out(tmp_path: Path, sqlite_url: str) -> None:
    policy = cancel_policy(slack_channel="#risk-desk")
    policy["tools"]["ibkr_search_symbols"] = {
        "require_approval": [{"conditions": [], "reason": "Even searches, today."}],
        "approval": {"timeout": "15m", "channels": ["web"]},
    }
    stack = slack_stack(tmp_path, sqlite_url, policy=policy)
    async with stack as (h, slack), h.agent() as agent, anyio.create_task_group() as tg:
        tg.start_soon(call_tool, agent, {}, "ibkr_search_symbols", {"query": "AAPL"})
        await h.pending(1)
        tg.start_soon(call_tool, agent, {}, "ibkr_cancel_order", CANCEL)
        await h.pending(2)
        message = await slack.message()
        assert message.channel == "C0OVERRIDE"
        assert len(slack.messages) == 1, "a web-only request is not posted"
        tg.cancel_scope.cancel()
