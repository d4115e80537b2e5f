"""A standing approval made in the web inbox with a real browser, then revoked on the grants page."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.gateway.test_grants_http import ACCOUNT, NO_REPEATS, SUMMARY, granting_policy
from tests.harness import held_call, running_gateway
from tests.web.browser import PageWatch, chromium, new_page, overflows, require_browser, screenshot, sign_in
from tests.web.support import PASSWORDS, text_of, web_config

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def _browser() -> None:
    require_browser()


async def test_approving_with_a_grant_in_the_inbox_lets_the_same_call_through_until_it_is_revoked(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with (
        running_gateway(tmp_path, sqlite_url, policy=granting_policy(), config=web_config(), server=NO_REPEATS) as h,
        chromium(tmp_path) as browser,
    ):
        page = await new_page(browser, h.base_url)
        watch = PageWatch(page)
        await sign_in(page, "alice", PASSWORDS["alice"])
        async with held_call(h, SUMMARY, ACCOUNT) as (request, box):
            card = page.locator(f"#req-{request['id']}")
            await card.wait_for()
            note = await card.locator(".grant-note").inner_text()
            assert "The policy allows up to 15m and 5 calls, for the same arguments" in note
            minutes = card.get_by_label("Approve, and allow the same call for")
            assert await minutes.input_value() == "15"
            await minutes.fill("10")
            await screenshot(page, "inbox-grant")
            await card.get_by_role("button", name="Approve and allow").click()
            notice = card.locator(".notice")
            await notice.wait_for()
            assert "The same call is allowed until" in await notice.inner_text()
            assert "5 times" in await notice.inner_text()
        assert not box["result"].is_error, text_of(box["result"])

        async with h.agent() as agent:
            with anyio.fail_after(15):
                again = await agent.call_tool(SUMMARY, ACCOUNT)
            assert not again.is_error and not text_of(again).startswith("[APPROVAL"), text_of(again)

        await page.get_by_role("link", name="Standing approvals").click()
        await page.wait_for_url("**/grants")
        [grant] = (await h.api().get("/api/grants")).json()["grants"]
        row = page.locator(f"#grant-{grant['id']}")
        assert "1 of 5" in await row.locator(".uses").inner_text()
        assert "live" in await row.locator(".grant-state").inner_text()
        assert await overflows(page) == []
        await screenshot(page, "grants")
        await row.get_by_role("button", name="Revoke").click()
        await row.get_by_text("Revoked: the next matching call is held again.").wait_for()
        assert "revoked" in await row.locator(".grant-state").inner_text()

        async with held_call(h, SUMMARY, ACCOUNT) as (held, box):
            await h.api().post(f"/api/approvals/{held['id']}/reject", json={"reason": "revoked"})
        assert text_of(box["result"]).startswith("[APPROVAL REJECTED]")
        assert watch.errors == [] and watch.dialogs == []
