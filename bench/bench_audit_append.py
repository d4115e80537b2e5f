"""The cost of one audit append, the write every allowed call waits for, on an SQLite file.

Appends `--events` single events one after another through `Database.append_events` (what a lone
allowed call's group commit does), with the audit search indexer running beside them as in the
gateway where the code has one (`approvals.audit_index`). Prints, per append: the process's CPU
(every thread: the loop, the appender's worker, the indexer's batches), the wall time, and the CPU
once the indexer has caught up.

Compare two checkouts in one run, alternating, on the same machine:
    .venv/bin/python bench/bench_audit_append.py --baseline ../main-checkout --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(events: int, workdir: Path) -> dict[str, float]:
    import anyio

    from approvals.audit import Event
    from approvals.db import Database

    try:
        from approvals.audit_index import AuditTextIndexer
    except ImportError:  # a checkout whose index is kept by triggers
        AuditTextIndexer = None  # type: ignore[assignment,misc]

    db = Database(f"sqlite:///{workdir / 'append.db'}", audit_key=b"bench-append-key-0123456789abcdef0123")
    await db.create_schema()
    arguments = json.dumps({"symbol": "AAPL", "qty": 100, "account": "DU1234567", "order_type": "LMT"})
    made = [
        Event(kind="call.allowed", outcome="allowed", message="forwarded", agent="bench", tool="t", arguments=arguments)
        for _ in range(events)
    ]
    from datetime import UTC, datetime

    indexer = None if AuditTextIndexer is None else AuditTextIndexer(db)
    try:
        async with anyio.create_task_group() as tg:
            if indexer is not None:
                tg.start_soon(indexer.run)
            await db.append_events([(made[0], datetime.now(UTC))])  # connections opened
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            for event in made:
                await db.append_events([(event, datetime.now(UTC))])
            cpu1, wall1 = cpu_seconds(), time.perf_counter()
            if indexer is not None:
                await indexer.catch_up()
            cpu2 = cpu_seconds()
            tg.cancel_scope.cancel()
    finally:
        await db.dispose()
    return {
        "cpu_us": (cpu1 - cpu0) / events * 1e6,
        "wall_us": (wall1 - wall0) / events * 1e6,
        "cpu_indexed_us": (cpu2 - cpu0) / events * 1e6,
    }


def child(args: argparse.Namespace) -> None:
    import anyio

    sys.path.insert(0, str(Path(args.child).resolve()))
    with tempfile.TemporaryDirectory(prefix="cs-bench-append-") as tmp:
        print(json.dumps(anyio.run(measure, args.events, Path(tmp))))


def run(repo: Path, python: str, events: int) -> dict[str, float]:
    argv = [python, str(Path(__file__).resolve()), "--child", str(repo), "--events", str(events)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=repo, env={**os.environ})
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="another checkout, measured in turn with this one")
    parser.add_argument("--baseline-python", default=sys.executable)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    checkouts = [("this", REPO, sys.executable)]
    if args.baseline:
        checkouts.insert(0, ("baseline", Path(args.baseline).resolve(), args.baseline_python))
    print(f"{'checkout':<10} {'CPU µs/append':>14} {'wall µs/append':>15} {'CPU µs incl. indexing':>22}")
    for _ in range(args.rounds):
        for name, repo, python in checkouts:
            r = run(repo, python, args.events)
            print(f"{name:<10} {r['cpu_us']:14.0f} {r['wall_us']:15.0f} {r['cpu_indexed_us']:22.0f}", flush=True)


if __name__ == "__main__":
    main()
