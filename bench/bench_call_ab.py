"""Two gateways side by side on the allowed call alone: this checkout's and another's, CPU per call first.

Run from the repository root:
  .venv/bin/python bench/bench_call_ab.py --baseline ../base --baseline-python ../base/.venv/bin/python

Both run `countersign serve` with the paper broker as their stdio upstream and an allow-all policy
(as in bench_peers.py). Sequential `ibkr_get_open_orders` calls in alternating blocks (A, B, B, A, ...)
so both share the machine's noise; per gateway: latency p50/mean and its process's CPU per call over
all blocks (/proc, so with many calls the 10 ms tick no longer matters). See bench/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gateway import AGENT_TOKEN, Proc, free_port, log, mcp_client, start_process, wait_healthy
from bench_peers import call_once, countersign_config


async def start(name: str, where: Path, python: str, cwd: Path, procs: list[Proc]) -> tuple[Proc, str]:
    where.mkdir()  # noqa: ASYNC240 - before anything runs
    port = free_port()
    config = countersign_config(where, port=port, database_url=f"sqlite:///{where / 'countersign.db'}", access_log=None)
    proc = start_process(name, [python, "-m", "gateway.cli", "serve", "--config", str(config)], where, procs, cwd=cwd)
    await wait_healthy(proc, f"http://127.0.0.1:{port}/readyz", lambda body: True)
    return proc, f"http://127.0.0.1:{port}/mcp"


async def run(args: argparse.Namespace) -> None:
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="cs-ab-") as tmp:
        try:
            here = Path(__file__).resolve().parent.parent  # noqa: ASYNC240 - before anything runs
            a = await start("this", Path(tmp) / "this", sys.executable, here, procs)
            b = await start(
                "baseline", Path(tmp) / "base", args.baseline_python or sys.executable, Path(args.baseline), procs
            )
            gateways = {"this": a, "baseline": b}
            for mode in args.modes.split(","):
                times: dict[str, list[float]] = {name: [] for name in gateways}
                cpu = dict.fromkeys(gateways, 0.0)
                async with AsyncExitStack() as stack:
                    clients = {
                        name: await stack.enter_async_context(mcp_client(url, mode=mode, token=AGENT_TOKEN))
                        for name, (_, url) in gateways.items()
                    }
                    for client in clients.values():
                        for _ in range(args.warmup):
                            await call_once(client)
                    order = list(gateways)
                    for block in range(args.blocks):
                        for name in order if block % 2 == 0 else reversed(order):
                            proc = gateways[name][0]
                            cpu0 = proc.cpu_seconds()
                            for _ in range(args.per_block):
                                times[name].append(await call_once(clients[name]))
                            cpu[name] += proc.cpu_seconds() - cpu0
                            if args.pause:
                                await anyio.sleep(args.pause)
                log(f"mode={mode}: {args.blocks} blocks x {args.per_block} calls per gateway")
                for name, got in times.items():
                    ms = sorted(t * 1000 for t in got)
                    print(
                        f"  {mode:<7} {name:<9} n={len(ms)}  p50 {ms[len(ms) // 2]:6.2f} ms  "
                        f"mean {statistics.fmean(ms):6.2f} ms  CPU/call {cpu[name] * 1000 / len(ms):5.2f} ms",
                        flush=True,
                    )
        finally:
            for proc in procs:
                proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, metavar="DIR", help="the other checkout")
    parser.add_argument("--baseline-python", metavar="PYTHON", help="its interpreter (default: this one)")
    parser.add_argument("--modes", default="auto,legacy", help="client modes: auto (2026-07-28), legacy (2025-11-25)")
    parser.add_argument("--blocks", type=int, default=20, help="blocks per gateway (20)")
    parser.add_argument("--per-block", type=int, default=50, help="sequential calls per block (50)")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up calls per gateway and mode (30)")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds to sleep between blocks (0)")
    anyio.run(run, parser.parse_args(), backend="asyncio")


if __name__ == "__main__":
    main()
