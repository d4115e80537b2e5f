"""Slack users are matched by email only within the installed workspace."""

from __future__ import annotations

from pathlib import Path

from gateway.slack.messages import ACTION_APPROVE
from tests.harness import held_call
from tests.security.support import gateway_with_slack, message_for, refusals, still_pending
from tests.slack.fake_slack import User
from tests.slack.stack import BOB

EVE = User("U0EVE", "eve", "bob@example.com", team="T0ELSEWHERE")


async def test_someone_of_another_workspace_with_an_approvers_email_is_not_that_approver(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with (
        gateway_with_slack(tmp_path, sqlite_url, users=[EVE]) as (h, slack),
        held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (request, outcome),
    ):
        message = await message_for(slack, request["id"])
        assert (await slack.click(message, ACTION_APPROVE, EVE))[0] == 200
        await slack.wait_until(lambda: bool(slack.ephemerals))
        assert "not linked to a Countersign approver" in slack.ephemerals[0]["text"]
        await still_pending(h, request["id"])
        assert [e.actor for e in await refusals(h, request["id"])] == [f"slack:{EVE.id}"]

        # Bob himself, of the installed workspace, is matched by the same email.
        await slack.click(message, ACTION_APPROVE, BOB)
    assert not outcome["result"].is_error
    assert (await h.service.get(request["id"])).decided_by == "bob"
