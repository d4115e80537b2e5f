"""A burst of held calls parked at the gateway, with the agents' side in a lean process of its own.

`bench_gateway.py --held N` parks its calls through the MCP SDK's client in the bench's own process,
which on this machine's two cores costs about as much CPU per call as the gateway does per park: the
rate it prints is the two together. Here the agents are `raw_held_client.py`, a separate process
speaking the 2025-era streamable HTTP protocol over raw HTTP/1.1 (handshake per session, one POST per
held call with a progress token, its event stream read until the answer), so the gateway's figures
and the client's are measured apart:

- parked: from "go" until every call has had its first progress notice (sent only once its request
  is durable), then confirmed by the approver API's pending count;
- gateway CPU per park (utime+stime of `countersign serve` over the park), the client's and this
  process's, each per park;
- then every request is approved through the API, 20 at a time, and every call must come back with
  the broker's result (the client checks each answer), so the run shows the parks were real.

    .venv/bin/python bench/bench_park_burst.py [--held 1000] [--sessions 40] [--opening 200]
        [--database-url postgresql://postgres@127.0.0.1:5432/postgres] [--profile FILE]

`--profile FILE` records the gateway with py-spy (`--gil`, raw format) over the park only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
from bench_gateway import (
    AGENT_TOKEN,
    APPROVER_TOKEN,
    HELD_TOOL,
    Proc,
    create_pg_database,
    drop_pg_database,
    free_port,
    gateway_config,
    log,
    pending_approvals,
    pending_count,
    place_orders,
    py_spy,
    start_broker,
    start_process,
    wait_healthy,
)

HERE = Path(__file__).resolve().parent


def proc_cpu(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    """The raw client process: a line of JSON in, a line of JSON out per step."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def next(self, within: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), within)
        if not line:
            raise RuntimeError(f"the raw client ended (exit {await self.process.wait()})")
        return dict(json.loads(line))

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")


async def approve_all(api: httpx2.AsyncClient, held: int, concurrency: int) -> int:
    limiter = anyio.Semaphore(concurrency)
    approved = 0

    async def approve(request_id: str) -> None:
        nonlocal approved
        async with limiter:
            for _ in range(3):
                try:
                    response = await api.post(f"/api/approvals/{request_id}/approve", json={})
                except httpx2.TransportError:
                    continue
                approved += response.status_code == 200
                return

    seen: set[str] = set()
    while True:
        fresh = [r["id"] for r in await pending_approvals(api) if r["id"] not in seen]
        if not fresh:
            return approved
        seen.update(fresh)
        async with anyio.create_task_group() as tg:
            for request_id in fresh:
                tg.start_soon(approve, request_id)


