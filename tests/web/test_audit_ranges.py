"""Time-ranged audit pages and exports: bounded by sequence number, yet exactly the events of the range."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

from approvals.approvers import ApproverDirectory
from approvals.audit import Event
from approvals.db import Database
from approvals.service import ApprovalService
from tests.harness import running_gateway
from tests.web.support import browser_client, sign_in, web_config

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


async def test_a_time_range_finds_exactly_its_events_even_when_times_run_out_of_step_with_numbers(
    database_url: str,
) -> None:
    db = Database(database_url)
    await db.create_schema()
    now = T0
    service = ApprovalService(db, ApproverDirectory([]), clock=lambda: now)
    try:
        # Minutes after T0 of events 1..8: a replica with a slow clock wrote #4 and #7 "in the past".
        minutes = [0, 10, 20, 5, 30, 40, 15, 50]
        for n, m in enumerate(minutes, start=1):
            now = T0 + timedelta(minutes=m)
            await service.record(Event(kind="call.allowed", outcome="allowed", message=f"event {n}", tool="t"))
        window = {"since": T0 + timedelta(minutes=5), "until": T0 + timedelta(minutes=21)}
        bounded = await service.history.bounded(window)
        assert bounded is not None and (bounded["seq_from"], bounded["seq_to"]) == (2, 7)
        page = await service.history.search_events(**bounded, limit=50)
        assert [e.seq for e in page] == [7, 4, 3, 2]
        assert [e.seq for e in await service.history.search_events(**bounded, limit=2)] == [7, 4]
        assert [e.seq for e in await service.history.search_events(**bounded, before_seq=4, limit=2)] == [3, 2]
        assert await service.history.count_events(**bounded) == 4
        empty = {"since": T0 + timedelta(hours=1), "until": T0 + timedelta(hours=2)}
        assert await service.history.bounded(empty) is None
        assert await service.history.bounded({"tool": "t"}) == {"tool": "t"}, "no time range, nothing to bound"
    finally:
        await db.dispose()


async def test_a_time_ranged_export_streams_every_event_newest_first_across_batches_and_pages_stay_stable(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        newest = await h.service.history.search_events(limit=1)
        first_seq = newest[0].seq if newest else 0

        async def record(n: int) -> None:
            await h.service.record(Event(kind="call.allowed", outcome="allowed", message=f"call {n}", tool="t"))

        # More than two export batches (1,000 each), written concurrently as a busy gateway writes them.
        async with anyio.create_task_group() as tg:
            for n in range(2_300):
                tg.start_soon(record, n)
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        params = {"tool": "t", "since": today}

        export = await web.get("/audit/export.csv", params=params)
        assert export.status_code == 200
        rows = list(csv.DictReader(io.StringIO(export.text)))
        seqs = [int(r["seq"]) for r in rows]
        assert len(seqs) == 2_300 and seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 2_300
        assert min(seqs) > first_seq
        document = json.loads((await web.get("/audit/export.json", params=params)).text)
        assert [e["seq"] for e in document["events"]] == seqs

        # Walking the pages "Older" from the first while new events arrive: every event of the range once.
        seen: list[int] = []
        page = await web.get("/audit", params=params)
        while True:
            seen += [int(s) for s in re.findall(r'<tr id="event-(\d+)">', page.text)]
            await record(-1)  # a newer event must not shift the pages already being walked
            older = re.search(r'href="(/audit\?[^"]*before=\d+)" rel="next"', page.text)
            if not older:
                break
            page = await web.get(older.group(1).replace("&amp;", "&"))
        assert seen == seqs

        tomorrow = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%d")
        nothing = await web.get("/audit/export.csv", params={"since": tomorrow})
        assert nothing.text.strip().splitlines() == [",".join(csv_header(export.text))]
        assert "No events match these filters" in (await web.get("/audit", params={"since": tomorrow})).text


def csv_header(text: str) -> list[str]:
    return next(csv.reader(io.StringIO(text)))


async def test_a_range_open_at_the_end_keeps_finding_events_recorded_after_it_was_first_read(
    database_url: str,
) -> None:
    db = Database(database_url)
    await db.create_schema()
    now = T0
    service = ApprovalService(db, ApproverDirectory([]), clock=lambda: now)
    try:
        for n, m in enumerate([0, 10, 20, 30], start=1):
            now = T0 + timedelta(minutes=m)
            await service.record(Event(kind="call.allowed", outcome="allowed", message=f"event {n}", tool="t"))
        since = {"since": T0 + timedelta(minutes=10)}
        first = await service.history.bounded(since)
        assert first is not None and first["seq_from"] == 2
        assert [e.seq for e in await service.history.search_events(**first, limit=50)] == [4, 3, 2]
        # Later: one event in the range, one "in the past" from a replica with a slow clock.
        for n, m in ((5, 40), (6, 5)):
            now = T0 + timedelta(minutes=m)
            await service.record(Event(kind="call.allowed", outcome="allowed", message=f"event {n}", tool="t"))
        again = await service.history.bounded(since)
        assert again is not None
        assert [e.seq for e in await service.history.search_events(**again, limit=50)] == [5, 4, 3, 2]
        assert await service.history.count_events(**again) == 4
        assert [e.seq for e in await service.history.search_events(**again, before_seq=4, limit=1)] == [3]
        ranged = await service.history.bounded({**since, "until": T0 + timedelta(minutes=35)})
        assert ranged is not None
        assert [e.seq for e in await service.history.search_events(**ranged, limit=50)] == [4, 3, 2]
    finally:
        await db.dispose()
