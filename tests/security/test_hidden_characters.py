"""Invisible and bidi characters in arguments are shown marked to approvers, in Slack and on the web."""

from __future__ import annotations

from pathlib import Path

from tests.harness import ALICE_TOKEN, held_call
from tests.security.support import PLACE, gateway_with_slack, message_for
from tests.web.support import browser_client, sign_in


async def test_hidden_and_bidi_characters_are_marked_in_slack_and_on_the_web(tmp_path: Path, sqlite_url: str) -> None:
    hidden = {**PLACE, "contract": {**PLACE["contract"], "symbol": "AAPL\u202eLLUB"}}
    hidden["order"] = {**PLACE["order"], "orderRef": "ref\u200b1\u2066x\U000e0041"}
    marks = {"\u202e": "⟨U+202E⟩", "\u200b": "⟨U+200B⟩", "\u2066": "⟨U+2066⟩", "\U000e0041": "⟨U+E0041⟩"}
    async with (
        gateway_with_slack(tmp_path, sqlite_url) as (h, slack),
        browser_client(h.base_url) as web,
        held_call(h, "ibkr_place_order", hidden) as (request, _),
    ):
        message = await message_for(slack, request["id"])
        [arguments] = [t for t in message.block_text().split("\n*") if t.startswith("Arguments")]
        await sign_in(web, "alice")
        for char, mark in marks.items():
            assert mark in arguments and char not in arguments, mark
        for path in (f"/approvals/{request['id']}", "/inbox", "/audit"):
            page = (await web.get(path)).text
            for char, mark in marks.items():
                assert mark in page and char not in page, (path, mark)
        assert (await h.service.get(request["id"])).arguments == hidden, "what is stored and forwarded is unchanged"
        await h.api(ALICE_TOKEN).post(f"/api/approvals/{request['id']}/reject", json={"reason": "hidden text"})
