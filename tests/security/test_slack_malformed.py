"""Signed Slack payloads of the wrong shape: 400, and nothing decided."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.slack.messages import ACTION_APPROVE, REJECT_CALLBACK
from tests.harness import ALICE_TOKEN, held_call
from tests.security.support import gateway_with_slack, message_for, still_pending
from tests.slack.fake_slack import FakeSlack
from tests.slack.stack import ALICE


async def _deliver_all(slack: FakeSlack, payloads: list[dict[str, Any]]) -> list[int]:
    return [(await slack.deliver(p))[0] for p in payloads]


async def test_a_signed_payload_of_the_wrong_shape_gets_400_and_decides_nothing(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with (
        gateway_with_slack(tmp_path, sqlite_url) as (h, slack),
        held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (request, _),
    ):
        message = await message_for(slack, request["id"])
        click = slack.click_payload(message, ACTION_APPROVE, ALICE)
        user = click["user"]
        malformed: list[dict[str, Any]] = [
            {**click, "actions": [None]},
            {**click, "actions": [None, click["actions"][0]]},
            {**click, "actions": "countersign.approve"},
            {**click, "actions": [{**click["actions"][0], "value": {"id": request["id"]}}]},
            {**click, "actions": [{**click["actions"][0], "action_id": 7}]},
            {**click, "user": "U0ALICE"},
            {**click, "user": None},
            {**click, "container": ["message"]},
            {**click, "type": ["block_actions"]},
            {"type": "view_submission", "user": user, "view": None},
            {"type": "view_submission", "user": user, "view": {"callback_id": REJECT_CALLBACK, "state": []}},
            {
                "type": "view_submission",
                "user": user,
                "view": {"id": "V1", "callback_id": REJECT_CALLBACK, "state": {"values": {"reason": [None]}}},
            },
        ]
        assert await _deliver_all(slack, malformed) == [400] * len(malformed)
        await still_pending(h, request["id"])
        assert slack.ephemerals == [] and slack.views == []
        await h.api(ALICE_TOKEN).post(f"/api/approvals/{request['id']}/reject", json={"reason": "done"})
