"""The audit history: the service's filtered, keyset-paged queries (SQLite and PostgreSQL) and the page over HTTP."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from approvals.approvers import ApproverDirectory
from approvals.audit import Event
from approvals.db import Database
from approvals.service import ApprovalService
from tests.harness import running_gateway
from tests.web.support import browser_client, sign_in, web_config

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves: one minute per event, so times are known exactly."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def history() -> Iterator[Event]:
    for n in range(30):
        yield Event(
            kind="call.allowed",
            outcome="allowed",
            message="forwarded",
            agent="alpha" if n % 2 else "bravo",
            tool="ibkr_get_open_orders",
            arguments=json.dumps({"n": n, "symbol": "AAPL" if n % 3 == 0 else "MSFT"}),
        )
    yield Event(kind="call.denied", outcome="denied", message="hidden", agent="alpha", tool="ibkr_global_cancel")
    yield Event(
        kind="request.rejected",
        outcome="rejected",
        message="rejected by bob: 100% wrong_account",
        agent="alpha",
        tool="ibkr_cancel_order",
        request_id="apr_1",
        actor="bob",
        channel="web",
        detail={"reason": "100% wrong_account"},
    )
    yield Event(
        kind="call.allowed",
        outcome="allowed",
        message="forwarded",
        agent="alpha",
        tool="ibkr_preview_order",
        arguments='{"note":"=HYPERLINK(\\"http://evil\\")","pct":"50_50"}',
    )


async def recorded(url: str) -> ApprovalService:
    db = Database(url)
    await db.create_schema()
    clock = Clock()
    service = ApprovalService(db, ApproverDirectory([]), clock=clock)
    for event in history():
        await service.record(event)
        clock.now += timedelta(minutes=1)
    return service


async def test_events_filter_by_each_field_and_page_by_sequence_number(database_url: str) -> None:
    service = await recorded(database_url)
    try:
        newest = await service.history.search_events(limit=5)
        assert [e.seq for e in newest] == [33, 32, 31, 30, 29]
        older = await service.history.search_events(before_seq=29, limit=5)
        assert [e.seq for e in older] == [28, 27, 26, 25, 24]
        newer = await service.history.search_events(after_seq=28, limit=5)
        assert [e.seq for e in newer] == [33, 32, 31, 30, 29]
        assert [e.seq for e in await service.history.search_events(after_seq=20, limit=3)] == [23, 22, 21]

        assert len(await service.history.search_events(agent="bravo", limit=100)) == 15
        assert [e.seq for e in await service.history.search_events(tool="ibkr_global_cancel")] == [31]
        assert [e.actor for e in await service.history.search_events(actor="bob")] == ["bob"]
        assert [e.seq for e in await service.history.search_events(outcome="rejected", request_id="apr_1")] == [32]
        window = await service.history.search_events(since=T0 + timedelta(minutes=10), until=T0 + timedelta(minutes=13))
        assert [e.seq for e in window] == [13, 12, 11]
        assert await service.history.count_events(agent="alpha") == 18
        assert await service.history.count_events(cap=10) == 10
    finally:
        await service.db.dispose()


async def test_text_search_is_a_literal_case_insensitive_substring_of_arguments_and_messages(
    database_url: str,
) -> None:
    service = await recorded(database_url)
    try:
        assert await service.history.count_events(text="aapl") == 10
        assert await service.history.count_events(text='"n": 7,') == 1
        # % and _ are the user's characters, not wildcards.
        assert [e.seq for e in await service.history.search_events(text="100%")] == [32]
        assert [e.seq for e in await service.history.search_events(text="50_50")] == [33]
        assert await service.history.count_events(text="50%50") == 0
        assert await service.history.count_events(text="wrong_acc") == 1
        assert await service.history.count_events(text="w_ong") == 0
        facets = await service.history.event_facets()
        assert facets["outcome"] == ["allowed", "denied", "rejected"]
        assert facets["actor"] == ["bob"]
    finally:
        await service.db.dispose()


async def test_the_audit_page_filters_pages_and_exports_the_current_filter(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        for n in range(120):
            await h.service.record(
                Event(
                    kind="call.allowed",
                    outcome="allowed",
                    message="forwarded",
                    agent="alpha",
                    tool="t",
                    arguments=str(n),
                )
            )
        page = await web.get("/audit")
        rows = re.findall(r'<tr id="event-(\d+)">', page.text)
        assert len(rows) == 50 and rows[0] == "120"
        assert "120 matching events" in page.text
        older = re.search(r'href="(/audit\?before=\d+)" rel="next"', page.text)
        assert older and 'rel="prev"' not in page.text
        second = await web.get(older.group(1).replace("&amp;", "&"))
        assert re.findall(r'<tr id="event-(\d+)">', second.text)[0] == "70"
        newer = re.search(r'href="(/audit\?after=\d+)" rel="prev"', second.text)
        assert newer
        back = await web.get(newer.group(1))
        assert re.findall(r'<tr id="event-(\d+)">', back.text) == rows

        filtered = await web.get("/audit", params={"q": "11", "agent": "alpha"})
        matching = [str(n + 1) for n in reversed(range(120)) if "11" in str(n)]
        assert re.findall(r'<tr id="event-(\d+)">', filtered.text) == matching
        assert 'href="/audit/export.csv?agent=alpha&amp;q=11"' in filtered.text

        exported = await web.get("/audit/export.csv", params={"q": "11", "agent": "alpha"})
        assert exported.headers["content-disposition"].startswith('attachment; filename="countersign-audit-')
        records = list(csv.DictReader(io.StringIO(exported.text)))
        assert [r["seq"] for r in records] == matching
        assert records[-1]["arguments"] == "11" and records[-1]["hash"]
        # Three characters or more are looked up in the text index (SQLite); the page, its count and the
        # export answer as they do for shorter text.
        indexed = await web.get("/audit", params={"q": "RWARD"})
        assert re.findall(r'<tr id="event-(\d+)">', indexed.text) == [str(n) for n in range(120, 70, -1)]
        assert "120 matching events" in indexed.text
        exported = await web.get("/audit/export.csv", params={"q": "rward", "agent": "alpha"})
        assert [r["seq"] for r in csv.DictReader(io.StringIO(exported.text))] == [str(n) for n in range(120, 0, -1)]
        everything = await web.get("/audit/export.json")
        document = json.loads(everything.text)
        assert len(document["events"]) == 120 and document["exported_by"] == "alice"
        assert [e["seq"] for e in document["events"]][:3] == [120, 119, 118]

        bad = await web.get("/audit", params={"since": "last tuesday"})
        assert bad.status_code == 400 and "not a date or time" in bad.text
        empty = await web.get("/audit", params={"tool": "nothing-like-this"})
        assert "No events match these filters." in empty.text


async def test_a_text_search_counts_its_matches_to_a_thousand(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        events = [
            Event(kind="call.allowed", outcome="allowed", message=f"needle {n}", agent="alpha") for n in range(1001)
        ]
        for start in range(0, len(events), 100):
            await h.gateway.db.append_events([(e, datetime.now(UTC)) for e in events[start : start + 100]])
        searched = await web.get("/audit", params={"q": "NEEDLE"})
        assert "More than 1,000 matching events" in searched.text
        assert len(re.findall(r'<tr id="event-(\d+)">', searched.text)) == 50
        assert "1,001 matching events" in (await web.get("/audit")).text
        one = await web.get("/audit", params={"q": "needle 1000"})
        assert 'id="result-count">1 matching event</p>' in one.text


async def test_an_exported_cell_that_looks_like_a_formula_is_defused(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        await h.service.record(Event(kind="call.allowed", outcome="allowed", message="=1+2", agent="alpha"))
        [record] = list(csv.DictReader(io.StringIO((await web.get("/audit/export.csv")).text)))
        assert record["message"] == "'=1+2"
        [event] = json.loads((await web.get("/audit/export.json")).text)["events"]
        assert event["message"] == "=1+2", "the JSON export is exact"


async def test_the_chain_status_shows_intact_and_then_where_it_was_broken(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        for n in range(3):
            await h.service.record(Event(kind="call.allowed", outcome="allowed", message=f"call {n}", agent="alpha"))
        intact = await web.get("/audit/chain", headers={"HX-Request": "true"})
        assert "Chain intact" in intact.text and "3 events verified" in intact.text
        async with h.gateway.db.write() as conn:
            await conn.execute(text("UPDATE audit_event SET message = 'nothing happened' WHERE seq = 2"))
        cached = await web.get("/audit/chain")
        assert "Chain intact" in cached.text, "the last verification is reused for a minute"
        broken = await web.get("/audit/chain", params={"fresh": "1"})
        assert "Chain broken" in broken.text and "event #2" in broken.text and "altered" in broken.text


async def test_a_text_search_finds_events_as_soon_as_they_are_recorded_and_after_a_restart(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The search index is brought up to date beside the gateway; a search never waits for it nor misses an event."""

    def found(page: str) -> list[str]:
        return re.findall(r'<tr id="event-(\d+)">', page)

    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        for n in range(3):
            appended = [(Event(kind="call.allowed", outcome="allowed", message=f"Signal {n}"), datetime.now(UTC))]
            [seq] = await h.gateway.db.append_events(appended)
            # At once, whether or not the index has it yet.
            assert found((await web.get("/audit", params={"q": f"signal {n}"})).text) == [str(seq)]
        # Whatever the indexer beside it has done meanwhile, the index now holds every event.
        await h.gateway.audit_index.catch_up()
        async with h.gateway.db.read() as conn:
            assert (await conn.execute(text("SELECT upto FROM audit_event_text_mark"))).scalar_one() == seq
        searched = await web.get("/audit", params={"q": "SIGNAL"})
        assert len(found(searched.text)) == 3 and "3 matching events" in searched.text
        await h.service.record(Event(kind="call.denied", outcome="denied", message="signal after", agent="alpha"))
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        searched = await web.get("/audit", params={"q": "signal"})
        assert len(found(searched.text)) == 4 and "4 matching events" in searched.text
        alpha = await web.get("/audit", params={"q": "signal af", "agent": "alpha"})
        assert len(found(alpha.text)) == 1


