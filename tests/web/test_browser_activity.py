"""The audit page's activity chart in a real browser (Debian's Chromium, Playwright's async API).

A week of history is recorded first (with a clock the test sets), then the gateway serves it and a
real agent adds calls of its own, so the chart shows both a pattern and what just happened.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from approvals.activity import SERIES
from approvals.approvers import Approver, ApproverDirectory
from approvals.audit import Event
from approvals.db import Database
from approvals.service import ApprovalService
from tests.audit_key import SHARED_AUDIT_KEY
from tests.factories import held_cancel
from tests.harness import held_call, running_gateway
from tests.web.browser import (
    LAPTOP,
    PHONE,
    PageWatch,
    chromium,
    new_page,
    overflows,
    require_browser,
    screenshot,
    sign_in,
)
from tests.web.support import PASSWORDS, web_config

pytestmark = pytest.mark.browser

ALICE = Approver("alice", groups=("traders",))


@pytest.fixture(autouse=True)
def _browser() -> None:
    require_browser()


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def a_week_of_history(url: str) -> Counter[tuple[str, str]]:
    """Calls and approvals over the past week, busier by day; returns how many of each (agent, outcome)."""
    db = Database(url, audit_key=SHARED_AUDIT_KEY.encode())
    await db.create_schema()
    clock = Clock(datetime.now(UTC))
    service = ApprovalService(db, ApproverDirectory([]), clock=clock)
    rng = random.Random(15)
    counted: Counter[tuple[str, str]] = Counter()
    order = 5000
    try:
        for slot in range(52, 0, -1):
            clock.now = datetime.now(UTC) - timedelta(hours=3 * slot, minutes=rng.randrange(0, 150))
            busy = 8 <= clock.now.hour < 20
            agent = rng.choice(["alpha", "bravo"])
            for _ in range(rng.randint(3, 12) if busy else rng.randint(0, 3)):
                await service.record(Event(kind="call.allowed", outcome="allowed", message="forwarded", agent=agent))
                counted[agent, "allowed"] += 1
            for outcome, chance in (("denied", 0.35), ("limited", 0.2)):
                if rng.random() < chance:
                    await service.record(Event(kind=f"call.{outcome}", outcome=outcome, message=outcome, agent=agent))
                    counted[agent, outcome] += 1
            if busy and rng.random() < 0.5:
                order += 1
                request = await service.create(held_cancel(agent=agent, arguments={"orderId": order, "confirm": True}))
                counted[agent, "held"] += 1
                clock.now += timedelta(minutes=rng.randrange(1, 10))
                fate = rng.random()
                if fate < 0.6:
                    await service.approve(request.id, ALICE, "web")
                    await service.begin_execution(request.id, request.arguments_sha256)
                    await service.finish_execution(request.id, ok=True, result={}, error=None, summary="cancelled")
                    counted[agent, "approved"] += 1
                elif fate < 0.85:
                    await service.reject(request.id, ALICE, "web", "keep it")
                    counted[agent, "rejected"] += 1
                else:
                    clock.now += timedelta(minutes=20)
                    assert await service.expire(request.id)
                    counted[agent, "expired"] += 1
    finally:
        await db.dispose()
    return counted


def per_outcome(counted: Counter[tuple[str, str]], agent: str | None = None) -> dict[str, int]:
    totals = {outcome: 0 for outcome in SERIES}
    for (who, outcome), n in counted.items():
        if agent in (None, who):
            totals[outcome] += n
    return totals


async def legend(page: object) -> dict[str, int]:
    from playwright.async_api import Page

    assert isinstance(page, Page)
    items = page.locator("#activity .activity-legend li")
    found: dict[str, int] = {}
    for i in range(await items.count()):
        item = items.nth(i)
        outcome = await item.get_attribute("data-outcome")
        assert outcome is not None
        found[outcome] = int((await item.locator(".legend-total").inner_text()).replace(",", ""))
    return found


async def test_the_activity_chart_shows_a_week_by_outcome_follows_the_filters_and_fits_a_phone(
    tmp_path: Path, sqlite_url: str
) -> None:
    counted = await a_week_of_history(sqlite_url)
    config = {**web_config(), "audit": {"key": SHARED_AUDIT_KEY}}
    async with running_gateway(tmp_path, sqlite_url, config=config) as h, chromium(tmp_path) as browser:
        # What an agent does now: 3 allowed calls, 1 denied, 1 held and approved (the gateway looks up the
        # order first, under its own name: one more allowed call).
        async with h.agent() as agent:
            for _ in range(3):
                assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error
            assert (await agent.call_tool("ibkr_global_cancel", {"confirm": True})).is_error
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (request, box):
            await h.api().post(f"/api/approvals/{request['id']}/approve", json={"reason": "flat by close"})
        assert not box["result"].is_error
        for outcome, n in (("allowed", 3), ("denied", 1), ("held", 1), ("approved", 1)):
            counted["alpha", outcome] += n
        counted["countersign", "allowed"] += 1

        for viewport, suffix in ((LAPTOP, ""), (PHONE, "-phone")):
            page = await new_page(browser, h.base_url, viewport=viewport)
            watch = PageWatch(page)
            await sign_in(page, "alice", PASSWORDS["alice"])
            await page.goto("/audit")
            await page.locator("#activity .activity-legend").wait_for()
            assert await legend(page) == per_outcome(counted)
            chart = page.locator("#activity svg.activity-chart")
            assert await chart.get_attribute("role") == "img"
            assert "calls and decisions" in (await chart.locator("title").first.text_content() or "")
            # One hover title per bar that has anything in it, naming its period and counts.
            bar_titles = await chart.locator("g.bar > title").all_text_contents()
            assert len(bar_titles) > 10 and all(" UTC: " in t for t in bar_titles)
            assert "one bar per 3 hours" in await page.locator("#activity-range").inner_text()
            assert await overflows(page) == [], f"the audit page at {viewport['width']} px"
            await page.locator("#activity").evaluate("el => el.scrollIntoView({block: 'start'})")
            await screenshot(page, f"audit-activity{suffix}")

            # The table says what the bars show: its cells add up to the legend.
            await page.locator("#activity summary").click()
            cells = page.locator("#activity table.counts td")
            table: Counter[str] = Counter()
            for i in range(await cells.count()):
                cell = cells.nth(i)
                table[await cell.get_attribute("data-outcome") or ""] += int(await cell.inner_text())
            assert {o: table[o] for o in SERIES} == per_outcome(counted)
            assert await overflows(page) == [], f"the open table at {viewport['width']} px"
            assert watch.errors == [] and watch.dialogs == []

        # Filtering the page filters the chart; a legend entry narrows it to that outcome.
        await page.get_by_label("Agent").fill("bravo")
        await page.get_by_role("button", name="Filter").click()
        await page.wait_for_url(re.compile(r".*agent=bravo.*"))
        await page.locator("#activity .activity-legend").wait_for()
        assert await legend(page) == per_outcome(counted, "bravo")
        bravo = per_outcome(counted, "bravo")
        outcome = next(o for o in ("rejected", "expired", "denied") if bravo[o])
        await page.locator("#activity .activity-legend").get_by_role("link", name=outcome, exact=True).click()
        await page.wait_for_url(re.compile(rf".*agent=bravo&outcome={outcome}.*"))
        await page.locator("#activity .activity-legend").wait_for()
        assert await legend(page) == {outcome: bravo[outcome]}
        assert await page.locator("table.events tbody tr").count() == bravo[outcome]
