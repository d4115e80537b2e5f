"""Escalation and reminders: when nobody decides, more approvers become eligible and are told once.

The gateway runs with a clock the test moves; Slack is the fake. Decisions go through the approver
API, so eligibility is checked exactly as every channel checks it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from approvals.models import OutboxItem
from approvals.outbox import REMINDER
from tests.gateway.fakes import MovableClock
from tests.harness import CAROL_TOKEN, Harness, held_call, running_gateway, wait_for
from tests.slack.fake_slack import FakeSlack, Message
from tests.slack.stack import CAROL, cancel_policy, slack_stack
from tests.web.support import browser_client, sign_in, web_config

ESCALATING = cancel_policy(approvers=["alice"], escalate={"after": "1s", "approvers": ["group:ops"]})


async def done(h: Harness, request_id: str, kind: str) -> bool:
    """Whether Slack's outbox item of this kind for the request exists and is done (nothing left due)."""
    items = OutboxItem.__table__  # type: ignore[attr-defined]
    query = select(items.c.due_at).where(
        items.c.channel == "slack", items.c.request_id == request_id, items.c.kind == kind
    )
    async with h.gateway.db.read() as conn:
        row = (await conn.execute(query)).first()
    return row is not None and row.due_at is None


def thread_of(slack: FakeSlack, message: Message) -> list[Message]:
    return [m for m in slack.messages.values() if m.thread_ts == message.ts]


async def test_an_escalation_after_1s_adds_a_group_notifies_it_once_and_its_member_can_then_approve(
    tmp_path: Path, database_url: str
) -> None:
    clock = MovableClock(datetime.now(UTC))
    async with slack_stack(tmp_path, database_url, policy=ESCALATING, clock=clock) as (h, slack):
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (request, outcome):
            url = f"/api/approvals/{request['id']}"
            message = await slack.message()
            # Before the step is due, carol (group ops) is not among those who may decide.
            early = await h.api(CAROL_TOKEN).post(f"{url}/approve", json={})
            assert early.status_code == 403
            assert await h.gateway.timeouts.escalate_due() == 0

            clock.advance(1.5)
            # Every replica's timer and sweep may fire; the step is taken once.
            assert await h.gateway.timeouts.escalate_due() == 1
            assert await h.gateway.timeouts.escalate_due() == 0
            await h.gateway.timeouts.sweep()

            await slack.wait_until(lambda: any("Escalated" in m.text for m in thread_of(slack, message)))
            await slack.message_shows(message, "group:ops")
            # Once Slack owes nothing more for the step, the thread holds exactly one notice.
            await wait_for(lambda: done(h, request["id"], "escalation1"))
            notices = [m for m in thread_of(slack, message) if "Escalated" in m.text]
            assert len(notices) == 1
            assert f"<@{CAROL.id}>" not in notices[0].text  # carol is linked by email, not `slack_user`
            assert "group:ops may decide this request now" in notices[0].text

            shown = (await h.api().get(url)).json()
            assert shown["approvers"] == ["alice", "group:ops"]
            [step] = shown["escalation"]
            assert (step["approvers"], step["taken"]) == (["group:ops"], True)
            assert any(t.startswith("Escalated at ") and "group:ops may decide too" in t for t in shown["terms"])
            escalated = [e for e in shown["events"] if e["kind"] == "request.escalated"]
            assert len(escalated) == 1 and escalated[0]["detail"]["added"] == ["group:ops"]

            approved = await h.api(CAROL_TOKEN).post(f"{url}/approve", json={"reason": "covering for alice"})
            assert approved.status_code == 200, approved.text
        assert not outcome["result"].is_error
        assert h.book.orders[1001].status == "Cancelled"
        verified = (await h.api().get("/api/audit/verify")).json()
        assert verified["ok"], verified


async def test_the_card_shows_the_step_ahead_and_then_the_step_taken(tmp_path: Path, sqlite_url: str) -> None:
    clock = MovableClock(datetime.now(UTC))
    async with running_gateway(tmp_path, sqlite_url, policy=ESCALATING, config=web_config(), clock=clock) as h:
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (request, outcome):
            async with browser_client(h.base_url) as web:
                await sign_in(web, "alice")
                before = (await web.get(f"/approvals/{request['id']}")).text
                assert "Escalates at" in before and "to group:ops if nobody has decided by then" in before
                clock.advance(2)
                await h.gateway.timeouts.escalate_due()
                after = (await web.get(f"/approvals/{request['id']}")).text
                assert "group:ops may decide too" in after and "alice, group:ops" in after
            await h.api().post(f"/api/approvals/{request['id']}/reject", json={"reason": "no"})
        assert outcome["result"].is_error


@pytest.mark.parametrize("post", ["answered at once", "answered after the reminder's moment"])
async def test_a_tools_own_reminder_is_posted_once_before_expiry(tmp_path: Path, sqlite_url: str, post: str) -> None:
    clock = MovableClock(datetime.now(UTC))
    policy = cancel_policy(timeout="15m", remind_before="5m")
    async with slack_stack(tmp_path, sqlite_url, policy=policy, clock=clock) as (h, slack):
        slow = post != "answered at once"
        if slow:
            # Slack takes its time to answer the post; meanwhile the reminder's moment comes and goes, and the
            # reminder is posted late rather than never.
            slack.slow("chat.postMessage", 1.0)
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (request, outcome):
            message = await slack.message()

            async def recorded() -> bool:
                # The reminder is scheduled in the transaction that records the post.
                return (await h.service.get(request["id"])).slack_ts is not None

            if not slow:
                await wait_for(recorded)
            clock.advance(10 * 60 + 1)
            await slack.wait_until(lambda: any("Still waiting" in m.text for m in thread_of(slack, message)))
            await wait_for(lambda: done(h, request["id"], REMINDER))
            reminders = [m for m in thread_of(slack, message) if "Still waiting" in m.text]
            assert len(reminders) == 1 and "expires in 4m 59s" in reminders[0].text
            await h.api().post(f"/api/approvals/{request['id']}/reject", json={"reason": "no"})
        assert outcome["result"].is_error
