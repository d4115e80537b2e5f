"""Benchmark approvals across replicas: approved on one replica, how soon has an agent held on another its result?

Run from the repository root:
    .venv/bin/python bench/bench_replicas.py [--calls N] [--database-url postgresql://postgres@127.0.0.1:5432/test]
Needs PostgreSQL and HAProxy. See bench/README.md for what the figures mean. Everything runs on
loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import anyio
import mcp_types as types

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.replicas.cluster import (  # noqa: E402  (needs the repository root on sys.path)
    HELD_TOOL,
    REPLICAS,
    Cluster,
    ClusterError,
    create_database,
    drop_database,
    haproxy_problem,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def row(label: str, seconds: Sequence[float]) -> str:
    ms = [s * 1000 for s in seconds]
    if not ms:
        return f"  {label:<38} n=0"
    return (
        f"  {label:<38} n={len(ms):<5} p50 {percentile(ms, 50):8.1f} ms   p99 {percentile(ms, 99):8.1f} ms"
        f"   mean {sum(ms) / len(ms):8.1f} ms   max {max(ms):8.1f} ms"
    )


async def one_round(cluster: Cluster, mode: str, batch: int) -> tuple[list[float], list[float], Counter[str]]:
    """`batch` cancels held at once through the balancer, each approved on a replica other than its holder."""
    orders = [await cluster.place_order() for _ in range(batch)]
    holders: dict[int, list[str]] = {order: [] for order in orders}
    results: dict[int, tuple[float, types.CallToolResult | BaseException]] = {}
    done = {order: anyio.Event() for order in orders}

    async def agent(order: int) -> None:
        try:
            async with cluster.agent(mode=mode, calls_seen=holders[order]) as client:
                result: types.CallToolResult | BaseException = await client.call_tool(
                    HELD_TOOL, {"orderId": order, "confirm": True}
                )
        except Exception as exc:
            result = exc
        results[order] = (time.perf_counter(), result)
        done[order].set()

    to_result: list[float] = []
    to_response: list[float] = []
    outcomes: Counter[str] = Counter()
    async with anyio.create_task_group() as tg:
        for order in orders:
            tg.start_soon(agent, order)
        pending = {r["arguments"]["orderId"]: r for r in await cluster.pending(batch, within=60)}
        for order in orders:
            # People approve at moments unrelated to the replicas' clocks: without this, each approval
            # would follow the previous result, which arrives just after a poll, and meet the worst phase.
            await anyio.sleep(random.uniform(0, 1))
            holder = holders[order][0]
            approver = cluster.replica(next(name for name in REPLICAS if name != holder))
            async with cluster.api(via=approver.url) as api:
                sent = time.perf_counter()
                response = await api.post(f"/api/approvals/{pending[order]['id']}/approve", json={})
                answered = time.perf_counter()
            if response.status_code != 200:
                raise ClusterError(f"approve failed: {response.status_code} {response.text}")
            with anyio.fail_after(30):
                await done[order].wait()
            arrived, result = results[order]
            ok = isinstance(result, types.CallToolResult) and not result.is_error
            outcomes["ok" if ok else type(result).__name__ if isinstance(result, BaseException) else "isError"] += 1
            if ok:
                to_result.append(arrived - sent)
                to_response.append(answered - sent)
    return to_result, to_response, outcomes


async def run(args: argparse.Namespace, cluster: Cluster) -> None:
    to_result: list[float] = []
    to_response: list[float] = []
    outcomes: Counter[str] = Counter()
    rounds = math.ceil(args.calls / args.batch)
    with anyio.fail_after(args.timeout):
        for index in range(rounds):
            batch = min(args.batch, args.calls - index * args.batch)
            got = await one_round(cluster, args.mode, batch)
            to_result += got[0]
            to_response += got[1]
            outcomes += got[2]
    executed = len(cluster.ledger(HELD_TOOL))
    print(
        f"approve -> result across replicas, through HAProxy ({args.mode} clients, poll_interval {args.poll_interval})"
    )
    print(row("approve POST -> its response", to_response))
    print(row("approve POST sent -> agent's result", to_result))
    print(f"  results: {dict(outcomes)}; cancels that reached the broker: {executed} (calls: {args.calls})")
    verified = cluster.audit_verify()
    print(f"  countersign audit verify: {verified.stdout.strip() or verified.stderr.strip()}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=60, help="held calls approved across replicas (60)")
    parser.add_argument("--batch", type=int, default=6, help="calls held at once before they are approved (6)")
    parser.add_argument("--mode", default="legacy", choices=["legacy", "auto"], help="client protocol era")
    parser.add_argument("--poll-interval", default="1s", help="the replicas' [server] poll_interval (1s)")
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="a PostgreSQL server to create a fresh database on (dropped at the end)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (600)")
    parser.add_argument("--keep-logs", metavar="DIR", help="keep the replicas', broker's and HAProxy's logs in DIR")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = haproxy_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    database_url = create_database(args.database_url, prefix="cs_bench")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-replicas-") as scratch:
            workdir = Path(args.keep_logs) if args.keep_logs else Path(scratch)
            cluster = Cluster(workdir, database_url, server={"poll_interval": args.poll_interval})
            log("starting PostgreSQL database, paper broker, three replicas and HAProxy")
            cluster.start()
            try:
                anyio.run(run, args, cluster)
            finally:
                cluster.stop()
    finally:
        drop_database(args.database_url, database_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
