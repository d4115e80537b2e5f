"""Arguments cut short in Slack are never approvable there; the message links to the full request."""

from __future__ import annotations

from pathlib import Path

from gateway.slack.messages import ACTION_APPROVE, ACTION_REJECT
from tests.harness import ALICE_TOKEN, held_call
from tests.security.support import PLACE, gateway_with_slack, message_for, still_pending
from tests.slack.stack import ALICE


async def test_arguments_too_long_for_slack_are_never_approvable_there(tmp_path: Path, sqlite_url: str) -> None:
    long = {**PLACE, "contract": {**PLACE["contract"], "description": "x" * 3000}}
    async with (
        gateway_with_slack(tmp_path, sqlite_url) as (h, slack),
        held_call(h, "ibkr_place_order", long) as (request, _),
    ):
        message = await message_for(slack, request["id"])
        full_request = f"{h.settings.server.base_url}/approvals/{request['id']}"
        buttons = message.buttons()
        assert ACTION_APPROVE not in buttons, "Approve is not offered on arguments the approver cannot see"
        assert [b["url"] for b in buttons.values() if "url" in b] == [full_request], "a link to the full request"
        assert ACTION_REJECT in buttons
        assert "Truncated" in message.block_text() and full_request in message.block_text()

        # An approve click on that message anyway (say, from an older client) decides nothing.
        forged = slack.click_payload(message, ACTION_REJECT, ALICE)
        forged["actions"][0]["action_id"] = ACTION_APPROVE
        assert (await slack.deliver(forged))[0] == 200
        await slack.wait_until(lambda: bool(slack.ephemerals))
        assert "approved only in the inbox" in slack.ephemerals[0]["text"]
        await still_pending(h, request["id"])
        await h.api(ALICE_TOKEN).post(f"/api/approvals/{request['id']}/reject", json={"reason": "too long"})
