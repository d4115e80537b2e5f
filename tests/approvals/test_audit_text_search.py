"""The audit history's text search through its trigram index (revision 0016): the same answers as a plain scan.

Every search here is checked against the rule the page documents, computed in Python over the events
themselves: a literal, case-insensitive substring of the arguments or the message.
"""

from __future__ import annotations

import json
from functools import partial

import anyio
from alembic import command
from sqlalchemy import text

from approvals import migrations
from approvals.approvers import ApproverDirectory
from approvals.audit import Event
from approvals.audit_index import AuditTextIndexer, index_batch
from approvals.db import Database
from approvals.service import ApprovalService
from tests.fixtures.revision_one import expected_rows, load_into

MESSAGES = [
    "forwarded",
    'said "no" twice',
    "rejected by bob: 100% wrong_account",
    "café crème for ÉLISE",
    "x AND y OR NEAR(z) -w * ^col: {a b}",
    "ab",
]
ARGUMENTS = [
    None,
    json.dumps({"symbol": "AAPL", "qty": 100}),
    json.dumps({"symbol": "MSFT", "note": 'it\'s "quoted"'}),
    '{"pct":"50_50","path":"C:\\\\tmp"}',
    json.dumps({"name": "Zoë", "city": "Zürich"}, ensure_ascii=False),
]
SEARCHES = [
    "aapl",
    "AAPL",
    "msft",
    '"no"',
    '"quoted\\"',
    "it's",
    "100%",
    "50_50",
    "5_5",
    "wrong_acc",
    "w_ong",
    "café",
    "Zürich",
    "Zoë",
    "ÉLISE",
    # Case is ignored beyond ASCII too (on SQLite from three characters: shorter text folds ASCII only).
    "élise",
    "ZÜRICH",
    "AND y OR",
    "NEAR(z)",
    "* ^col:",
    "{a b}",
    "ab",
    "b",
    "rd",
    "orward",
    "C:\\\\tmp",
    "nothing like this",
    "symbol",
    '"""',
    ")))",
    "   ",
]


def matches(search: str, event: Event) -> bool:
    needle = search.lower()
    return needle in (event.arguments or "").lower() or needle in event.message.lower()


def events() -> list[Event]:
    made = []
    for n in range(60):
        made.append(
            Event(
                kind="call.allowed",
                outcome="allowed",
                message=MESSAGES[n % len(MESSAGES)],
                agent="alpha" if n % 4 else "bravo",
                tool="ibkr_get_open_orders",
                arguments=ARGUMENTS[n % len(ARGUMENTS)],
            )
        )
    return made


async def test_text_search_finds_exactly_the_events_that_contain_the_text(database_url: str) -> None:
    """Just appended (not indexed yet), half indexed, wholly indexed: the same answers (SQLite; see audit_index)."""
    db = Database(database_url)
    await db.create_schema()
    service = ApprovalService(db, ApproverDirectory([]))
    recorded = events()
    try:
        for event in recorded:
            await service.record(event)
        await _search_everything(service, recorded)
        # The index up to event 25: pages, counts and bounds straddle what it holds and what it does not.
        if db.is_sqlite:
            assert await db.run_statements(partial(index_batch, batch=25)) == 25
            await _search_everything(service, recorded)
        assert await AuditTextIndexer(db).catch_up() == (35 if db.is_sqlite else 0)
        await _search_everything(service, recorded)
        assert await AuditTextIndexer(db).catch_up() == 0
        # An event no longer in the history is no longer found.
        async with db.write() as conn:
            await conn.execute(text("DELETE FROM audit_event WHERE seq = 2"))
        found = await service.history.search_events(text="aapl", limit=100)
        assert 2 not in {e.seq for e in found} and found
    finally:
        await db.dispose()


