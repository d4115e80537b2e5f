"""The decision's database work alone, in one process: approve, start and record, N requests, C at a time.

No HTTP, no agent, no upstream: an `ApprovalService` on a fresh database (SQLite in a temporary
directory, or `cs_bench_<random>` created beside `--database-url` and dropped at the end), its
change feed running, and a waiter per request that starts it with its approval (as a held call
of the gateway does). Each decision is the approve (decision, start, audit, one group commit
shared with the decisions beside it) and then the recorded result (`finish_execution`). Prints
the process's CPU per decision and the decisions per second, which is what the gateway's
`bench_gateway.py` figures contain besides HTTP, the upstream and the agents' streams.

    .venv/bin/python bench/bench_decide.py --decisions 2000 --concurrency 20
    .venv/bin/python bench/bench_decide.py --database-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from approvals.approvers import Approver, ApproverDirectory
from approvals.audit import canonical_json
from approvals.db import Database
from approvals.execution import Start
from approvals.service import ApprovalService
from approvals.views import NewRequest, RequestView

ALICE = Approver("alice", groups=("traders",))


class Waiter:
    """Starts its request with the approval, as a held call of this process offers to."""

    def __init__(self, arguments_sha256: str) -> None:
        self.sha = arguments_sha256

    def claim(self, view: RequestView) -> Start | None:
        return Start("bench:1:0", 60.0, self.sha)

    def started(self, view: RequestView | None) -> None:
        pass


def request(order: int) -> NewRequest:
    return NewRequest(
        upstream="paper",
        tool="ibkr_cancel_order",
        upstream_tool="ibkr_cancel_order",
        arguments={"orderId": order, "confirm": True},
        agent="bench",
        rule='tools["ibkr_cancel_order"].require_approval[0]',
        reason="Cancelling a live order needs a human.",
        timeout_seconds=7200,
        approvers=("group:traders",),
    )


def driver_executed() -> Counter[str]:
    """Statements run through the driver below SQLAlchemy (approvals.driver_sql; none in versions without it)."""
    try:
        from approvals import driver_sql
    except ImportError:
        return Counter()
    return driver_sql.executed


def count_statements(db: Database) -> Counter[str]:
    """Statements through SQLAlchemy by their first word, and (SQLite) trips to the driver's thread."""
    counts: Counter[str] = Counter()

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        counts[statement.split(None, 1)[0].upper()] += 1

    for engine in {db.engine, db._write_engine}:
        event.listen(engine.sync_engine, "before_cursor_execute", seen)
    if db.is_sqlite:
        import aiosqlite.core

        original = aiosqlite.core.Connection._execute

        async def hop(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
            counts["(thread trips)"] += 1
            return await original(self, fn, *args, **kwargs)

        aiosqlite.core.Connection._execute = hop  # type: ignore[method-assign]
    return counts


def time_writes(db: Database) -> list[tuple[float, float, float, float]]:
    """Each write transaction's times (wall clock): asked for, open (chain lock held), block done, committed."""
    times: list[tuple[float, float, float, float]] = []
    write = db.write

    @asynccontextmanager
    async def timed(**how: Any) -> AsyncIterator[Any]:
        asked = time.perf_counter()
        async with write(**how) as conn:
            opened = time.perf_counter()
            yield conn
            done = time.perf_counter()
        times.append((asked, opened, done, time.perf_counter()))

    db.write = timed  # type: ignore[method-assign]
    db.groups._open_write = timed
    return times


async def run(url: str, decisions: int, concurrency: int, profile: str = "") -> None:
    db = Database(url)
    await db.create_schema()
    counts = count_statements(db)
    writes = time_writes(db)
    service = ApprovalService(db, ApproverDirectory([ALICE]))
    result = {"content": [{"type": "text", "text": "cancelled"}], "structuredContent": {"orderId": 1}}
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.feed.run)
            ids = []
            for order in range(decisions):
                view = await service.create(request(order))
                sha = hashlib.sha256(canonical_json(view.arguments).encode()).hexdigest()
                service.starts.add(view.id, Waiter(sha))
                ids.append(view.id)
            await anyio.sleep(0.5)
            limiter = anyio.Semaphore(concurrency)

            async def decide(request_id: str) -> None:
                async with limiter:
                    await service.approve(request_id, ALICE, "api")
                    await service.finish_execution(request_id, ok=True, result=result, error=None, summary="ok")

            profiler = cProfile.Profile() if profile else None
            counts.clear()
            driver_executed().clear()
            writes.clear()
            times0, wall0 = os.times(), time.perf_counter()
            if profiler is not None:
                profiler.enable()
            async with anyio.create_task_group() as decide_all:
                for request_id in ids:
                    decide_all.start_soon(decide, request_id)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(profile)
            times, wall = os.times(), time.perf_counter() - wall0
            user, system = times.user - times0.user, times.system - times0.system
            counts.update({f"{verb} (driver)": n for verb, n in driver_executed().items()})
            per = ", ".join(f"{n / decisions:.1f} {verb}" for verb, n in counts.most_common())
            statements = sum(n for verb, n in counts.items() if not verb.startswith("("))
            executed = await service.list_requests(limit=decisions + 1)
            done = sum(1 for v in executed if v.status.value == "executed")
            print(
                f"{decisions} decisions ({done} executed), {concurrency} at a time: {decisions / wall:.0f}/s, "
                f"CPU {(user + system) * 1000 / decisions:.2f} ms per decision ({user * 1000 / decisions:.2f} user, "
                f"{system * 1000 / decisions:.2f} system; approve + start + result, this process)"
            )
            print(f"per decision: {statements / decisions:.1f} statements: {per}")
            opening, blocks, committing = (sum(w[i + 1] - w[i] for w in writes) for i in range(3))
            print(
                f"write transactions: {len(writes)}, holding the chain lock {(blocks + committing) / wall:.0%} of the "
                f"wall time; per decision {opening * 1000 / decisions:.2f} ms opening (connection, BEGIN, lock), "
                f"{blocks * 1000 / decisions:.2f} ms in the blocks, {committing * 1000 / decisions:.2f} ms committing"
            )
            tg.cancel_scope.cancel()
    finally:
        await db.dispose()


async def main(args: argparse.Namespace) -> None:
    if not args.database_url:
        with tempfile.TemporaryDirectory() as tmp:
            await run(f"sqlite:///{tmp}/countersign.db", args.decisions, args.concurrency, args.profile)
        return
    import asyncpg

    name = f"cs_bench_{secrets.token_hex(5)}"
    admin = await asyncpg.connect(args.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        url = f"{args.database_url.rsplit('/', 1)[0]}/{name}"
        await run(url, args.decisions, args.concurrency, args.profile)
    finally:
        admin = await asyncpg.connect(args.database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--database-url", default="", help="a PostgreSQL server to create a scratch database on")
    parser.add_argument("--profile", default="", help="write a cProfile of the decisions (not the set-up) here")
    anyio.run(main, parser.parse_args())
