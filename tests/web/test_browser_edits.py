"""Approving with changes in a real browser: the card's fields for the editable arguments, a refusal
shown on the card, then the changed order placed at the paper broker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.test_edited_approvals import ORDER, editable_policy, placed
from tests.harness import held_call, running_gateway
from tests.web.browser import chromium, new_page, overflows, require_browser, screenshot, sign_in
from tests.web.support import PASSWORDS, text_of, web_config

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def _browser() -> None:
    require_browser()


async def test_an_approver_changes_the_quantity_on_the_card_and_the_broker_gets_the_changed_order(
    tmp_path: Path, sqlite_url: str
) -> None:
    policy = editable_policy(escalate={"after": "10m", "approvers": ["group:ops"]})
    async with (
        running_gateway(tmp_path, sqlite_url, policy=policy, config=web_config()) as h,
        chromium(tmp_path) as browser,
    ):
        page = await new_page(browser, h.base_url)
        await sign_in(page, "alice", PASSWORDS["alice"])
        async with held_call(h, "ibkr_place_order", ORDER) as (request, box):
            card = page.locator(f"#req-{request['id']}")
            await card.wait_for()
            quantity = card.get_by_label("order.totalQuantity")
            assert await quantity.input_value() == "500"
            assert "Escalates at" in await card.locator(".facts").inner_text()
            assert await overflows(page) == []
            await screenshot(page, "inbox-edit-card", full_page=True)

            await quantity.fill("5000")
            await card.get_by_role("button", name="Approve").click()
            await card.get_by_text("Orders above 1000 shares are not allowed.").wait_for()
            await card.get_by_label("order.totalQuantity").fill("50")
            await card.get_by_role("button", name="Approve").click()
            await card.locator(".result-summary").wait_for()
            assert "Approved with changes: order.totalQuantity 500 → 50" in await card.inner_text()
        result = box["result"]
        assert not result.is_error, text_of(result)
        assert "order.totalQuantity 500 → 50" in text_of(result)
        assert ("BUY", 50, 150) in placed(h)
