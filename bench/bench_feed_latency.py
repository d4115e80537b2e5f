"""Benchmark two replicas on one PostgreSQL: a call held on replica A, approved through replica B's API.

How long after the approval does the agent held on A have its result? Before the change feed
listened for notifications this was bounded by A's poll of the database (`poll_interval`, 1 s by
default); the goal is p99 under 250 ms.

Run from the repository root:
  .venv/bin/python bench/bench_feed_latency.py --database-url postgresql://postgres@127.0.0.1:5432/test [--calls 50]
The named database is only connected to: the bench creates a fresh one beside it and drops it at the end.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import httpx2
from bench_gateway import (  # type: ignore[import-not-found]
    AGENT_TOKEN,
    APPROVER_TOKEN,
    HELD_TOOL,
    Proc,
    Summary,
    create_pg_database,
    drop_pg_database,
    free_port,
    gateway_config,
    log,
    mcp_client,
    place_orders,
    short,
    start_broker,
    start_process,
    text_of,
    wait_healthy,
)


async def start_replica(name: str, workdir: Path, procs: list[Proc], **config: object) -> tuple[Proc, str]:
    port = free_port()
    replica_dir = workdir / name
    replica_dir.mkdir()
    path = gateway_config(replica_dir, port=port, **config)  # type: ignore[arg-type]
    proc = start_process(name, [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)], workdir, procs)
    base = f"http://127.0.0.1:{port}"
    await wait_healthy(proc, f"{base}/healthz", lambda body: body.get("status") == "ok")
    return proc, base


async def measure(args: argparse.Namespace, workdir: Path, procs: list[Proc], database_url: str) -> list[str]:
    _, broker_url = await start_broker(workdir, procs)
    config = {
        "broker_url": broker_url,
        "database_url": database_url,
        "progress_interval": 5.0,
        "poll_interval": args.poll_interval,
    }
    _, a_url = await start_replica("replica-a", workdir, procs, **config)
    _, b_url = await start_replica("replica-b", workdir, procs, **config)
    if args.same_replica:
        b_url = a_url  # the floor: the decision made in the process that holds the call
    log(f"replicas: A {a_url}, B {b_url}; {args.calls} held on A, each approved through {b_url}")
    order_ids = await place_orders(broker_url, args.calls + args.warmup)
    sent_to_result: list[float] = []
    response_to_result: list[float] = []
    failures: list[str] = []
    headers = {"Authorization": f"Bearer {APPROVER_TOKEN}"}
    async with (
        mcp_client(f"{a_url}/mcp", mode="legacy", token=AGENT_TOKEN) as agent,
        httpx2.AsyncClient(base_url=b_url, headers=headers, timeout=30.0, trust_env=False) as approver,
    ):
        for index, order_id in enumerate(order_ids):
            box: dict[str, float | str] = {}
            async with anyio.create_task_group() as tg:

                async def call(order: int = order_id, out: dict[str, float | str] = box) -> None:
                    result = await agent.call_tool(HELD_TOOL, {"orderId": order, "confirm": True})
                    out["returned"] = time.perf_counter()
                    if result.is_error:
                        out["error"] = short(text_of(result))

                tg.start_soon(call)
                with anyio.fail_after(30):
                    while True:
                        pending = (await approver.get("/api/approvals", params={"status": "pending"})).json()
                        if pending["approvals"]:
                            request_id = pending["approvals"][0]["id"]
                            break
                        await anyio.sleep(0.02)
                # Let A's held call settle into its wait before the decision, as a human would take a moment.
                await anyio.sleep(0.05)
                sent = time.perf_counter()
                response = await approver.post(f"/api/approvals/{request_id}/approve", json={})
                done = time.perf_counter()
                if response.status_code != 200:
                    raise RuntimeError(f"approve {request_id}: HTTP {response.status_code} {response.text[:200]}")
            if "error" in box:
                failures.append(str(box["error"]))
            elif index >= args.warmup:
                returned = float(box["returned"])
                sent_to_result.append(returned - sent)
                response_to_result.append(returned - done)
    where = "A's own API (the single-process floor)" if args.same_replica else "replica B's API"
    lines = [
        f"Replicas: a cancel held on replica A, approved through {where}; {len(sent_to_result)} calls "
        f"one at a time (after {args.warmup} warm-up); PostgreSQL; poll_interval {args.poll_interval:g}s",
        Summary.of(sent_to_result).row("approve POST sent (B) -> result (A)"),
        Summary.of(response_to_result).row("approve response (B) -> result (A)"),
    ]
    if failures:
        lines.append(f"  {len(failures)} call(s) failed; first: {failures[0]}")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a PostgreSQL server to create a fresh database on")
    parser.add_argument("--calls", type=int, default=100, help="measured held-and-approved calls (100)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up calls, not measured (5)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="the replicas' [server] poll_interval")
    parser.add_argument("--same-replica", action="store_true", help="approve through A itself, for comparison")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (600)")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the processes' logs into DIR at the end")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="countersign-bench-replicas-") as tmp:
        pg_name, database_url = anyio.run(create_pg_database, args.database_url)
        try:

            async def bounded() -> list[str]:
                with anyio.fail_after(args.timeout):
                    return await measure(args, Path(tmp), procs, database_url)

            print("\n".join(anyio.run(bounded)), flush=True)
        finally:
            for proc in reversed(procs):
                proc.stop()
                if args.keep_logs:
                    Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
                    shutil.copy(proc.log_path, Path(args.keep_logs) / proc.log_path.name)
            anyio.run(drop_pg_database, args.database_url, pg_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