async def test_the_count_beside_a_page_is_exact_on_every_page_of_a_filter(tmp_path: Path, sqlite_url: str) -> None:
    """A first page that holds every match is its own count; later pages count the filter as a whole."""
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        events = [
            Event(kind="call.allowed", outcome="allowed", message=f"order {n}", agent="many" if n % 2 else "few")
            for n in range(130)
        ]
        await h.gateway.db.append_events([(e, datetime.now(UTC)) for e in events])
        few = await web.get("/audit", params={"agent": "few", "q": "order 1"})
        expected = [n for n in range(130) if n % 2 == 0 and "order 1" in f"order {n}"]
        assert len(re.findall(r'<tr id="event-(\d+)">', few.text)) == len(expected) < 50
        assert f'id="result-count">{len(expected)} matching events</p>' in few.text
        seen: list[str] = []
        page = await web.get("/audit", params={"agent": "many"})
        while True:
            assert 'id="result-count">65 matching events</p>' in page.text
            seen += re.findall(r'<tr id="event-(\d+)">', page.text)
            older = re.search(r'href="(/audit\?[^"]+)" rel="next"', page.text)
            if older is None:
                break
            page = await web.get(older.group(1).replace("&amp;", "&"))
        newest = int(seen[0])
        assert seen == [str(seq) for seq in range(newest, newest - 130, -2)], "newest first, none twice or skipped"
