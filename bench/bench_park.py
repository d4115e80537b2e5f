"""The park's own work, without HTTP: N held calls asking at once, each a repeat read and then a new request.

What a held call does in the service layer before it waits (`gateway.calls`): `find_repeat` for its call
(the common case: nothing found), then `ApprovalService.create` (the request's row and its
`request.created` event, committed). N of them start at once on one event loop, as a burst of held
calls does in the gateway. Prints the process's CPU per park (the event loop and the database driver's
thread: `time.process_time`), the wall time and the number of write transactions the parks took.

    .venv/bin/python bench/bench_park.py [--parks 1000] [--rounds 3] [--database-url postgresql://...]

With `--database-url` (a server and an administrator's database) a fresh database (`cs_bench_<random>`, as
`bench_gateway.py` makes them) is created on that server for each round and dropped after it; without it, a
SQLite file in a temporary directory (on disk, so commits pay for `fsync`). `--profile FILE` writes a cProfile
of the last round.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import anyio
from bench_gateway import create_pg_database, drop_pg_database

from approvals.approvers import ApproverDirectory
from approvals.audit import canonical_json
from approvals.db import Database
from approvals.service import ApprovalService, arguments_digest
from approvals.views import NewRequest

REPEAT_WINDOW = timedelta(seconds=60)


def new_request(n: int) -> NewRequest:
    return NewRequest(
        upstream="paper",
        tool="ibkr_cancel_order",
        upstream_tool="ibkr_cancel_order",
        arguments={"orderId": 100_000 + n, "confirm": True},
        agent="bench",
        rule='tools["ibkr_cancel_order"].require_approval[0]',
        reason="Cancelling a live order needs a human.",
        timeout_seconds=7200,
        approvers=("group:traders",),
        title=f"Cancel order {100_000 + n}",
    )


@asynccontextmanager
async def database(admin_url: str | None) -> AsyncIterator[str]:
    if admin_url is None:
        with tempfile.TemporaryDirectory() as workdir:
            yield f"sqlite+aiosqlite:///{Path(workdir) / 'park.db'}"
        return
    name, url = await create_pg_database(admin_url)
    try:
        yield url
    finally:
        await drop_pg_database(admin_url, name)


async def one_round(admin_url: str | None, parks: int, profile: cProfile.Profile | None) -> tuple[float, float, int]:
    async with database(admin_url) as url:
        db = Database(url)
        try:
            await db.create_schema()
            service = ApprovalService(db, ApproverDirectory([]))
            # Warm: the statements compiled, the pool's connections opened.
            await service.create(new_request(-1), max_pending=parks + 1)
            requests = [new_request(n) for n in range(parks)]
            service.parks.sizes.clear()
            gc.collect()

            async def park(new: NewRequest) -> None:
                digest = arguments_digest(canonical_json(dict(new.arguments)))
                since = service.clock() - REPEAT_WINDOW
                earlier = await service.find_repeat(new.agent, new.tool, digest, ended_since=since)
                assert earlier is None
                await service.create(new, max_pending=parks + 1)

            if profile is not None:
                profile.enable()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            async with anyio.create_task_group() as tg:
                for new in requests:
                    tg.start_soon(park, new)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            if profile is not None:
                profile.disable()
            return cpu, wall, sum(service.parks.sizes.values())
        finally:
            await db.dispose()


async def main(args: argparse.Namespace) -> None:
    backend = "PostgreSQL" if args.database_url else "SQLite (file)"
    print(f"{args.parks} parks at once, {backend}, {args.rounds} round(s)")
    per_park = []
    for n in range(args.rounds):
        profile = cProfile.Profile() if args.profile and n == args.rounds - 1 else None
        cpu, wall, transactions = await one_round(args.database_url, args.parks, profile)
        per_park.append(cpu * 1000 / args.parks)
        print(
            f"  round {n + 1}: CPU {cpu * 1000 / args.parks:.3f} ms per park, {wall:.2f} s wall "
            f"({args.parks / wall:.0f} parks/s), {transactions} write transactions"
        )
        if profile is not None:
            profile.dump_stats(args.profile)
    print(f"  median CPU per park {statistics.median(per_park):.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default=None, help="PostgreSQL server and admin database")
    parser.add_argument("--profile", default=None, help="write a cProfile of the last round here")
    asyncio.run(main(parser.parse_args()))
