"""Slack clicks and reason modals count only from the message or view the gateway made for the request."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from gateway.slack.messages import ACTION_APPROVE, ACTION_REJECT, REJECT_CALLBACK
from tests.harness import ALICE_TOKEN, held_call
from tests.security.support import gateway_with_slack, message_for, refusals, still_pending
from tests.slack.fake_slack import APPROVALS
from tests.slack.stack import ALICE


async def test_a_click_or_modal_counts_only_from_the_message_or_view_the_gateway_made_for_that_request(
    tmp_path: Path, sqlite_url: str
) -> None:
    cancel = {"orderId": 1001, "confirm": True}
    async with (
        gateway_with_slack(tmp_path, sqlite_url) as (h, slack),
        held_call(h, "ibkr_cancel_order", cancel) as (first, _),
        held_call(h, "ibkr_cancel_order", {**cancel, "orderId": 1002}) as (second, _),
    ):
        message = await message_for(slack, first["id"])
        await message_for(slack, second["id"])
        genuine = slack.click_payload(message, ACTION_APPROVE, ALICE)

        # The first request's button value, from a message the app never posted, another channel, a modal.
        elsewhere: list[dict[str, Any]] = [
            {"type": "message", "channel_id": APPROVALS, "message_ts": "1700000099.000001", "is_ephemeral": False},
            {"type": "message", "channel_id": "C0OVERRIDE", "message_ts": message.ts, "is_ephemeral": False},
            {"type": "view", "view_id": "V0FORGED"},
        ]
        for container in elsewhere:
            payload = copy.deepcopy(genuine)
            payload["container"] = container
            payload["actions"][0]["action_ts"] = f"{container}"  # a distinct click, not a redelivery
            assert (await slack.deliver(payload))[0] == 200
        await slack.wait_until(lambda: len(slack.ephemerals) == len(elsewhere))
        assert all("did not come from the message" in e["text"] for e in slack.ephemerals)
        await still_pending(h, first["id"])
        assert len(await refusals(h, first["id"])) == len(elsewhere)

        # A genuine reason modal for the first request, with its metadata pointed at the second.
        await slack.click(message, ACTION_REJECT, ALICE)
        await slack.wait_until(lambda: len(slack.views) == 1)
        [modal] = slack.views
        forged = {**modal, "private_metadata": modal["private_metadata"].replace(first["id"], second["id"])}
        assert forged["private_metadata"] != modal["private_metadata"]
        assert (await slack.submit(forged, ALICE, "redirected"))[0] == 200
        await slack.wait_until(lambda: len(slack.ephemerals) == len(elsewhere) + 1)
        assert "not one Countersign opened" in slack.ephemerals[-1]["text"]
        await still_pending(h, second["id"])
        [refused] = await refusals(h, second["id"])
        assert refused.actor == f"slack:{ALICE.id}"

        # A modal the gateway never opened, carrying metadata copied from a genuine one.
        stranger = {**modal, "id": "V0NEVEROPENED", "callback_id": REJECT_CALLBACK}
        assert (await slack.submit(stranger, ALICE, "copied"))[0] == 200
        await slack.wait_until(lambda: len(slack.ephemerals) == len(elsewhere) + 2)
        await still_pending(h, first["id"])

        # The real modal, from where it was opened, still works.
        assert await slack.submit(modal, ALICE, "stale order") == (200, None)
        await slack.wait_until(lambda: message.buttons() == {})
        assert (await h.service.get(first["id"])).decision_reason == "stale order"
        await h.api(ALICE_TOKEN).post(f"/api/approvals/{second['id']}/reject", json={"reason": "done"})
