"""The reads a park makes before and while it writes: `find_repeat` and the agent's pending count.

Fills a database (SQLite file or PostgreSQL) with N approval requests by bulk SQL through the product's
own schema (the revisions), then times the reads a new held call makes: `RequestReads.find_repeat` for a
call that has no request yet (the common case: the read finds nothing) and for one that has, and
`pending_of` for an agent with many pending requests. Prints the query plans the database chooses.

    .venv/bin/python bench/bench_repeat_reads.py --requests 100000 [--postgres postgresql://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, insert, text

from approvals.db import Database
from approvals.feed import ChangeFeed
from approvals.models import ApprovalRequest
from approvals.reads import RequestReads, pending_of
from approvals.service import open_key

_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]
_AGENTS = 20
_ENDED = ("executed", "rejected", "expired", "cancelled", "failed")


class _Reads(RequestReads):
    def __init__(self, db: Database) -> None:
        self.db = db
        self.feed = ChangeFeed(db)


def _digest(i: int) -> str:
    return hashlib.sha256(f"call-{i}".encode()).hexdigest()


def _row(i: int, now: datetime) -> dict[str, Any]:
    agent = f"agent-{i % _AGENTS}"
    # One agent in ten rows is still waiting; the rest ended at some point over the last day.
    status = "pending" if i % 10 == 0 else _ENDED[i % len(_ENDED)]
    changed = now - timedelta(seconds=(i * 7) % 86_400)
    digest = _digest(i)
    return {
        "id": f"req-{i:08d}",
        "upstream": "up",
        "tool": f"tool_{i % 7}",
        "upstream_tool": f"tool_{i % 7}",
        "arguments": "{}",
        "arguments_sha256": digest,
        "agent": agent,
        "rule": "r",
        "reason": "bench",
        "approvers": "[]",
        "quorum": 1,
        "channels": '["web"]',
        "timeout_seconds": 3600.0,
        "created_at": changed,
        "expires_at": changed + timedelta(hours=1),
        "status": status,
        "status_changed_at": changed,
        "open_key": open_key(agent, f"tool_{i % 7}", digest) if status == "pending" else None,
        "original_sha256": _digest(-i) if i % 50 == 1 else None,
    }


async def _fill(db: Database, n: int) -> None:
    now = datetime.now(UTC)
    for start in range(0, n, 5000):
        async with db.write() as conn:
            await conn.execute(insert(_requests), [_row(i, now) for i in range(start, min(n, start + 5000))])
    async with db.write() as conn:
        await conn.execute(text("ANALYZE"))


async def _time(label: str, runs: int, call: Any) -> None:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    print(f"  {label:<34} p50 {statistics.median(samples):8.0f} us   p95 {samples[int(len(samples) * 0.95)]:8.0f} us")


async def _plans(db: Database, reads: _Reads, since: datetime) -> None:
    """The plans of the statements the reads actually send, captured as they go to the driver."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    await reads.find_repeat("agent-3", "tool_3", _digest(3), ended_since=since)
    async with db.read() as conn:
        await pending_of(conn, "agent-3")
    event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    explain = "EXPLAIN QUERY PLAN " if db.is_sqlite else "EXPLAIN "
    async with db.read() as conn:
        raw = await conn.get_raw_connection()
        for statement, parameters in seen:
            print("  " + " ".join(statement.split())[:160] + " ...")
            if db.is_sqlite:
                rows = await raw.driver_connection.execute(explain + statement, parameters)
                for r in await rows.fetchall():
                    print("    " + str(r[-1]))
            else:
                for r in await raw.driver_connection.fetch(explain + statement, *parameters):
                    print("    " + str(r[0]))


async def run(url: str, n: int, runs: int) -> None:
    db = Database(url)
    await db.create_schema()
    await _fill(db, n)
    reads = _Reads(db)
    since = datetime.now(UTC) - timedelta(seconds=3600)
    print(f"{'sqlite' if db.is_sqlite else 'postgresql'}, {n} requests ({_AGENTS} agents, {n // 10} pending)")
    fresh = [(f"agent-{i % _AGENTS}", f"tool_{i % 7}", uuid.uuid4().hex) for i in range(runs)]
    it = iter(fresh)
    await _time("find_repeat, a new call", runs, lambda: reads.find_repeat(*next(it), ended_since=since))
    ended = [i for i in range(1, n, 10)][:runs]
    it2 = iter(ended)

    def repeat() -> Any:
        i = next(it2)
        return reads.find_repeat(f"agent-{i % _AGENTS}", f"tool_{i % 7}", _digest(i), ended_since=since)

    await _time("find_repeat, an ended call", min(runs, len(ended)), repeat)
    opened = iter(range(0, n, 10))

    def open_one() -> Any:
        i = next(opened)
        return reads.find_repeat(f"agent-{i % _AGENTS}", f"tool_{i % 7}", _digest(i), ended_since=since)

    await _time("find_repeat, an open call", min(runs, n // 10), open_one)

    async def count() -> None:
        async with db.read() as conn:
            await pending_of(conn, f"agent-{random.randrange(_AGENTS)}")

    await _time("pending count of one agent", runs, count)
    await _plans(db, reads, since)
    await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL database to fill (its schema is replaced)")
    args = parser.parse_args()
    if args.postgres:
        asyncio.run(run(args.postgres, args.requests, args.runs))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run(f"sqlite:///{tmp}/bench.db", args.requests, args.runs))


if __name__ == "__main__":
    main()
