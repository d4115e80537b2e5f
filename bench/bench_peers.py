"""Countersign beside its peers: direct, a plain stdio->HTTP proxy (`mcp-proxy`) and `countersign serve`.

Run from the repository root:  .venv/bin/python bench/bench_peers.py [--quick] [--database-url URL]
See bench/README.md ("Peers") for what each figure means. Everything runs on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from mcp import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gateway import (  # a sibling module, found through the line above
    AGENT_TOKEN,
    READ_TOOL,
    Proc,
    Summary,
    _plain_pg,
    create_pg_database,
    drop_pg_database,
    emit,
    free_port,
    leaf_exceptions,
    log,
    mcp_client,
    short,
    start_process,
    text_of,
    toml_value,
    wait_healthy,
)

# mcp-proxy 0.13 is built on the 1.x SDK; it gets a virtualenv of its own so it never meets this project's 2.x.
MCP_PROXY_REQUIREMENTS = ("mcp-proxy==0.13.0", "mcp<2")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "countersign-bench"
BASELINE = "countersign-baseline"


# ---- the peers


def mcp_proxy_executable(cache: Path) -> Path:
    """`mcp-proxy` in a virtualenv under `cache`, installed from PyPI the first time."""
    venv = cache / "mcp-proxy-0.13"
    executable = venv / "bin" / "mcp-proxy"
    if executable.exists():
        return executable
    log(f"installing {' '.join(MCP_PROXY_REQUIREMENTS)} into {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *MCP_PROXY_REQUIREMENTS], check=True)
    return executable


def broker_command() -> list[str]:
    return [sys.executable, "-m", "gateway.paper_broker"]


def countersign_config(workdir: Path, *, port: int, database_url: str, access_log: bool | None) -> Path:
    """A gateway with one stdio upstream (the paper broker) and a policy that allows every call."""
    policy = workdir / "allow-all.json"
    policy.write_text(json.dumps({"version": "1", "default": "allow"}))
    server: dict[str, object] = {"host": "127.0.0.1", "port": port, "database_url": database_url}
    if access_log is not None:
        server["access_log"] = access_log
    sections: list[tuple[str, dict[str, object]]] = [
        ("[server]", server),
        ("[audit]", {"key": secrets.token_hex(32)}),
        ("[policy]", {"file": str(policy), "watch": False}),
        ("[[upstreams]]", {"name": "paper", "command": broker_command()}),
        ("[[agents]]", {"name": "bench", "token": AGENT_TOKEN}),
    ]
    path = workdir / "countersign.toml"
    path.write_text(
        "\n".join(
            header + "\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in body.items())
            for header, body in sections
        )
    )
    return path


@dataclass
class Peer:
    name: str
    url: str
    proc: Proc | None  # the process whose CPU is counted (None: direct, nothing in between)
    token: str | None = None


async def start_peers(args: argparse.Namespace, workdir: Path, procs: list[Proc], database_url: str) -> list[Peer]:
    broker_port, proxy_port, gateway_port = free_port(), free_port(), free_port()
    broker = start_process("broker", [*broker_command(), "--http", str(broker_port)], workdir, procs)
    proxy_argv = [str(mcp_proxy_executable(Path(args.cache))), "--port", str(proxy_port), "--", *broker_command()]
    proxy = start_process("mcp-proxy", proxy_argv, workdir, procs)
    config = countersign_config(workdir, port=gateway_port, database_url=database_url, access_log=args.access_log)
    gateway = start_process(
        "gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)], workdir, procs
    )
    await wait_healthy(broker, f"http://127.0.0.1:{broker_port}/health", lambda body: body.get("status") == "ok")
    await wait_healthy(gateway, f"http://127.0.0.1:{gateway_port}/readyz", lambda body: True)
    await wait_mcp(proxy, f"http://127.0.0.1:{proxy_port}/mcp")
    log(f"broker pid {broker.pid}, mcp-proxy pid {proxy.pid}, gateway pid {gateway.pid}")
    peers = [
        Peer("direct", f"http://127.0.0.1:{broker_port}/mcp", None),
        Peer("mcp-proxy", f"http://127.0.0.1:{proxy_port}/mcp", proxy),
        Peer("countersign", f"http://127.0.0.1:{gateway_port}/mcp", gateway, AGENT_TOKEN),
    ]
    if args.baseline:
        # The same gateway from another checkout (e.g. `git worktree add /tmp/base main`), run by this Python:
        # `python -m` finds the checkout's packages first, so before and after are measured in one run.
        port = free_port()
        where = workdir / "baseline"
        where.mkdir()
        url = database_url if not database_url.startswith("sqlite") else f"sqlite:///{where / 'countersign.db'}"
        config = countersign_config(where, port=port, database_url=url, access_log=None)
        argv = [args.baseline_python or sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]
        baseline = start_process(BASELINE, argv, workdir, procs, cwd=Path(args.baseline))
        await wait_healthy(baseline, f"http://127.0.0.1:{port}/readyz", lambda body: True)
        peers.append(Peer(BASELINE, f"http://127.0.0.1:{port}/mcp", baseline, AGENT_TOKEN))
    return peers


async def wait_mcp(proc: Proc, url: str, within: float = 60) -> None:
    """mcp-proxy has no health endpoint: wait until a client can list tools through it."""
    with anyio.fail_after(within):
        while True:
            proc.check_alive()
            try:
                async with mcp_client(url, mode="legacy", read_timeout=5) as client:
                    await client.list_tools()
                    return
            except Exception:  # not up yet
                await anyio.sleep(0.2)


# ---- measuring


async def call_once(client: Client) -> float:
    started = time.perf_counter()
    result = await client.call_tool(READ_TOOL, {})
    elapsed = time.perf_counter() - started
    if result.is_error:
        raise RuntimeError(f"{READ_TOOL} failed: {short(text_of(result))}")
    return elapsed


@dataclass
class Latency:
    protocol: dict[str, str | None] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


async def latency(peers: list[Peer], mode: str, rounds: int, per_round: int, warmup: int) -> Latency:
    """Sequential calls, one peer after another in a rotating order, so all share the same noise."""
    out = Latency(times={p.name: [] for p in peers}, cpu={p.name: 0.0 for p in peers})
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(mcp_client(p.url, mode=mode, token=p.token)) for p in peers]
        for peer, client in zip(peers, clients, strict=True):
            out.protocol[peer.name] = client.protocol_version
            for _ in range(warmup):
                await call_once(client)
        for r in range(rounds):
            for i in range(per_round):
                shift = (r * per_round + i) % len(peers)
                for peer, client in [*zip(peers, clients, strict=True)][shift:] + [*zip(peers, clients, strict=True)][
                    :shift
                ]:
                    cpu0 = peer.proc.cpu_seconds() if peer.proc else 0.0
                    out.times[peer.name].append(await call_once(client))
                    if peer.proc:
                        out.cpu[peer.name] += peer.proc.cpu_seconds() - cpu0
    return out


async def burst(peer: Peer, mode: str, tasks: int, per_task: int, *, sessions: int) -> tuple[float, float]:
    """`tasks` concurrent tasks over `sessions` client sessions: calls per second, and the peer's CPU ms per call."""
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                mcp_client(peer.url, mode=mode, token=peer.token, connections=tasks // sessions + 2)
            )
            for _ in range(sessions)
        ]
        for client in clients:
            await call_once(client)

        async def worker(client: Client) -> None:
            for _ in range(per_task):
                await call_once(client)

        cpu0 = peer.proc.cpu_seconds() if peer.proc else 0.0
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for t in range(tasks):
                tg.start_soon(worker, clients[t % sessions])
        elapsed = time.perf_counter() - started
        cpu = (peer.proc.cpu_seconds() - cpu0) if peer.proc else 0.0
    calls = tasks * per_task
    return calls / elapsed, cpu * 1000 / calls


