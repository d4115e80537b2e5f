"""A gateway with the web inbox and Slack (against the fake Slack), held calls, and the people who act on them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from approvals.states import Status
from tests.harness import Harness, running_gateway
from tests.slack.fake_slack import FakeSlack, Message, User
from tests.slack.stack import ALICE, BOB, CAROL, MALLORY
from tests.web.support import SESSION_SECRET, approvers

# A live order: held by the policy below; every field is one the broker's schema declares.
PLACE: dict[str, Any] = {
    "contract": {"symbol": "AAPL", "secType": "STK", "exchange": "SMART", "currency": "USD"},
    "order": {"action": "BUY", "totalQuantity": 10, "orderType": "MKT"},
    "dry_run": False,
}


def held_policy() -> dict[str, Any]:
    """Cancelling and placing orders held for group:traders, on the web and in Slack."""
    approval = {"timeout": "15m", "approvers": ["group:traders"], "channels": ["web", "slack"]}
    held = {"require_approval": [{"conditions": [], "reason": "A human decides."}], "approval": approval}
    return {
        "version": "1",
        "default": "deny",
        "tools": {"ibkr_get_*": {}, "ibkr_cancel_order": held, "ibkr_place_order": held},
    }


@asynccontextmanager
async def gateway_with_slack(
    tmp_path: Path, database_url: str, *, users: list[User] | None = None
) -> AsyncIterator[tuple[Harness, FakeSlack]]:
    """Approvers alice (pinned to her Slack account) and bob (matched by email) who can also sign in."""
    fake = FakeSlack([ALICE, BOB, CAROL, MALLORY, *(users or [])])
    people = approvers()
    people[0]["slack_user"] = ALICE.id
    async with fake.serving():
        config = {
            "slack": fake.config(),
            "approvers": people,
            "web": {"session_secret": SESSION_SECRET, "refresh_interval": 0.25, "failed_signin_delay": 0},
        }
        async with running_gateway(tmp_path, database_url, policy=held_policy(), config=config) as h:
            fake.interactions_url = f"{h.base_url}/slack/interactions"
            # A held call that nobody decides waits for minutes; a broken test should fail, not hang.
            with anyio.fail_after(30):
                yield h, fake


async def message_for(slack: FakeSlack, request_id: str) -> Message:
    """The approval message the gateway posted for `request_id`, once it is there."""

    def find() -> Message | None:
        return next(
            (
                m
                for m in slack.messages.values()
                if m.thread_ts is None and any(b.get("value") == request_id for b in m.buttons().values())
            ),
            None,
        )

    await slack.wait_until(lambda: find() is not None)
    found = find()
    assert found is not None
    return found


async def refusals(h: Harness, request_id: str) -> list[Any]:
    """The request's audited refusals (someone tried to decide it and was not allowed to)."""
    return [e for e in await h.service.history.events(request_id=request_id) if e.kind == "decision.refused"]


async def still_pending(h: Harness, request_id: str) -> None:
    assert (await h.service.get(request_id)).status == Status.PENDING
    assert await h.service.decisions(request_id) == []
