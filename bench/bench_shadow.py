"""What a shadow policy adds to each call: the time `ShadowRun.observe` takes on the call path.

Run from the repository root:  .venv/bin/python bench/bench_shadow.py [--calls N]
In-process, no network: the live policy is the demo's; the shadow is the same policy (no call differs) or one
that denies the read every call makes (every call differs, so every call queues an audit event). The events
are written by the shadow's own task; here it only counts them, so the figures are the call path's share.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from approvals.audit import Event  # noqa: E402  (needs the repository root on sys.path)
from gateway.demo import DEMO_POLICY  # noqa: E402
from gateway.policy import parse_policy  # noqa: E402
from gateway.policy_shadow import ShadowStore  # noqa: E402
from gateway.shadow import ShadowCall, ShadowRun  # noqa: E402

TOOL = "ibkr_get_open_orders"


async def measure(shadow_document: dict[str, Any], calls: int) -> tuple[list[float], int]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "shadow.json"
        path.write_text(json.dumps(shadow_document))
        written = 0

        async def record(event: Event) -> None:
            nonlocal written
            written += 1

        shadow = ShadowRun(ShadowStore(path), record)
        live = parse_policy(DEMO_POLICY)
        call = ShadowCall("alpha", "session-1", TOOL, "paper", {})
        costs: list[float] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(shadow.run)
            for _ in range(calls):
                evaluation = live.evaluate(TOOL, {})
                started = time.perf_counter()
                await shadow.observe(call, live, evaluation)
                costs.append((time.perf_counter() - started) * 1e6)
                await anyio.lowlevel.checkpoint()  # as between calls: the writer gets its turn
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        return costs, written + shadow.dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls observed per case (20,000)")
    args = parser.parse_args()
    denying = copy.deepcopy(DEMO_POLICY)
    denying["tools"][TOOL] = {"deny_if": [{"conditions": [], "on_deny": "not in the candidate"}]}
    print(f"shadow observe, per call, {args.calls:,} calls each (microseconds)")
    print(f"{'case':<28}{'mean':>8}{'p50':>8}{'p99':>8}{'max':>9}  events")
    for name, document in (("no call differs", DEMO_POLICY), ("every call differs", denying)):
        costs, events = anyio.run(measure, document, args.calls)
        p99 = statistics.quantiles(costs, n=100)[98]
        mean, median = statistics.fmean(costs), statistics.median(costs)
        print(f"{name:<28}{mean:>8.1f}{median:>8.1f}{p99:>8.1f}{max(costs):>9.1f}  {events:,}")


if __name__ == "__main__":
    main()
