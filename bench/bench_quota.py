"""The quota reservations of a burst of held calls, without HTTP: N calls taking their slots at once, then parking them.

What a held call does with its quota on PostgreSQL (`gateway.shared_quotas`): `take` (one slot per bucket of
its limits, decided under the buckets' advisory locks) and, once its request is stored, `park` (the slots
left with the request). N of them start at once on one event loop, as a burst of held calls does in the
gateway. Prints the process's CPU per call (the event loop and the driver: `time.process_time`), the wall
time, and how many slots were taken (every one must be: the limit is set above N) and parked.

    .venv/bin/python bench/bench_quota.py --database-url postgresql://postgres@127.0.0.1:5432/test \
        [--calls 1000] [--rounds 3] [--profile FILE]

A fresh database (`cs_bench_<random>`) is created on that server for each round and dropped after it.
`--spread S` makes the calls arrive evenly over S seconds instead of all at once (a burst through HTTP arrives
spread, and reservations then share smaller groups). `--max` sets the limits' max (default: above N, so every
call passes); below N the refusals are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import statistics
import time
from typing import Any

import anyio
from bench_gateway import create_pg_database, drop_pg_database
from sqlalchemy import event, func, select

from approvals import driver_sql
from approvals.db import Database
from approvals.models import QuotaSlot
from gateway.policy import Limit
from gateway.ratelimit import RateLimiter, Refusal
from gateway.shared_quotas import SharedQuotas


def limits(maximum: int) -> list[Limit]:
    # As a held call of the demo policy: the all-tools counter per agent and the tool's own.
    return [
        Limit(counter="all", window="minute", max=maximum, scope="grant", where="all_tools"),
        Limit(counter="cancel_rate", window="hour", max=maximum, scope="grant", where="tools"),
    ]


async def one_round(
    admin_url: str, calls: int, maximum: int, spread: float, profile: cProfile.Profile | None
) -> tuple[float, ...]:
    name, url = await create_pg_database(admin_url)
    db = Database(url)
    try:
        await db.create_schema()
        limiter = RateLimiter(store=SharedQuotas(db))
        wanted = limits(maximum)
        # Warm: the statements compiled and prepared, the pool's connections opened.
        warm = await limiter.reserve("ibkr_cancel_order", wanted, grant="warm", session="s")
        assert not isinstance(warm, Refusal)
        await warm.release()
        gc.collect()
        refused = 0
        statements = _count_statements(db)
        transactions = _count_transactions(db)

        async def call(n: int) -> None:
            nonlocal refused
            if spread:
                await anyio.sleep(n * spread / calls)
            taken = await limiter.reserve("ibkr_cancel_order", wanted, grant="bench", session=f"s{n % 40}")
            if isinstance(taken, Refusal):
                refused += 1
                return
            await taken.park(f"request-{n}")

        if profile is not None:
            profile.enable()
        driver_sql.executed.clear()
        statements[0] = transactions[0] = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for n in range(calls):
                tg.start_soon(call, n)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        if profile is not None:
            profile.disable()
        async with db.read() as conn:
            slots = QuotaSlot.__table__  # type: ignore[attr-defined]
            stored = (await conn.execute(select(func.count()).select_from(slots))).scalar_one()
            parked = (
                await conn.execute(select(func.count()).select_from(slots).where(slots.c.request_id.is_not(None)))
            ).scalar_one()
        driver = sum(driver_sql.executed.values())
        return (
            cpu,
            wall,
            float(refused),
            float(stored),
            float(parked),
            float(transactions[0]),
            float(statements[0] + driver),
        )
    finally:
        await db.dispose()
        await drop_pg_database(admin_url, name)


def _count_statements(db: Database) -> list[int]:
    """Statements SQLAlchemy runs on `db`'s engines (those run through the driver are counted by `driver_sql`)."""
    count = [0]

    def seen(*_: object) -> None:
        count[0] += 1

    for engine in {db.engine, db._write_engine}:
        event.listen(engine.sync_engine, "before_cursor_execute", seen)
    return count


def _count_transactions(db: Database) -> list[int]:
    """Write transactions opened on `db` (each a BEGIN and a COMMIT or ROLLBACK)."""
    count = [0]
    opened = db.transaction

    def counted() -> Any:
        count[0] += 1
        return opened()

    db.transaction = counted  # type: ignore[method-assign]
    return count


async def main(args: argparse.Namespace) -> None:
    maximum = args.max or args.calls + 10
    arriving = f"over {args.spread:g} s" if args.spread else "at once"
    print(f"{args.calls} held calls reserving {arriving}, limits of {maximum}, PostgreSQL, {args.rounds} round(s)")
    per_call = []
    for n in range(args.rounds):
        profile = cProfile.Profile(time.thread_time) if args.profile and n == args.rounds - 1 else None
        cpu, wall, refused, stored, parked, transactions, statements = await one_round(
            args.database_url, args.calls, maximum, args.spread, profile
        )
        per_call.append(cpu * 1000 / args.calls)
        print(
            f"  round {n + 1}: CPU {cpu * 1000 / args.calls:.3f} ms per call, {wall:.2f} s wall "
            f"({args.calls / wall:.0f} calls/s); refused {refused:.0f}, slots {stored:.0f}, parked {parked:.0f}; "
            f"{transactions:.0f} transactions, {statements:.0f} statements"
        )
        if profile is not None:
            profile.dump_stats(args.profile)
    print(f"  median CPU per call {statistics.median(per_call):.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max", type=int, default=0)
    parser.add_argument("--spread", type=float, default=0.0, help="calls arrive evenly over this many seconds")
    parser.add_argument("--database-url", required=True, help="PostgreSQL server and admin database")
    parser.add_argument("--profile", default=None, help="write a cProfile (CPU time) of the last round here")
    asyncio.run(main(parser.parse_args()))
