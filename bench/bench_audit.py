"""Benchmark the audit history page at 100,000+ events.

Fills a fresh database through the real append path (`approvals.audit.append`, hash chain and
all) with a realistic mix of calls and approval flows, then times what `/audit` runs for each
filter (the page of 50, the match count, the filter menus), deep keyset pages, a full filtered
export and a full chain verification. Prints one line per query: median and worst of 5 runs.

Run from the repository root:
    .venv/bin/python bench/bench_audit.py [--events 100000] [--database-url URL]
Without --database-url it uses a SQLite file in a temporary directory. A database given by URL is
emptied first (its tables are dropped and recreated) unless --reuse is given and it already holds
the events, which makes trying another index a matter of seconds.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from sqlmodel import SQLModel

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from approvals import audit  # noqa: E402  (needs the repository root on sys.path)
from approvals.approvers import ApproverDirectory  # noqa: E402
from approvals.audit import Event, canonical_json  # noqa: E402
from approvals.db import Database  # noqa: E402
from approvals.service import ApprovalService  # noqa: E402

AGENTS = ["research-bot", "rebalancer", "hedger", "scanner", "desk-assistant"]
APPROVERS = ["alice", "bob", "dana", "eve"]
READS = ["ibkr_get_open_orders", "ibkr_get_portfolio", "ibkr_get_account_summary", "ibkr_get_market_data_snapshot"]
SYMBOLS = ["AAPL", "MSFT", "TSLA", "SPY", "NVDA", "AMZN", "META", "GOOG"]
START = datetime(2025, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=30)
RARE_ORDER = 987_654_321
BATCH = 2000
BENCH_KEY = b"bench-audit-key-0123456789abcdef0123456789"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def flows(total: int, rng: random.Random) -> list[Event]:
    """A month of gateway traffic: mostly reads, some refusals, and held cancels with their whole story."""
    return list(itertools.islice(traffic(rng), total))


def traffic(rng: random.Random) -> Iterator[Event]:
    """The events of `flows`, one at a time and without end (a million need not be held at once)."""
    request_no = 0
    while True:
        events: list[Event] = []
        agent = rng.choice(AGENTS)
        roll = rng.random()
        if roll < 0.70:
            tool = rng.choice(READS)
            args = canonical_json({"account": "DU1000001", "symbol": rng.choice(SYMBOLS)})
            events.append(
                Event(
                    kind="call.allowed",
                    outcome="allowed",
                    message="forwarded",
                    agent=agent,
                    tool=tool,
                    upstream="ibkr",
                    arguments=args,
                    detail={"rule": f'tools["{tool}"]'},
                )
            )
        elif roll < 0.80:
            args = canonical_json({"confirm": True})
            events.append(
                Event(
                    kind="call.hidden",
                    outcome="denied",
                    message="ibkr_global_cancel is not available",
                    agent=agent,
                    tool="ibkr_global_cancel",
                    upstream="ibkr",
                    arguments=args,
                )
            )
        elif roll < 0.85:
            args = canonical_json({"contract": {"symbol": rng.choice(SYMBOLS)}, "order": {"totalQuantity": 10}})
            events.append(
                Event(
                    kind="call.limited",
                    outcome="limited",
                    message="10 calls per minute",
                    agent=agent,
                    tool="ibkr_preview_order",
                    upstream="ibkr",
                    arguments=args,
                )
            )
        else:
            request_no += 1
            request_id = f"apr_bench{request_no:07d}"
            order_id = RARE_ORDER if request_no == 777 else rng.randrange(1000, 99_999)
            args = canonical_json({"orderId": order_id, "confirm": True})
            common: dict[str, Any] = {
                "agent": agent,
                "tool": "ibkr_cancel_order",
                "upstream": "ibkr",
                "request_id": request_id,
            }
            events.append(
                Event(kind="request.created", outcome="held", message="held for approval", arguments=args, **common)
            )
            approver = rng.choice(APPROVERS)
            fate = rng.random()
            if fate < 0.75:
                events.append(
                    Event(
                        kind="request.approved",
                        outcome="approved",
                        message=f"approved by {approver}",
                        actor=approver,
                        channel="web",
                        **common,
                    )
                )
                events.append(Event(kind="request.executing", outcome="executing", message="forwarding", **common))
                ok = rng.random() < 0.95
                events.append(
                    Event(
                        kind=f"request.{'executed' if ok else 'failed'}",
                        outcome="executed" if ok else "failed",
                        message="Cancelled" if ok else "order already filled",
                        **common,
                    )
                )
            elif fate < 0.90:
                events.append(
                    Event(
                        kind="request.rejected",
                        outcome="rejected",
                        message=f"rejected by {approver}: protects a position",
                        actor=approver,
                        channel=rng.choice(["web", "slack"]),
                        detail={"reason": "protects a position"},
                        **common,
                    )
                )
            elif fate < 0.97:
                events.append(
                    Event(kind="request.expired", outcome="expired", message="no decision within 15m", **common)
                )
            else:
                events.append(
                    Event(kind="request.cancelled", outcome="cancelled", message="the agent went away", **common)
                )
        yield from events


async def fill(db: Database, total: int, seed: int) -> None:
    events = flows(total, random.Random(seed))
    step = SPAN / total
    started = time.perf_counter()
    for offset in range(0, total, BATCH):
        async with db.write() as conn:
            for i, event in enumerate(events[offset : offset + BATCH], start=offset):
                await audit.append(conn, event, START + step * i)
        if (offset // BATCH) % 10 == 9:
            log(f"  {offset + BATCH:,} events appended")
    log(f"filled {total:,} events in {time.perf_counter() - started:.1f}s")


async def timed(label: str, run: Callable[[], Awaitable[Any]], results: list[tuple[str, float, float, str]]) -> None:
    durations = []
    outcome: Any = None
    for _ in range(5):
        t0 = time.perf_counter()
        outcome = await run()
        durations.append((time.perf_counter() - t0) * 1000)
    if isinstance(outcome, list):
        note = f"{len(outcome)} rows"
    elif isinstance(outcome, dict):
        note = ", ".join(f"{len(v)} {k}s" for k, v in outcome.items())
    else:
        note = str(outcome)
    results.append((label, statistics.median(durations), max(durations), note))


async def measure(service: ApprovalService, total: int) -> list[tuple[str, float, float, str]]:
    results: list[tuple[str, float, float, str]] = []
    middle = START + SPAN / 2
    day = {"since": middle, "until": middle + timedelta(days=1)}
    filters: list[tuple[str, dict[str, Any]]] = [
        ("no filter", {}),
        ("tool=ibkr_cancel_order", {"tool": "ibkr_cancel_order"}),
        ("agent=hedger", {"agent": "hedger"}),
        ("outcome=rejected", {"outcome": "rejected"}),
        ("outcome=failed (rare)", {"outcome": "failed"}),
        ("approver=alice", {"actor": "alice"}),
        ("one day in the middle", day),
        ("text 'AAPL'", {"text": "AAPL"}),
        (f"text '{RARE_ORDER}' (one match)", {"text": str(RARE_ORDER)}),
        ("tool+outcome+day", {"tool": "ibkr_cancel_order", "outcome": "approved", **day}),
        ("request id", {"request_id": "apr_bench0000777"}),
    ]
    for label, f in filters:
        await timed(f"page of 50: {label}", lambda f=f: service.history.search_events(**f, limit=51), results)
        await timed(f"count:      {label}", lambda f=f: service.history.count_events(**f, cap=100_001), results)
    await timed("filter menus (distinct tool/agent/outcome/actor)", service.history.event_facets, results)
    await timed(
        "page of 50 from the middle (keyset)",
        lambda: service.history.search_events(before_seq=total // 2, limit=51),
        results,
    )
    await timed(
        "page of 50 from the oldest end (keyset)",
        lambda: service.history.search_events(before_seq=60, limit=51),
        results,
    )
    await timed(
        "page of 50: approver=alice, deep (keyset)",
        lambda: service.history.search_events(actor="alice", before_seq=total // 4, limit=51),
        results,
    )

    async def export(**f: Any) -> int:
        rows, before = 0, None
        while True:
            batch = await service.history.search_events(**f, before_seq=before, limit=1000)
            if not batch:
                return rows
            rows += len(batch)
            before = batch[-1].seq

    t0 = time.perf_counter()
    exported = await export(tool="ibkr_cancel_order")
    results.append(
        ("export: tool=ibkr_cancel_order (batches of 1000)", (time.perf_counter() - t0) * 1000, 0.0, f"{exported} rows")
    )
    t0 = time.perf_counter()
    exported = await export()
    results.append(("export: everything (batches of 1000)", (time.perf_counter() - t0) * 1000, 0.0, f"{exported} rows"))
    t0 = time.perf_counter()
    # The chain alone: the synthetic events name requests that have no rows, which `audit verify` would report.
    async with service.db.read() as conn:
        report = await audit.verify(conn, service.db.audit_key)
    results.append(("verify the whole chain", (time.perf_counter() - t0) * 1000, 0.0, report.describe()[:40]))
    return results


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="cs-bench-audit-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'audit.db'}"
        # Keyed as a gateway's chain is: every append pays for its HMAC.
        db = Database(url, audit_key=BENCH_KEY)
        try:
            await db.create_schema()
            async with db.read() as conn:
                present = await audit.count(conn)
            kind = "SQLite file" if db.is_sqlite else "PostgreSQL"
            if args.reuse and present >= args.events:
                log(f"database: {kind}; reusing its {present:,} events")
            else:
                async with db.write() as conn:
                    await conn.run_sync(SQLModel.metadata.drop_all)
                    # With the revision record gone too, create_schema builds the tables afresh.
                    await conn.exec_driver_sql("DROP TABLE alembic_version")
                await db.create_schema()
                log(f"database: {kind}; appending {args.events:,} events")
                await fill(db, args.events, args.seed)
            service = ApprovalService(db, ApproverDirectory([]))
            results = await measure(service, args.events)
        finally:
            await db.dispose()
    width = max(len(r[0]) for r in results)
    print(f"\naudit history with {args.events:,} events ({'SQLite' if db.is_sqlite else 'PostgreSQL'})")
    print(f"{'query'.ljust(width)}  {'median ms':>10}  {'max ms':>8}  result")
    for label, median, worst, note in results:
        worst_text = f"{worst:8.1f}" if worst else "       —"
        print(f"{label.ljust(width)}  {median:10.1f}  {worst_text}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--database-url", help="default: a temporary SQLite file")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--reuse", action="store_true", help="measure a database that already holds the events")
    anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