@dataclass
class Throughput:
    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)


async def throughput(peers: list[Peer], mode: str, rounds: int, tasks: int, per_task: int, sessions: int) -> Throughput:
    out = Throughput(rates={p.name: [] for p in peers}, cpu={p.name: [] for p in peers})
    for r in range(rounds):
        for peer in peers[r % len(peers) :] + peers[: r % len(peers)]:
            rate, cpu = await burst(peer, mode, tasks, per_task, sessions=sessions)
            out.rates[peer.name].append(rate)
            out.cpu[peer.name].append(cpu)
    return out


# ---- the report


def report_latency(mode: str, run: Latency, calls: int) -> tuple[list[str], dict[str, float]]:
    s = {name: Summary.of(times) for name, times in run.times.items()}
    direct = s["direct"]
    lines = [f"Passthrough, mode={mode}: {READ_TOOL}, {calls} sequential calls per peer, interleaved"]
    for name in run.times:
        added = "" if name == "direct" else f"   added p50 {s[name].p50 - direct.p50:+7.2f} ms"
        cpu = f"   CPU/call {run.cpu[name] * 1000 / calls:5.2f} ms" if name != "direct" else ""
        lines.append(f"{s[name].row(f'{name} ({run.protocol[name]})')}{added}{cpu}")
    added = {name: s[name].p50 - direct.p50 for name in run.times}
    return lines, added


