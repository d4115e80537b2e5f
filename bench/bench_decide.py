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
import hashlib
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import anyio

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


async def run(url: str, decisions: int, concurrency: int) -> None:
    db = Database(url)
    await db.create_schema()
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

            times0, wall0 = os.times(), time.perf_counter()
            async with anyio.create_task_group() as decide_all:
                for request_id in ids:
                    decide_all.start_soon(decide, request_id)
            times, wall = os.times(), time.perf_counter() - wall0
            user, system = times.user - times0.user, times.system - times0.system
            executed = await service.list_requests(limit=decisions + 1)
            done = sum(1 for v in executed if v.status.value == "executed")
            print(
                f"{decisions} decisions ({done} executed), {concurrency} at a time: {decisions / wall:.0f}/s, "
                f"CPU {(user + system) * 1000 / decisions:.2f} ms per decision ({user * 1000 / decisions:.2f} user, "
                f"{system * 1000 / decisions:.2f} system; approve + start + result, this process)"
            )
            tg.cancel_scope.cancel()
    finally:
        await db.dispose()


async def main(args: argparse.Namespace) -> None:
    if not args.database_url:
        with tempfile.TemporaryDirectory() as tmp:
            await run(f"sqlite:///{tmp}/countersign.db", args.decisions, args.concurrency)
        return
    import asyncpg

    name = f"cs_bench_{secrets.token_hex(5)}"
    admin = await asyncpg.connect(args.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        await run(f"{args.database_url.rsplit('/', 1)[0]}/{name}", args.decisions, args.concurrency)
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
    anyio.run(main, parser.parse_args())
