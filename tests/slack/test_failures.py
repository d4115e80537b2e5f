"""When Slack fails (errors, 429s, timeouts): nothing blocks, nothing is lost, and the audit history says so."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from approvals.states import Status
from gateway.slack.messages import ACTION_APPROVE, ACTION_REJECT
from tests.harness import ALICE_TOKEN, Harness, wait_for
from tests.slack.fake_slack import FakeSlack
from tests.slack.stack import ALICE, BOB, CANCEL, call_tool, cancel_policy, slack_stack, text


async def slack_events(h: Harness, request_id: str) -> list[Any]:
    return [e for e in await h.service.history.events(request_id=request_id) if e.kind.startswith("slack.")]


async def audited(h: Harness, request_id: str, *kinds: str) -> list[Any]:
    """The request's Slack audit events, once they are exactly `kinds` (they are written after the call)."""

    async def written() -> bool:
        return [e.kind for e in await slack_events(h, request_id)] == list(kinds)

    await wait_for(written)
    return await slack_events(h, request_id)


async def test_with_slack_down_the_request_is_still_decided_from_the_api_and_the_failure_is_audited(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with slack_stack(tmp_path, sqlite_url, slack={"request_timeout": 0.3}) as (h, slack), h.agent() as agent:
        slack.fail("chat.postMessage", status=500, times=1000)
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            [request] = await h.pending()
            await slack.wait_until(lambda: len(slack.calls_to("chat.postMessage")) >= 3)
            started = time.monotonic()
            response = await h.api(ALICE_TOKEN).post(f"/api/approvals/{request['id']}/approve", json={})
            assert response.status_code == 200
            assert time.monotonic() - started < 5, "a failing Slack must not hold up a decision"

        assert not outcome["result"].is_error, text(outcome["result"])
        assert h.book.cancel_calls == 1
        events = (await h.api().get(f"/api/approvals/{request['id']}")).json()["events"]
        [failed] = [e for e in events if e["kind"] == "slack.failed"]
        assert failed["channel"] == "slack"
        assert failed["detail"]["method"] == "chat.postMessage"
        assert "HTTP 500" in failed["message"] and "decidable in the web inbox" in failed["message"]
        assert slack.messages == {}, "a request decided before Slack came back is not posted late"


async def test_a_hanging_slack_times_out_and_is_retried(tmp_path: Path, sqlite_url: str) -> None:
    async with slack_stack(tmp_path, sqlite_url, slack={"request_timeout": 0.3}) as (h, slack), h.agent() as agent:
        slack.fail("chat.postMessage", delay=1.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, {}, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            [request] = await h.pending()
            [failed, _] = await audited(h, request["id"], "slack.failed", "slack.recovered")
            assert "no answer within 0.3s" in failed.detail["error"]
            await slack.click(message, ACTION_REJECT, ALICE)
            await slack.wait_until(lambda: bool(slack.views))
            await slack.submit(slack.views[0], ALICE, "enough")
        await audited(h, request["id"], "slack.failed", "slack.recovered")


async def test_a_429_is_retried_after_the_time_slack_asks_for(tmp_path: Path, sqlite_url: str) -> None:
    async with slack_stack(tmp_path, sqlite_url) as (h, slack), h.agent() as agent:
        slack.fail("chat.postMessage", status=429, retry_after=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, {}, "ibkr_cancel_order", CANCEL)
            await slack.message()
            [request] = await h.pending()
            posts = slack.calls_to("chat.postMessage")
            assert len(posts) == 2
            [failed, recovered] = await audited(h, request["id"], "slack.failed", "slack.recovered")
            assert failed.kind == "slack.failed" and failed.detail["retry_after"] == 1
            assert (recovered.at - failed.at).total_seconds() >= 1.0, "Retry-After: 1 was honoured"
            tg.cancel_scope.cancel()


async def test_a_permanent_slack_error_is_given_up_at_once_and_audited(tmp_path: Path, sqlite_url: str) -> None:
    policy = cancel_policy(slack_channel="#no-such-channel")
    async with slack_stack(tmp_path, sqlite_url, policy=policy) as (h, slack), h.agent() as agent:
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, outcome, "ibkr_cancel_order", CANCEL)
            [request] = await h.pending()

            [event] = await audited(h, request["id"], "slack.gave_up")
            assert event.detail["error"] == "channel_not_found" and event.detail["attempts"] == 1
            assert len(slack.calls_to("chat.postMessage")) == 1
            await h.api(ALICE_TOKEN).post(f"/api/approvals/{request['id']}/reject", json={"reason": "fix the channel"})
        assert text(outcome["result"]) == (
            "[APPROVAL REJECTED] Rejected by alice: fix the channel. The call was not executed."
        )


async def test_a_failed_update_is_retried_until_the_message_shows_the_truth(tmp_path: Path, sqlite_url: str) -> None:
    async with slack_stack(tmp_path, sqlite_url) as (h, slack), h.agent() as agent:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool, agent, {}, "ibkr_cancel_order", CANCEL)
            message = await slack.message()
            slack.fail("chat.update", status=503, times=2)
            slack.fail("chat.update", error="internal_error")
            await slack.click(message, ACTION_APPROVE, ALICE)
        await slack.message_shows(message, "executed")
        assert len(slack.calls_to("chat.update")) >= 4


