"""The audit page's "Search older" in a real browser (Chromium via Playwright): a narrowed search that
stopped at its window goes on from there when clicked, and PostgreSQL's count arrives after the page."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import running_gateway
from tests.web.browser import chromium, new_page, require_browser, sign_in
from tests.web.support import PASSWORDS, web_config
from tests.web.test_audit_window import recorded

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def _browser() -> None:
    require_browser()


async def test_clicking_search_older_goes_on_until_the_matches_are_found(tmp_path: Path, database_url: str) -> None:
    async with running_gateway(tmp_path, database_url, config=web_config()) as h, chromium(tmp_path) as browser:
        await recorded(h)
        page = await new_page(browser, h.base_url)
        await sign_in(page, "alice", PASSWORDS["alice"])
        await page.goto("/audit?q=needle&outcome=approved")
        assert "No match so far" in await page.locator("#searched-to").inner_text()
        rows = page.locator("table.events tbody tr")
        clicks = 0
        while await rows.count() == 0:
            await page.get_by_role("link", name="Search older").click()
            await page.wait_for_load_state()
            clicks += 1
            assert clicks < 20
        assert clicks >= 1 and "needle 251" in await rows.first.inner_text()

        # A search whose page is full: on PostgreSQL its count is loaded after the page, in place.
        await page.goto("/audit?q=needle&agent=alpha")
        await page.locator("#result-count").get_by_text("matching events").wait_for()
        assert "Counting" not in await page.locator("#result-count").inner_text()
