"""The audit page's activity chart over HTTP: counts of a scripted run, under the page's filters, and its buckets."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from approvals.activity import MAX_BUCKETS, AuditActivity, Buckets
from approvals.approvers import ApproverDirectory
from approvals.audit import Event
from approvals.db import Database
from approvals.service import ApprovalService
from tests.harness import held_call, running_gateway
from tests.web.support import browser_client, sign_in, web_config

_LEGEND = re.compile(r'data-outcome="(\w+)">.*?<strong class="legend-total">([\d,]+)</strong>', re.S)
_ROW = re.compile(r'<tr data-start="([^"]+)">(.*?)</tr>', re.S)
_CELL = re.compile(r'<td class="num[^"]*" data-outcome="(\w+)"[^>]*>(\d+)</td>')


def totals(fragment: str) -> dict[str, int]:
    """The legend's totals, outcomes with none left out."""
    return {outcome: int(n.replace(",", "")) for outcome, n in _LEGEND.findall(fragment) if n != "0"}


def table(fragment: str) -> dict[str, dict[str, int]]:
    """The table's rows: bucket start -> the outcomes counted in it (zeros left out)."""
    return {start: {o: int(n) for o, n in _CELL.findall(cells) if n != "0"} for start, cells in _ROW.findall(fragment)}