def report_throughput(label: str, run: Throughput) -> tuple[list[str], dict[str, float]]:
    medians = {name: statistics.median(rates) for name, rates in run.rates.items()}
    lines = [f"Throughput, {label}: calls/s per round (median first)"]
    for name in run.rates:
        rounds = " ".join(f"{rate:5.0f}" for rate in run.rates[name])
        cpu = f"   CPU/call {statistics.median(run.cpu[name]):5.2f} ms" if name != "direct" else ""
        lines.append(f"  {name:<12} {medians[name]:6.0f}   [{rounds}]{cpu}")
    return lines, medians


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "n/a"


async def run(args: argparse.Namespace, workdir: Path, procs: list[Proc], database_url: str, backend: str) -> None:
    peers = await start_peers(args, workdir, procs, database_url)
    if args.profile:
        gateway = next(peer.proc for peer in peers if peer.name == "countersign" and peer.proc)
        profile_argv = ["py-spy", "record", "--pid", str(gateway.pid), "--rate", "100", "--format", "raw"]
        start_process("py-spy", [*profile_argv, "--output", args.profile], workdir, procs)
    emit(
        "Countersign beside its peers",
        f"  upstream: the paper broker ({READ_TOOL}); direct over streamable HTTP; mcp-proxy 0.13 and "
        f"`countersign serve` (allow-all policy, {backend}) each run it over stdio; {os.cpu_count()} CPUs",
        "",
    )
    verdicts: list[str] = []
    calls = args.rounds * args.per_round
    for mode in args.modes:
        log(f"latency, mode={mode}: {args.rounds} rounds x {args.per_round} calls per peer")
        lines, added = report_latency(mode, await latency(peers, mode, args.rounds, args.per_round, args.warmup), calls)
        emit(*lines, "")
        proxy, ours = added["mcp-proxy"], added["countersign"]
        verdicts.append(
            f"  {mode:<7} added p50: countersign {ours:+.2f} ms, mcp-proxy {proxy:+.2f} ms, "
            f"ratio {ratio(ours, proxy)} (goal: <= 0.8 in the 2025 era; <= 1.0 ms in the 2026 era)"
            + (f"; baseline {added[BASELINE]:+.2f} ms" if BASELINE in added else "")
        )
    for mode in args.modes:
        for sessions, label in ((1, "one session"), (args.tasks, f"{args.tasks} sessions")):
            log(f"throughput, mode={mode}, {label}: {args.throughput_rounds} rounds x {args.tasks} tasks")
            measured = await throughput(
                peers, mode, args.throughput_rounds, args.tasks, args.task_calls, sessions=sessions
            )
            lines, medians = report_throughput(f"mode={mode}, {args.tasks} tasks on {label}", measured)
            emit(*lines, "")
            base = medians.get(BASELINE)
            verdicts.append(
                f"  {mode:<7} {label:<12} calls/s: countersign / mcp-proxy = "
                f"{ratio(medians['countersign'], medians['mcp-proxy'])} (goal >= 1.2), "
                f"countersign / direct = {ratio(medians['countersign'], medians['direct'])}"
                + ("" if base is None else f"; baseline / mcp-proxy = {ratio(base, medians['mcp-proxy'])}")
            )
    for peer in peers:
        if peer.proc:
            peer.proc.check_alive()
    emit("Ratios", *verdicts)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="latency rounds (10)")
    parser.add_argument("--per-round", type=int, default=50, help="sequential calls per peer per round (50)")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up calls per peer and mode (30)")
    parser.add_argument("--modes", default="legacy,auto", help="client modes: legacy (2025-11-25), auto (2026-07-28)")
    parser.add_argument("--tasks", type=int, default=20, help="concurrent tasks for throughput (20)")
    parser.add_argument("--task-calls", type=int, default=25, help="calls per task per burst (25)")
    parser.add_argument("--throughput-rounds", type=int, default=3, help="bursts per peer, interleaved (3)")
    parser.add_argument("--database-url", help="PostgreSQL server to create a fresh cs_bench_* database on")
    parser.add_argument(
        "--access-log",
        choices=["on", "off"],
        help="set the gateway's [server] access_log (default: the product default)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record the gateway with py-spy (on PATH) for the whole run, in py-spy's raw (collapsed) format",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help=f"also run `countersign serve` from the checkout DIR, as the peer {BASELINE!r} (before/after)",
    )
    parser.add_argument(
        "--baseline-python",
        metavar="PYTHON",
        help="the interpreter that runs --baseline (default: this one); e.g. another virtualenv's, to compare "
        "installs with different dependencies",
    )
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"where mcp-proxy is installed ({DEFAULT_CACHE})")
    parser.add_argument("--timeout", type=float, default=1200.0, help="give up after this many seconds (1200)")
    parser.add_argument("--quick", action="store_true", help="small numbers for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.per_round, args.warmup = 2, 20, 5
        args.task_calls, args.throughput_rounds = 5, 1
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
    args.access_log = None if args.access_log is None else args.access_log == "on"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    procs: list[Proc] = []
    pg_name: str | None = None
    with tempfile.TemporaryDirectory(prefix="countersign-peers-") as tmp:
        workdir = Path(tmp)
        try:
            if args.database_url:
                pg_name, database_url = anyio.run(create_pg_database, args.database_url)
                backend = f"PostgreSQL ({pg_name} on {_plain_pg(args.database_url).host})"
            else:
                database_url = f"sqlite:///{workdir / 'countersign.db'}"
                backend = "SQLite on disk"

            async def bounded() -> None:
                with anyio.fail_after(args.timeout):
                    await run(args, workdir, procs, database_url, backend)

            anyio.run(bounded)
        except Exception as exc:
            for leaf in leaf_exceptions(exc)[:5]:
                print(f"bench: failed: {type(leaf).__name__}: {leaf}", file=sys.stderr)
            for proc in procs:
                print(f"--- {proc.name} log tail:\n{proc.log_tail()}", file=sys.stderr)
            return 1
        finally:
            for proc in reversed(procs):
                if proc.name == "py-spy" and proc.popen.poll() is None:
                    proc.popen.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                    proc.popen.wait(timeout=30)
                proc.stop()
            if pg_name and args.database_url:
                anyio.run(drop_pg_database, args.database_url, pg_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