async def _search_everything(service: ApprovalService, recorded: list[Event]) -> None:
    for search in SEARCHES:
        expected = [seq for seq, event in enumerate(recorded, start=1) if matches(search, event)]
        found = await service.history.search_events(text=search, limit=100)
        assert sorted(e.seq for e in found) == expected, search
        assert await service.history.count_events(text=search) == len(expected), search
        assert await service.history.count_events(text=search, cap=3) == min(3, len(expected)), search
        # Paged newest first by sequence number both ways, as without a search.
        newest = sorted(expected, reverse=True)
        page = await service.history.search_events(text=search, limit=3)
        assert [e.seq for e in page] == newest[:3], search
        if len(newest) > 4:
            older = await service.history.search_events(text=search, before_seq=newest[2], limit=2)
            assert [e.seq for e in older] == newest[3:5], search
            newer = await service.history.search_events(text=search, after_seq=newest[4], limit=2)
            assert [e.seq for e in newer] == newest[2:4], search
        # With the other filters: an agent, a range of sequence numbers.
        bravo = [seq for seq in expected if recorded[seq - 1].agent == "bravo"]
        found = await service.history.search_events(text=search, agent="bravo", limit=100)
        assert sorted(e.seq for e in found) == bravo, search
        assert await service.history.count_events(text=search, agent="bravo") == len(bravo), search
        inside = [seq for seq in expected if 10 <= seq <= 40]
        assert await service.history.count_events(text=search, seq_from=10, seq_to=40) == len(inside), search
        found = await service.history.search_events(text=search, seq_from=10, seq_to=40, limit=100)
        assert sorted(e.seq for e in found) == inside, search


async def _migrate(db: Database, revision: str, *, down: bool = False, stamp: bool = False) -> None:
    async with db.schema_transaction() as conn:
        step = command.stamp if stamp else command.downgrade if down else command.upgrade
        await conn.run_sync(lambda sync: step(migrations.config(sync), revision))


async def test_the_index_covers_events_written_before_it_and_undoes_cleanly(database_url: str) -> None:
    """Upgrading indexes the events already there; downgrading drops the index; upgrading again rebuilds it."""
    await load_into(database_url)
    stored = expected_rows()["audit_event"]
    db = Database(database_url)
    service = ApprovalService(db, ApproverDirectory([]))

    async def seqs(search: str) -> list[int]:
        return sorted(e.seq for e in await service.history.search_events(text=search, limit=1000))

    def expected(search: str) -> list[int]:
        needle = search.lower()
        return sorted(
            int(r["seq"])
            for r in stored
            if needle in str(r["arguments"] or "").lower() or needle in str(r["message"]).lower()
        )

    try:
        # The database the 0.1.0 gateway left (revision one, unstamped), brought to the revision before the index.
        await _migrate(db, migrations.REVISION_ONE, stamp=True)
        await _migrate(db, "0015")
        await _migrate(db, "0016")
        await _migrate(db, migrations.head())
        searches = ["forward", "FORWARDED", "order", "bob", "ibkr", "zzz-not-there"]
        assert any(expected(s) for s in searches)
        for search in searches:
            assert await seqs(search) == expected(search), search

        await _migrate(db, "0015", down=True)
        async with db.read() as conn:
            if db.is_sqlite:
                leftover = "SELECT count(*) FROM sqlite_master WHERE name LIKE 'audit_event_text%'"
            else:
                leftover = "SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%_trgm'"
            assert (await conn.execute(text(leftover))).scalar_one() == 0
        # Written while the index was away, then found once it is back.
        await service.record(Event(kind="call.allowed", outcome="allowed", message="written at 0015 BETWEEN"))
        await _migrate(db, migrations.head())
        assert await service.history.count_events(text="at 0015 betw") == 1
        for search in searches:
            assert await seqs(search) == expected(search), search
        if db.is_sqlite:
            # Appended at the head and not indexed yet; going back to 0017 (index kept by triggers) indexes it.
            await service.record(Event(kind="call.allowed", outcome="allowed", message="written at 0018 AFTER"))
            await _migrate(db, "0017", down=True)
            async with db.read() as conn:
                query = text("SELECT count(*) FROM audit_event_text WHERE audit_event_text MATCH '\"0018 after\"'")
                assert (await conn.execute(query)).scalar_one() == 1
            await _migrate(db, migrations.head())
            assert await service.history.count_events(text="at 0018 aft") == 1
            async with db.read() as conn:
                marked = "SELECT (SELECT upto FROM audit_event_text_mark) = (SELECT max(seq) FROM audit_event)"
                assert (await conn.execute(text(marked))).scalar_one() == 1
    finally:
        await db.dispose()