async def test_when_slack_cannot_look_up_the_clicker_nothing_is_decided_and_they_are_told(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with slack_stack(tmp_path, sqlite_url) as (h, slack), h.agent() as agent, anyio.create_task_group() as tg:
        tg.start_soon(call_tool, agent, {}, "ibkr_cancel_order", CANCEL)
        message = await slack.message()
        [request] = await h.pending()
        slack.fail("users.info", status=500)
        await slack.click(message, ACTION_APPROVE, BOB)
        await slack.wait_until(lambda: bool(slack.ephemerals))
        assert "could not look up your Slack profile" in slack.ephemerals[0]["text"]
        assert (await h.service.get(request["id"])).status == Status.PENDING
        await audited(h, request["id"], "slack.failed")

        slack.fail("views.open", error="expired_trigger_id")
        await slack.click(message, ACTION_REJECT, ALICE)
        await slack.wait_until(lambda: len(slack.ephemerals) == 2)
        assert "could not open the reason dialog" in slack.ephemerals[1]["text"]
        assert (await h.service.get(request["id"])).status == Status.PENDING
        tg.cancel_scope.cancel()


async def test_an_unconfigured_slack_is_simply_absent(tmp_path: Path, sqlite_url: str) -> None:
    from tests.harness import running_gateway

    fake = FakeSlack()
    async with fake.serving(), running_gateway(tmp_path, sqlite_url, policy=cancel_policy()) as h:
        assert [c.name for c in h.gateway.channels if c.name == "slack"] == []
        response = await h.api().post("/slack/interactions")
        assert response.status_code in (404, 405)


async def test_on_start_pending_requests_that_never_reached_slack_are_posted(tmp_path: Path, sqlite_url: str) -> None:
    from datetime import timedelta

    from approvals.approvers import ApproverDirectory
    from approvals.db import Database
    from approvals.service import ApprovalService, utcnow
    from approvals.views import NewRequest
    from gateway.config import parse_settings
    from gateway.slack import SlackChannel

    fake = FakeSlack()
    db = Database(sqlite_url)
    await db.create_schema()
    # Held a minute ago by a gateway that stopped before Slack could show it.
    earlier = ApprovalService(db, ApproverDirectory([]), clock=lambda: utcnow() - timedelta(minutes=1))
    new = NewRequest("paper", "ibkr_cancel_order", "ibkr_cancel_order", CANCEL, "alpha", "rule", "held", 900)
    stranded = await earlier.create(new)
    decided = await earlier.create(replace(new, arguments={**CANCEL, "orderId": 1002}))
    await earlier.withdraw(decided.id, "the agent went away")
    try:
        async with fake.serving(), anyio.create_task_group() as tg:
            settings = parse_settings({"slack": fake.config()}, base_dir=str(tmp_path), environ={})
            channel = SlackChannel(settings, ApprovalService(db, ApproverDirectory([])), ApproverDirectory([]))
            tg.start_soon(channel.run)
            message = await fake.message()

            async def remembered() -> bool:
                return (await channel.service.get(stranded.id)).slack_ts == message.ts

            await wait_for(remembered)
            assert len(fake.messages) == 1, "only pending requests are worth posting late"
            tg.cancel_scope.cancel()
    finally:
        await db.dispose()
