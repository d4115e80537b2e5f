"""An allowed call's audit write beside a simulated upstream: flushed before forwarding, or while it works.

Sequential calls on a fresh SQLite file, each: its `call.allowed` event, then an upstream that takes
`--upstream-ms`. "before" records the event durably (commit and flush) and then calls the upstream,
as the gateway did; "beside" commits the event, then calls the upstream while the log is flushed
(`ApprovalService.record_committed` / `made_durable`), and ends when both have. Blocks of each are
interleaved. Prints p50, mean and the process's CPU per call for each.

Run from the repository root:
    .venv/bin/python bench/bench_audit_flush.py [--calls 300] [--upstream-ms 1.5]
The database is made in a temporary directory under the current one (on its disk, not a tmpfs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from approvals.approvers import ApproverDirectory  # noqa: E402
from approvals.audit import Event  # noqa: E402
from approvals.db import Database  # noqa: E402
from approvals.service import ApprovalService  # noqa: E402

BLOCK = 25


async def run(calls: int, upstream_seconds: float) -> None:
    with tempfile.TemporaryDirectory(dir=".") as where:
        db = Database(f"sqlite:///{Path(where) / 'bench.db'}", audit_key=b"bench-audit-flush-key-0123456789ab")
        await db.create_schema()
        service = ApprovalService(db, ApproverDirectory([]))
        took: dict[str, list[float]] = {"before": [], "beside": []}
        cpu = dict.fromkeys(took, 0.0)
        try:
            for block in range(2 * max(1, calls // (2 * BLOCK))):
                mode = "beside" if block % 2 == 0 else "before"
                for _ in range(BLOCK):
                    event = Event(kind="call.allowed", outcome="allowed", message="forwarded", tool="t")
                    started, used = time.perf_counter(), time.process_time()
                    if mode == "before":
                        await service.record(event)
                        await anyio.sleep(upstream_seconds)
                    else:
                        await service.record_committed(event)
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(service.made_durable)
                            await anyio.sleep(upstream_seconds)
                    took[mode].append(time.perf_counter() - started)
                    cpu[mode] += time.process_time() - used
        finally:
            await db.dispose()
    print(f"audit write + an upstream of {upstream_seconds * 1e3:g} ms, sequential calls on an SQLite file")
    for mode, times in took.items():
        times.sort()
        print(
            f"  flushed {mode:6} forwarding  n={len(times)}  p50 {times[len(times) // 2] * 1e3:6.2f} ms"
            f"  mean {statistics.mean(times) * 1e3:6.2f} ms  CPU/call {cpu[mode] / len(times) * 1e3:5.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per mode (300)")
    parser.add_argument("--upstream-ms", type=float, default=1.5, help="the simulated upstream's time (1.5)")
    args = parser.parse_args()
    anyio.run(run, args.calls, args.upstream_ms / 1e3)


if __name__ == "__main__":
    main()