async def test_two_processes_on_one_file_index_each_event_once(sqlite_url: str) -> None:
    first, second = Database(sqlite_url), Database(sqlite_url)
    await first.create_schema()
    service = ApprovalService(first, ApproverDirectory([]))
    try:
        for n in range(30):
            await service.record(Event(kind="call.allowed", outcome="allowed", message=f"shared file {n}"))
        indexers = [AuditTextIndexer(first, batch=7), AuditTextIndexer(second, batch=7)]
        async with anyio.create_task_group() as tg:
            for indexer in indexers:
                tg.start_soon(indexer.catch_up)
        assert sum(indexer.indexed for indexer in indexers) == 30
        async with second.read() as conn:
            query = "SELECT count(*) FROM audit_event_text WHERE audit_event_text MATCH '\"shared file\"'"
            assert (await conn.execute(text(query))).scalar_one() == 30
        assert await ApprovalService(second, ApproverDirectory([])).history.count_events(text="SHARED FILE") == 30
    finally:
        await first.dispose()
        await second.dispose()


def filtered_events() -> list[Event]:
    """Events that vary in every field the page filters by, two of three mentioning the searched word."""
    made = []
    for n in range(90):
        made.append(
            Event(
                kind="request.approved" if n % 3 == 0 else "call.allowed",
                outcome=("approved", "allowed", "denied")[n % 3],
                message=("cancel order", "Cancelled", "forwarded")[n % 5 % 3],
                agent=("alpha", "bravo")[n % 2],
                tool=("ibkr_cancel_order", "ibkr_get_positions", None)[n % 7 % 3],
                actor="bob" if n % 3 == 0 and n % 4 == 0 else None,
                request_id=f"apr_{n % 6}",
                arguments=json.dumps({"n": n, "note": "CANCEL" if n % 11 == 0 else "keep"}),
            )
        )
    return made


async def test_a_search_with_equality_filters_finds_exactly_the_events_that_meet_them_all(database_url: str) -> None:
    """A word with any of tool, agent, outcome, approver, request (looked up in their own indexes on SQLite)."""
    db = Database(database_url)
    await db.create_schema()
    service = ApprovalService(db, ApproverDirectory([]))
    recorded = filtered_events()
    combinations: list[dict[str, str]] = [
        {"outcome": "approved"},
        {"outcome": "denied", "agent": "bravo"},
        {"tool": "ibkr_cancel_order"},
        {"actor": "bob"},
        {"request_id": "apr_3", "outcome": "approved"},
        {"tool": "ibkr_get_positions", "agent": "alpha", "outcome": "allowed"},
        {"outcome": "no such outcome"},
    ]
    try:
        for event in recorded:
            await service.record(event)
        for indexed in (False, True):
            if indexed:
                await AuditTextIndexer(db).catch_up()
            for search in ("cancel", "CANCEL", "led"):
                for given in combinations:
                    expected = [
                        seq
                        for seq, event in enumerate(recorded, start=1)
                        if matches(search, event) and all(getattr(event, k) == v for k, v in given.items())
                    ]
                    label = f"{search} {given} indexed={indexed}"
                    found = await service.history.search_events(text=search, limit=200, **given)  # type: ignore[arg-type]
                    assert [e.seq for e in found] == sorted(expected, reverse=True), label
                    assert await service.history.count_events(text=search, **given) == len(expected), label  # type: ignore[arg-type]
                    # Paged by sequence number, pages neither overlap nor skip.
                    paged: list[int] = []
                    before: int | None = None
                    while page := await service.history.search_events(
                        text=search,
                        before_seq=before,
                        limit=4,
                        **given,  # type: ignore[arg-type]
                    ):
                        paged += [e.seq for e in page]
                        before = page[-1].seq
                    assert paged == sorted(expected, reverse=True), label
                    inside = [seq for seq in expected if 20 <= seq <= 60]
                    bounded = await service.history.count_events(text=search, seq_from=20, seq_to=60, **given)  # type: ignore[arg-type]
                    assert bounded == len(inside), label
    finally:
        await db.dispose()