async def test_the_activity_counts_a_scripted_run_by_outcome_and_follows_the_page_filters(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        async with h.agent() as agent:
            for _ in range(3):
                assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error
            assert (await agent.call_tool("ibkr_global_cancel", {"confirm": True})).is_error
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (request, box):
            await h.api().post(f"/api/approvals/{request['id']}/approve", json={"reason": "flat by close"})
        assert not box["result"].is_error
        await sign_in(web, "alice")

        page = await web.get("/audit", params={"agent": "alpha"})
        assert 'hx-get="/audit/activity?agent=alpha"' in page.text, "the page asks for the activity of its own filter"

        # The agent's own calls and its request's story; executing and executed are not among the counted outcomes.
        mine = await web.get("/audit/activity", params={"agent": "alpha"})
        assert mine.status_code == 200
        assert totals(mine.text) == {"allowed": 3, "denied": 1, "held": 1, "approved": 1}
        assert "6 calls and decisions" in mine.text
        # All within the last minutes: the default week in 3-hour bars puts them in one or two rows.
        rows = table(mine.text)
        assert sum(sum(row.values()) for row in rows.values()) == 6
        assert "one bar per 3 hours" in mine.text

        # Unfiltered, the gateway's own look-up of the order before holding the cancel is an allowed call too.
        everything = await web.get("/audit/activity")
        assert totals(everything.text) == {"allowed": 4, "denied": 1, "held": 1, "approved": 1}
        held = await web.get("/audit/activity", params={"tool": "ibkr_cancel_order"})
        assert totals(held.text) == {"held": 1, "approved": 1}
        denied = await web.get("/audit/activity", params={"outcome": "denied"})
        assert totals(denied.text) == {"denied": 1}
        assert 'data-outcome="allowed"' not in denied.text, "only the filtered outcome is drawn"
        found = await web.get("/audit/activity", params={"q": "1001"})
        assert totals(found.text) == {"held": 1}

        # A time range before the run has nothing; an outcome the chart does not count says so.
        earlier = await web.get("/audit/activity", params={"since": "2025-01-01", "until": "2025-01-31"})
        assert earlier.status_code == 200 and 'id="activity-empty"' in earlier.text
        assert "one bar per day" in earlier.text
        executed = await web.get("/audit/activity", params={"outcome": "executed"})
        assert "counts calls and decisions" in executed.text and "legend-total" not in executed.text
        backwards = await web.get("/audit/activity", params={"since": "2025-02-01", "until": "2025-01-01"})
        assert "The time range is empty" in backwards.text

        bad = await web.get("/audit/activity", params={"since": "yesterday"})
        assert bad.status_code == 400 and "since" in bad.text

        # The legend narrows the page to one outcome, keeping the other filters.
        assert 'href="/audit?agent=alpha&amp;outcome=denied"' in mine.text

        signed_out = await browser_client(h.base_url).get("/audit/activity")
        assert signed_out.status_code in (302, 303, 401)


T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


async def test_buckets_follow_the_time_range_and_each_event_lands_in_the_bucket_of_its_time(
    database_url: str,
) -> None:
    db = Database(database_url)
    await db.create_schema()
    now = T0
    service = ApprovalService(db, ApproverDirectory([]), clock=lambda: now)
    try:
        # Two allowed calls at 12:00 and 12:20, a denial at 13:05, a held call and its expiry at 14:59 and 15:00.
        for minutes, outcome in ((0, "allowed"), (20, "allowed"), (65, "denied"), (179, "held"), (180, "expired")):
            now = T0 + timedelta(minutes=minutes)
            await service.record(
                Event(kind=f"call.{outcome}", outcome=outcome, message="m order", agent="alpha", tool="t")
            )
        activity = await AuditActivity(db).count(start=T0, end=T0 + timedelta(hours=4))
        assert activity.buckets.width == timedelta(minutes=5) and activity.buckets.count == 48
        assert activity.counts["allowed"][0] == 1 and activity.counts["allowed"][4] == 1
        assert activity.counts["denied"][13] == 1
        assert activity.counts["held"][35] == 1 and activity.counts["expired"][36] == 1
        assert activity.totals() == {
            "allowed": 2,
            "denied": 1,
            "limited": 0,
            "held": 1,
            "approved": 0,
            "rejected": 0,
            "expired": 1,
        }

        # A day's range in half hours; the last event sits exactly on the range's end, which is excluded.
        day = await AuditActivity(db).count(start=T0 - timedelta(hours=21), end=T0 + timedelta(hours=3))
        assert day.buckets.width == timedelta(minutes=30)
        assert day.totals()["expired"] == 0 and day.total == 4
        assert day.counts["allowed"][42] == 2, "12:00 and 12:20 share the half hour that starts at noon"
        narrowed = await AuditActivity(db).count(start=T0, end=T0 + timedelta(hours=4), agent="bravo")
        assert narrowed.total == 0
        # The search (an OR of arguments and message) holds together with every other condition of each count.
        found = await AuditActivity(db).count(start=T0, end=T0 + timedelta(hours=4), text="M")
        assert found.total == 5 and found.counts["denied"][13] == 1
        theirs = await AuditActivity(db).count(start=T0, end=T0 + timedelta(hours=4), text="M", agent="bravo")
        assert theirs.total == 0
        # Three characters or more: on SQLite the trigram index finds the matches; the counts are the same.
        indexed = await AuditActivity(db).count(start=T0, end=T0 + timedelta(hours=4), text="ORDER")
        assert indexed.counts == found.counts
        assert (await AuditActivity(db).count(start=T0, end=T0 + timedelta(hours=4), text="ORD", tool="t")).total == 5
        for nothing in ({"text": "ORDER", "agent": "bravo"}, {"text": "order 2"}, {"text": "'; DROP"}):
            none = await AuditActivity(db).count(start=T0, end=T0 + timedelta(hours=4), **nothing)  # type: ignore[arg-type]
            assert none.total == 0, nothing

        # By approver or request (counted by grouping the few rows their index finds): the same buckets.
        now = T0 + timedelta(minutes=100)
        await service.record(
            Event(kind="request.approved", outcome="approved", message="m", actor="bob", request_id="r1")
        )
        for narrow in ({"actor": "bob"}, {"request_id": "r1"}, {"actor": "bob", "text": "M"}):
            theirs = await AuditActivity(db).count(start=T0, end=T0 + timedelta(hours=4), **narrow)  # type: ignore[arg-type]
            assert theirs.total == 1 and theirs.counts["approved"][20] == 1, narrow
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    ("span", "width"),
    [
        (timedelta(minutes=30), timedelta(minutes=1)),
        (timedelta(hours=1), timedelta(minutes=5)),
        (timedelta(hours=24), timedelta(minutes=30)),
        (timedelta(days=7), timedelta(hours=3)),
        (timedelta(days=90), timedelta(days=7)),
        (timedelta(days=3650), timedelta(days=365)),
        (timedelta(days=2_000_000), timedelta(seconds=2_928_813_560)),
    ],
)
def test_buckets_are_the_finest_readable_width_that_keeps_the_chart_to_sixty_bars(
    span: timedelta, width: timedelta
) -> None:
    buckets = Buckets.spanning(T0, T0 + span)
    assert buckets.width == width
    assert buckets.count <= MAX_BUCKETS
    assert buckets.start <= T0 and buckets.end >= T0 + span
    assert (buckets.start - datetime(1970, 1, 1, tzinfo=UTC)) % width == timedelta(0)