async def run(args: argparse.Namespace, workdir: Path, procs: list[Proc], database_url: str) -> dict[str, Any]:
    gateway_port = free_port()
    _, broker_url = await start_broker(workdir, procs)
    config = gateway_config(
        workdir,
        port=gateway_port,
        broker_url=broker_url,
        database_url=database_url,
        progress_interval=5.0,
        poll_interval=1.0,
        held_max=max(args.held, 1000),
    )
    gateway = start_process(
        "gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)], workdir, procs
    )
    base = f"http://127.0.0.1:{gateway_port}"
    await wait_healthy(gateway, f"{base}/healthz", lambda body: body.get("status") == "ok")
    log(f"placing {args.held} working orders on the paper broker")
    orders = await place_orders(broker_url, args.held)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "raw_held_client.py"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    client = Client(process)
    setup = {
        "host": "127.0.0.1",
        "port": gateway_port,
        "token": AGENT_TOKEN,
        "sessions": args.sessions,
        "opening": args.opening,
        "timeout": args.timeout,
        "tool": HELD_TOOL,
        "orders": orders,
    }
    client.send(json.dumps(setup))
    ready = await client.next(120)
    assert ready["event"] == "ready", ready
    await asyncio.sleep(1)
    async with httpx2.AsyncClient(
        base_url=base,
        headers={"Authorization": f"Bearer {APPROVER_TOKEN}"},
        timeout=httpx2.Timeout(30.0, read=args.timeout),
        limits=httpx2.Limits(max_connections=args.approve_concurrency + 2, keepalive_expiry=2.0),
        trust_env=False,
    ) as api:
        profiler = None
        if args.profile:
            argv = [py_spy(), "record", "--pid", str(gateway.pid), "--rate", str(args.rate), "--format", "raw", "--gil"]
            profiler = start_process("py-spy", [*argv, "--nonblocking", "--output", args.profile], workdir, procs)
            await asyncio.sleep(1.5)
        log(f"holding {args.held} calls over {args.sessions} sessions, {args.opening} being opened at a time")
        gateway0, client0, own0 = proc_cpu(gateway.pid), proc_cpu(process.pid), time.process_time()
        client.send("go")
        parked = await client.next(args.timeout)
        gateway_cpu = proc_cpu(gateway.pid) - gateway0
        client_cpu = proc_cpu(process.pid) - client0
        own_cpu = time.process_time() - own0
        if profiler is not None:
            profiler.popen.send_signal(signal.SIGINT)
            profiler.popen.wait(timeout=60)
        if parked["event"] != "parked":
            raise RuntimeError(f"{parked.get('count')} call(s) were answered before they were held: {parked}")
        pending = await pending_count(api)
        log(f"all {args.held} parked in {parked['seconds']:.2f} s; the API counts {pending} pending; approving")
        drain0 = time.perf_counter()
        approved = await approve_all(api, args.held, args.approve_concurrency)
        done = await client.next(args.timeout)
        drain = time.perf_counter() - drain0
    await process.wait()
    gateway.check_alive()
    held, seconds = args.held, float(parked["seconds"])
    return {
        "held": held,
        "park_seconds": seconds,
        "parks_per_second": held / seconds,
        "gateway_cpu_ms_per_park": gateway_cpu * 1000 / held,
        "client_cpu_ms_per_park": client_cpu * 1000 / held,
        "bench_cpu_ms_per_park": own_cpu * 1000 / held,
        "gateway_share_of_a_core": gateway_cpu / seconds,
        "pending_after_park": pending,
        "approved": approved,
        "results_ok": done["ok"],
        "results_failed": done["failed"],
        "failure": done["detail"],
        "approve_seconds": drain,
        "load": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--opening", type=int, default=200, help="calls sent and not yet held at once (200)")
    parser.add_argument("--approve-concurrency", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--database-url", help="PostgreSQL server: a fresh database is made there and dropped")
    parser.add_argument("--profile", metavar="FILE", help="py-spy (--gil, raw) of the gateway over the park")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the gateway's and broker's logs into DIR")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second (100)")
    args = parser.parse_args()
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="countersign-park-") as tmp:
        workdir = Path(tmp)
        pg_name = None
        try:
            if args.database_url:
                pg_name, url = anyio.run(create_pg_database, args.database_url)
            else:
                url = f"sqlite:///{workdir / 'countersign.db'}"
            figures = asyncio.run(run(args, workdir, procs, url))
        finally:
            for proc in reversed(procs):
                proc.stop()
                if args.keep_logs:
                    Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
                    shutil.copy(proc.log_path, Path(args.keep_logs) / proc.log_path.name)
            if pg_name:
                anyio.run(drop_pg_database, args.database_url, pg_name)
    backend = "PostgreSQL" if args.database_url else "SQLite"
    print(
        f"{figures['held']} held over {args.sessions} sessions ({backend}, load {figures['load']:.1f}): parked in "
        f"{figures['park_seconds']:.2f} s ({figures['parks_per_second']:.0f} calls/s); per park: gateway CPU "
        f"{figures['gateway_cpu_ms_per_park']:.2f} ms, raw client {figures['client_cpu_ms_per_park']:.2f} ms, "
        f"bench {figures['bench_cpu_ms_per_park']:.2f} ms; gateway at {figures['gateway_share_of_a_core']:.0%} of "
        f"a core over the park; approved {figures['approved']}, results ok {figures['results_ok']}, failed "
        f"{figures['results_failed']} {figures['failure']}"
    )
    print(json.dumps(figures))
    return 0 if figures["results_failed"] == 0 and figures["pending_after_park"] >= figures["held"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
