"""Benchmark the Countersign gateway: passthrough latency added, and 1,000 calls held at once.

Run from the repository root:  .venv/bin/python bench/bench_gateway.py [--quick] [--database-url URL]
See bench/README.md for what each figure means. Everything runs on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.demo import DEMO_POLICY  # noqa: E402  (needs the repository root on sys.path)

AGENT_TOKEN = "bench-agent-token"
APPROVER_TOKEN = "bench-approver-token"
READ_TOOL = "ibkr_get_open_orders"
HELD_TOOL = "ibkr_cancel_order"
# The approver API lists at most 1,000 requests per page: the bench counts pending calls by the API's per-agent
# counts and approves them a page at a time (each listing returns the next requests still pending).
API_PAGE = 1000
# An approve request that got no answer at all is sent again, at most this many times in all.
APPROVE_ATTEMPTS = 3
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- figures


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    n: int
    p50: float
    p99: float
    mean: float
    maximum: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Summary:
        ms = [s * 1000 for s in seconds]
        if not ms:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(len(ms), percentile(ms, 50), percentile(ms, 99), sum(ms) / len(ms), max(ms))

    def row(self, label: str) -> str:
        return (
            f"  {label:<34} n={self.n:<5} p50 {self.p50:9.2f} ms   p99 {self.p99:9.2f} ms"
            f"   mean {self.mean:9.2f} ms   max {self.maximum:9.2f} ms"
        )


# ---- subprocesses


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"{key} not in /proc/{self.pid}/status")

    def rss_kib(self) -> int:
        return self._status("VmRSS")

    def hwm_kib(self) -> int:
        return self._status("VmHWM")

    def threads(self) -> int:
        return self._status("Threads")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_seconds(self) -> float:
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """User and system CPU seconds so far."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; its log ends:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


def start_process(name: str, argv: list[str], workdir: Path, procs: list[Proc], *, cwd: Path = REPO) -> Proc:
    log_path = workdir / f"{name}.log"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    with log_path.open("wb") as sink:
        popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
    proc = Proc(name, popen, log_path)
    procs.append(proc)
    return proc


async def wait_healthy(proc: Proc, url: str, ready: Callable[[dict[str, Any]], bool], within: float = 60) -> None:
    async with httpx2.AsyncClient(timeout=2.0, trust_env=False) as http:
        with anyio.fail_after(within):
            while True:
                proc.check_alive()
                with contextlib.suppress(httpx2.HTTPError, ValueError):
                    response = await http.get(url)
                    if response.status_code == 200 and ready(response.json()):
                        return
                await anyio.sleep(0.1)


async def start_broker(workdir: Path, procs: list[Proc]) -> tuple[Proc, str]:
    """The paper broker as a streamable HTTP upstream on a free port, once healthy: its process and MCP URL."""
    port = free_port()
    broker = start_process(
        "broker", [sys.executable, "-m", "gateway.paper_broker", "--http", str(port)], workdir, procs
    )
    await wait_healthy(broker, f"http://127.0.0.1:{port}/health", lambda body: body.get("status") == "ok")
    return broker, f"http://127.0.0.1:{port}/mcp"


# ---- configuration


def bench_policy() -> dict[str, Any]:
    """DEMO_POLICY with the agent-wide rate limit out of the way and a long approval timeout."""
    policy = copy.deepcopy(DEMO_POLICY)
    policy["all_tools"] = {"limits": [{"counter": "all", "window": "minute", "max": 10_000_000, "scope": "grant"}]}
    policy["tools"][HELD_TOOL]["approval"]["timeout"] = "2h"
    return policy


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def gateway_config(
    workdir: Path,
    *,
    port: int,
    broker_url: str,
    database_url: str,
    progress_interval: float,
    poll_interval: float,
    held_max: int,
) -> Path:
    policy_file = workdir / "policy.json"
    policy_file.write_text(json.dumps(bench_policy(), indent=2))
    sections: list[tuple[str, dict[str, Any]]] = [
        (
            "[server]",
            {
                "host": "127.0.0.1",
                "port": port,
                "database_url": database_url,
                "progress_interval": progress_interval,
                "poll_interval": poll_interval,
            },
        ),
        # A shared database (PostgreSQL) needs a configured key; one for every backend keeps the runs alike.
        ("[audit]", {"key": secrets.token_hex(32)}),
        ("[policy]", {"file": str(policy_file), "watch": True}),
        # One bench agent holds every call: its share of pending requests must cover them all.
        ("[agent_limits]", {"max_pending_per_agent": held_max}),
        ("[[upstreams]]", {"name": "paper", "url": broker_url, "call_timeout": "60s", "connect_timeout": "20s"}),
        # The bench's clients wait as long as it takes (their read timeout is the run's budget).
        ("[[agents]]", {"name": "bench", "token": AGENT_TOKEN, "max_hold": "none"}),
        ("[[approvers]]", {"name": "alice", "groups": ["traders"], "api_token": APPROVER_TOKEN}),
    ]
    text = "\n".join(
        header + "\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in body.items())
        for header, body in sections
    )
    path = workdir / "countersign.toml"
    path.write_text(text)
    return path


# ---- PostgreSQL: a fresh database per run


def _plain_pg(url: str) -> Any:
    from sqlalchemy.engine import make_url

    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    return make_url(url).set(drivername="postgresql")


async def create_pg_database(server_url: str) -> tuple[str, str]:
    import asyncpg  # type: ignore[import-untyped]

    name = f"cs_bench_{secrets.token_hex(5)}"
    admin = await asyncpg.connect(_plain_pg(server_url).render_as_string(hide_password=False), timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, _plain_pg(server_url).set(database=name).render_as_string(hide_password=False)


async def drop_pg_database(server_url: str, name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(_plain_pg(server_url).render_as_string(hide_password=False), timeout=10)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# ---- clients


@asynccontextmanager
async def mcp_client(
    url: str, *, mode: str, token: str | None = None, read_timeout: float = 60.0, connections: int = 20
) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(30.0, read=read_timeout),
            limits=httpx2.Limits(
                max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0
            ),
            trust_env=False,
        ) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=read_timeout) as client,
    ):
        yield client


def text_of(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- 1. passthrough latency


# What the gateway answers while its upstream connection is being re-established (see README, "Known issues").
RECONNECT_ERRORS = ("[UPSTREAM UNAVAILABLE]", "[UPSTREAM ERROR]")


@dataclass
class PassthroughRun:
    mode: str
    direct: list[float]
    via: list[float]
    gateway_cpu_per_call_ms: float
    protocol_direct: str | None
    protocol_via: str | None
    # Pairs dropped because the gateway answered an upstream error (it was reconnecting upstream), by tag.
    dropped: Counter[str]


async def passthrough(
    direct_url: str, gateway_url: str, gateway: Proc, mode: str, n: int, warmup: int
) -> PassthroughRun:
    async with (
        mcp_client(direct_url, mode=mode) as direct,
        mcp_client(gateway_url, mode=mode, token=AGENT_TOKEN) as via,
    ):

        async def timed(client: Client) -> tuple[float, str | None]:
            """Seconds taken, and None or why the call failed."""
            started = time.perf_counter()
            result = await client.call_tool(READ_TOOL, {})
            elapsed = time.perf_counter() - started
            return elapsed, (text_of(result) if result.is_error else None)

        for _ in range(warmup):
            for client in (direct, via):
                _, error = await timed(client)
                if error and not error.startswith(RECONNECT_ERRORS):
                    raise RuntimeError(f"warm-up {READ_TOOL} failed: {short(error)}")
        direct_times: list[float] = []
        via_times: list[float] = []
        dropped: Counter[str] = Counter()
        calls = 0
        cpu0 = gateway.cpu_seconds()
        while len(via_times) < n:
            # Alternate which goes first, so neither side always follows the other's cache and scheduler state.
            order = [direct, via] if calls % 2 == 0 else [via, direct]
            pair = {id(client): await timed(client) for client in order}
            calls += 1
            errors = [error for _, error in pair.values() if error]
            if errors:
                if all(error.startswith(RECONNECT_ERRORS) for error in errors) and pair[id(direct)][1] is None:
                    dropped[short(errors[0], 110)] += 1
                    continue
                raise RuntimeError(f"{READ_TOOL} failed: {short(errors[0])}")
            direct_times.append(pair[id(direct)][0])
            via_times.append(pair[id(via)][0])
        cpu = gateway.cpu_seconds() - cpu0
        return PassthroughRun(
            mode, direct_times, via_times, cpu * 1000 / calls, direct.protocol_version, via.protocol_version, dropped
        )


@dataclass
class ThroughputRun:
    mode: str
    tasks: int
    calls: int
    direct_per_second: float
    via_per_second: float
    gateway_cpu_per_call_ms: float


async def throughput(
    direct_url: str, gateway_url: str, gateway: Proc, mode: str, tasks: int, per_task: int
) -> ThroughputRun:
    """`tasks` concurrent tasks on one client session each side, `per_task` calls each: calls per second."""
    rates: dict[str, float] = {}
    cpu_ms = 0.0
    for side, url, token in (("direct", direct_url, None), ("via", gateway_url, AGENT_TOKEN)):
        async with mcp_client(url, mode=mode, token=token, connections=tasks + 2) as client:
            for _ in range(5):
                await client.call_tool(READ_TOOL, {})

            async def worker() -> None:
                for _ in range(per_task):
                    result = await client.call_tool(READ_TOOL, {})
                    if result.is_error:
                        raise RuntimeError(f"{READ_TOOL} failed under load: {short(text_of(result))}")

            cpu0, started = gateway.cpu_seconds(), time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(tasks):
                    tg.start_soon(worker)
            rates[side] = tasks * per_task / (time.perf_counter() - started)
            if side == "via":
                cpu_ms = (gateway.cpu_seconds() - cpu0) * 1000 / (tasks * per_task)
    return ThroughputRun(mode, tasks, tasks * per_task, rates["direct"], rates["via"], cpu_ms)


def report_throughput(run: ThroughputRun) -> list[str]:
    return [
        f"Throughput: {READ_TOOL}, {run.tasks} concurrent tasks on one session, {run.calls} calls per side; "
        f"mode={run.mode}",
        f"  {'direct to upstream':<34} {run.direct_per_second:9.0f} calls/s",
        f"  {'through the gateway':<34} {run.via_per_second:9.0f} calls/s "
        f"({run.via_per_second / run.direct_per_second:.2f} x direct)",
        f"  {'gateway CPU per call':<34} {run.gateway_cpu_per_call_ms:.2f} ms",
    ]


# ---- 2. held calls


@dataclass
class HeldCall:
    order_id: int
    session: int
    sent: float = math.nan
    first_progress: float = math.nan
    progress_notices: int = 0
    returned: float = math.nan
    ok: bool = False
    detail: str = ""
    approval_id: str = ""
    approve_sent: float = math.nan
    approve_done: float = math.nan
    approve_status: int = 0
    approve_error: str = ""
    approve_retries: int = 0


@dataclass
class HeldRun:
    mode: str
    sessions: int
    calls: list[HeldCall]
    rss_idle_kib: int
    rss_sessions_kib: int
    rss_parked_kib: int
    rss_drained_kib: int
    hwm_kib: int
    client_rss_delta_kib: int
    fds_parked: int
    threads_parked: int
    park_seconds: float
    idle_window: float
    idle_cpu_fraction: float
    drain_seconds: float
    approve_cpu_per_call_ms: float
    park_cpu_per_call_ms: float
    # The bench process's own CPU time over the approvals (its clients: approver API, agents' streams).
    bench_approve_cpu_per_call_ms: float = math.nan
    # The gateway's system CPU (the kernel's side of its sockets and files) over the approvals, of the total.
    approve_sys_per_call_ms: float = math.nan
    drain_started: float = math.nan  # perf_counter() when the approvals began (the listing of pending ones first)


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listening socket's accept queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=False)).get("ListenOverflows", 0))
    return 0


def own_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def place_orders(broker_url: str, count: int) -> list[int]:
    """Working limit orders in the paper book, one per held cancel, placed on the broker directly."""
    arguments = {
        "contract": {"symbol": "AAPL", "secType": "STK", "exchange": "SMART", "currency": "USD"},
        "order": {"action": "BUY", "totalQuantity": 1, "orderType": "LMT", "lmtPrice": 100.0, "tif": "GTC"},
        "confirm": True,
        "dry_run": False,
        "transmit": True,
    }
    ids: list[int] = []
    limiter = anyio.Semaphore(16)
    async with mcp_client(broker_url, mode="legacy", connections=20) as client:

        async def place() -> None:
            async with limiter:
                result = await client.call_tool("ibkr_place_order", arguments)
            trade = (result.structured_content or {}).get("trade") or {}
            if result.is_error or not trade:
                raise RuntimeError(f"placing an order failed: {short(text_of(result))}")
            ids.append(int(trade["order"]["orderId"]))

        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(place)
    return sorted(ids)


async def pending_page(api: httpx2.AsyncClient, limit: int) -> dict[str, Any]:
    for attempt in range(3):
        try:
            response = await api.get("/api/approvals", params={"status": "pending", "limit": str(limit)})
            break
        except httpx2.TransportError:  # e.g. a kept-alive connection the server closed just then
            if attempt == 2:
                raise
    response.raise_for_status()
    return dict(response.json())


async def pending_approvals(api: httpx2.AsyncClient) -> list[dict[str, Any]]:
    """The first page of pending requests (at most API_PAGE, soonest to expire first)."""
    return list((await pending_page(api, API_PAGE))["approvals"])


async def pending_count(api: httpx2.AsyncClient) -> int:
    """How many requests are pending, whatever their number: the API's per-agent counts, not a listing."""
    return sum(int(n) for n in (await pending_page(api, 1))["pending_by_agent"].values())


async def held_calls(
    gateway_url: str,
    gateway: Proc,
    order_ids: list[int],
    *,
    mode: str,
    sessions: int,
    approve_concurrency: int,
    idle_seconds: float,
    budget: float,
    opening: int,
    profile: Callable[[], Callable[[], None]] | None = None,
) -> HeldRun:
    held = len(order_ids)
    calls = [HeldCall(order_id, i % sessions) for i, order_id in enumerate(order_ids)]
    by_order = {c.order_id: c for c in calls}
    per_session = math.ceil(held / sessions)
    rss_idle = gateway.rss_kib()
    client_rss0 = own_rss_kib()
    async with (
        httpx2.AsyncClient(
            base_url=gateway_url.removesuffix("/mcp"),
            headers={"Authorization": f"Bearer {APPROVER_TOKEN}"},
            # An approver waiting this long is itself a finding, so wait rather than fail the run.
            timeout=httpx2.Timeout(30.0, read=budget),
            # Shorter than uvicorn's 5 s keep-alive, so no request goes out on a connection the server is closing.
            limits=httpx2.Limits(max_connections=approve_concurrency + 2, keepalive_expiry=2.0),
            trust_env=False,
        ) as api,
        AsyncExitStack() as stack,
    ):
        clients = [
            await stack.enter_async_context(
                mcp_client(gateway_url, mode=mode, token=AGENT_TOKEN, read_timeout=budget, connections=per_session + 4)
            )
            for _ in range(sessions)
        ]
        # The first call of a tool name may make the client list tools; do it now, not inside the timing.
        for client in clients:
            await client.list_tools()
        await anyio.sleep(1)
        rss_sessions = gateway.rss_kib()

        all_returned = anyio.Event()
        outstanding = [held]
        # Calls being opened at once: a slot is held from sending a call until its first notice (or its end).
        # Ten thousand started in one go starve this process's own loop: connections it opened sit unread
        # for longer than the server's keep-alive or its own connect timeout, and the run fails on the client.
        slots = anyio.Semaphore(opening)

        async def hold(call: HeldCall) -> None:
            try:
                await call_held(call)
            finally:
                outstanding[0] -= 1
                if outstanding[0] == 0:
                    all_returned.set()

        async def call_held(call: HeldCall) -> None:
            slot = [True]

            def free() -> None:
                if slot[0]:
                    slot[0] = False
                    slots.release()

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                if call.progress_notices == 0:
                    call.first_progress = time.perf_counter()
                    free()
                call.progress_notices += 1

            await slots.acquire()
            call.sent = time.perf_counter()
            try:
                result = await clients[call.session].call_tool(
                    HELD_TOOL,
                    {"orderId": call.order_id, "confirm": True},
                    read_timeout_seconds=budget,
                    progress_callback=on_progress,
                )
            except Exception as exc:  # recorded and reported, the run goes on
                call.returned = time.perf_counter()
                call.detail = f"{type(exc).__name__}: {exc}"
                return
            finally:
                free()
            call.returned = time.perf_counter()
            structured = result.structured_content or {}
            call.ok = not result.is_error and structured.get("orderId") == call.order_id
            trade_status = ((structured.get("trade") or {}).get("orderStatus") or {}).get("status")
            call.detail = f"orderStatus={trade_status}" if call.ok else short(text_of(result))

        async def approve(call: HeldCall, limiter: anyio.Semaphore) -> None:
            async with limiter:
                call.approve_sent = time.perf_counter()
                try:
                    for attempt in range(APPROVE_ATTEMPTS):
                        try:
                            response = await api.post(f"/api/approvals/{call.approval_id}/approve", json={})
                        except httpx2.TransportError as exc:
                            # No answer at all (a pooled connection the server had just closed): ask again, or the
                            # agent waits for a decision that never comes. Recorded and reported either way; a 409
                            # on the next attempt means the first one was recorded.
                            call.approve_error = f"{type(exc).__name__}: {exc}"
                            call.approve_retries = attempt + 1
                            continue
                        call.approve_status = response.status_code
                        return
                except httpx2.HTTPError as exc:  # recorded and reported; the call may still have been approved
                    call.approve_error = f"{type(exc).__name__}: {exc}"
                finally:
                    call.approve_done = time.perf_counter()

        async with anyio.create_task_group() as tg:
            log(f"holding {held} {HELD_TOOL} calls over {sessions} {mode} sessions, {opening} being opened at a time")
            overflows0 = listen_overflows()
            cpu0, bench_cpu0 = gateway.cpu_seconds(), time.process_time()
            fired = time.perf_counter()
            for call in calls:
                tg.start_soon(hold, call)
            # Counting costs the gateway some CPU, so ask the API rarely until every client has had its first
            # "waiting" notice, then confirm there.
            last_poll = -math.inf
            with anyio.fail_after(max(120.0, held * 0.5)):
                while True:
                    notified = sum(1 for c in calls if c.progress_notices)
                    if notified >= held or time.perf_counter() - last_poll >= 5:
                        last_poll = time.perf_counter()
                        if await pending_count(api) >= held:
                            break
                    finished = [c for c in calls if not math.isnan(c.returned)]
                    if finished:
                        raise RuntimeError(
                            f"{len(finished)} held call(s) returned before any decision, e.g. {finished[0].detail}"
                        )
                    await anyio.sleep(0.1 if notified >= held else 0.5)
            park_cpu = gateway.cpu_seconds() - cpu0
            park_bench_cpu = time.process_time() - bench_cpu0
            confirmed = time.perf_counter() - fired
            notices = [c.first_progress for c in calls if not math.isnan(c.first_progress)]
            park_seconds = (max(notices) if len(notices) == held else time.perf_counter()) - fired
            log(
                f"all {held} parked after {park_seconds:.1f}s (API confirmed at {confirmed:.1f}s); CPU per park: "
                f"gateway {park_cpu * 1000 / held:.2f} ms, this bench's clients {park_bench_cpu * 1000 / held:.2f} ms; "
                f"{listen_overflows() - overflows0} connection(s) dropped on full accept queues meanwhile; "
                f"measuring memory and idle CPU for {idle_seconds:g}s"
            )
            await anyio.sleep(1)
            rss_parked = gateway.rss_kib()
            fds, threads = gateway.fds(), gateway.threads()
            client_rss_delta = own_rss_kib() - client_rss0
            idle0, t0 = gateway.cpu_seconds(), time.perf_counter()
            await anyio.sleep(idle_seconds)
            idle_cpu = (gateway.cpu_seconds() - idle0) / (time.perf_counter() - t0)
            rss_waited = gateway.rss_kib()
            # Logged at once as well: the approvals that follow can take long on a loaded machine.
            log(
                f"  held {held}: gateway RSS {rss_sessions} KiB with the sessions open, {rss_parked} KiB held "
                f"({(rss_parked - rss_sessions) / held:.1f} KiB per held call), {rss_waited} KiB after the "
                f"{idle_seconds:g}s window ({(rss_waited - rss_sessions) / held:.1f} KiB per held call); "
                f"CPU while held {idle_cpu:.1%}"
            )
            log(f"approving {held} requests, {approve_concurrency} at a time, {API_PAGE} listed at a time")
            limiter = anyio.Semaphore(approve_concurrency)
            stop_profile = profile() if profile is not None else None
            cpu1, bench_cpu1, sys1 = gateway.cpu_seconds(), time.process_time(), gateway.cpu_split()[1]
            drain_start = time.perf_counter()
            drained = anyio.Event()

            async def report_drain() -> None:
                while not drained.is_set():
                    with anyio.move_on_after(30):
                        await drained.wait()
                    if not drained.is_set():
                        answered = sum(1 for c in calls if not math.isnan(c.approve_done))
                        log(f"  {answered}/{held} approve responses, {held - outstanding[0]}/{held} results so far")

            tg.start_soon(report_drain)
            with anyio.fail_after(max(120.0, held * 1.0)):
                # A page at a time: once a page's approvals are answered, the next listing shows the next page.
                while True:
                    fresh = []
                    for request in await pending_approvals(api):
                        call = by_order.get(int(request["arguments"]["orderId"]))
                        if call is not None and not call.approval_id:
                            call.approval_id = request["id"]
                            fresh.append(call)
                    if not fresh:
                        break
                    async with anyio.create_task_group() as approvals:
                        for call in fresh:
                            approvals.start_soon(approve, call, limiter)
                missing = [c for c in calls if not c.approval_id]
                if missing:
                    raise RuntimeError(
                        f"{len(missing)} call(s) have no pending approval, e.g. order {missing[0].order_id}"
                    )
                await all_returned.wait()
            drained.set()
            drain_seconds = time.perf_counter() - drain_start
            approve_cpu = gateway.cpu_seconds() - cpu1
            bench_cpu = time.process_time() - bench_cpu1
            approve_sys = gateway.cpu_split()[1] - sys1
            if stop_profile is not None:
                stop_profile()
        await anyio.sleep(1)
        rss_drained = gateway.rss_kib()
    return HeldRun(
        mode=mode,
        sessions=sessions,
        calls=calls,
        rss_idle_kib=rss_idle,
        rss_sessions_kib=rss_sessions,
        rss_parked_kib=rss_parked,
        rss_drained_kib=rss_drained,
        hwm_kib=gateway.hwm_kib(),
        client_rss_delta_kib=client_rss_delta,
        fds_parked=fds,
        threads_parked=threads,
        park_seconds=park_seconds,
        idle_window=idle_seconds,
        idle_cpu_fraction=idle_cpu,
        drain_seconds=drain_seconds,
        approve_cpu_per_call_ms=approve_cpu * 1000 / held,
        park_cpu_per_call_ms=park_cpu * 1000 / held,
        bench_approve_cpu_per_call_ms=bench_cpu * 1000 / held,
        approve_sys_per_call_ms=approve_sys * 1000 / held,
        drain_started=drain_start,
    )


# ---- report


def report_passthrough(run: PassthroughRun) -> list[str]:
    direct, via = Summary.of(run.direct), Summary.of(run.via)
    return [
        f"Passthrough: {READ_TOOL}, {direct.n} sequential calls each, interleaved; mode={run.mode} "
        f"(protocol direct {run.protocol_direct}, via gateway {run.protocol_via})",
        direct.row("direct to upstream"),
        via.row("through the gateway"),
        f"  {'added by the gateway':<34} p50 {via.p50 - direct.p50:+9.2f} ms   p99 {via.p99 - direct.p99:+9.2f} ms"
        f"   mean {via.mean - direct.mean:+9.2f} ms",
        f"  {'gateway CPU per call':<34} {run.gateway_cpu_per_call_ms:.2f} ms (utime+stime of the gateway process)",
        *(
            f"  {count} pair(s) dropped and redone, the gateway answered: {error}"
            for error, count in run.dropped.most_common()
        ),
    ]


def decisions_sustained(calls: list[HeldCall]) -> str:
    """Decisions answered per second, from the first approve sent to the last approve answered."""
    answered = [c for c in calls if not math.isnan(c.approve_done)]
    if not answered:
        return "  decisions sustained: none answered"
    span = max(c.approve_done for c in answered) - min(c.approve_sent for c in answered)
    rate = len(answered) / span if span > 0 else math.inf
    return f"  decisions sustained: {rate:.0f}/s ({len(answered)} approve responses over {span:.2f} s)"


def approvals_in_flight(run: HeldRun, ok: list[HeldCall]) -> list[str]:
    """Where an approval's time goes: how busy each side was, and how many approved calls were in the gateway."""
    if not ok or run.drain_seconds <= 0:
        return []
    held = len(run.calls)
    gateway_share = run.approve_cpu_per_call_ms * held / 1000 / run.drain_seconds
    bench_share = run.bench_approve_cpu_per_call_ms * held / 1000 / run.drain_seconds
    # Little's law, counted: the mean number of calls between the approve sent and the result back, and of those
    # answered approvals whose result had not come back yet (the approver keeps only its own requests in flight).
    start = min(c.approve_sent for c in ok)
    span = max(c.returned for c in ok) - start
    in_system = sum(c.returned - c.approve_sent for c in ok) / span
    answered_waiting = sum(c.returned - c.approve_done for c in ok) / span
    # The calls not yet approved keep costing what they cost while held (notices, keep-alives): at the rate measured
    # with all of them held, in proportion to how many still wait. What is left is the decisions' own CPU.
    began = start if math.isnan(run.drain_started) else run.drain_started
    waiting_seconds = sum(c.approve_sent - began for c in run.calls if not math.isnan(c.approve_sent))
    # idle_cpu_fraction is the cost of `held` calls waiting: per call and second, idle_cpu_fraction / held.
    waiting_cpu_ms = run.idle_cpu_fraction / held * waiting_seconds * 1000 / held
    return [
        f"  gateway CPU per approved call net of the calls still held meanwhile: "
        f"{run.approve_cpu_per_call_ms - waiting_cpu_ms:.2f} ms ({waiting_cpu_ms:.2f} ms of the "
        f"{run.approve_cpu_per_call_ms:.2f} ms is their waiting, at the held-idle rate); "
        f"{run.approve_sys_per_call_ms:.2f} ms of the total in the kernel (system time)",
        f"  CPU over the approvals: gateway {gateway_share:.0%} of one core, bench process "
        f"{run.bench_approve_cpu_per_call_ms:.2f} ms per approved call ({bench_share:.0%} of one core)",
        f"  approved calls in flight on average: {in_system:.1f} from approve sent to result, "
        f"{answered_waiting:.1f} of them already answered to the approver",
    ]


def report_held(run: HeldRun) -> list[str]:
    held = len(run.calls)
    ok = [c for c in run.calls if c.ok]
    failed = [c for c in run.calls if not c.ok]
    parked = run.rss_parked_kib - run.rss_sessions_kib
    lines = [
        f"Held calls: {held} concurrent {HELD_TOOL} calls over {run.sessions} client sessions, mode={run.mode}; "
        f"each cancels its own working order (placed on the paper broker beforehand)",
        f"  parked all {held} in {run.park_seconds:.2f} s ({held / run.park_seconds:.0f} calls/s; "
        f"gateway CPU {run.park_cpu_per_call_ms:.2f} ms per held call, API poll included)",
        Summary.of([c.first_progress - c.sent for c in run.calls if not math.isnan(c.first_progress)]).row(
            "call sent -> first 'waiting' notice"
        ),
        "  gateway RSS (its own process, /proc/PID/status VmRSS):",
        f"    idle, before sessions   {run.rss_idle_kib / 1024:8.1f} MiB",
        f"    {run.sessions:>3} sessions open       {run.rss_sessions_kib / 1024:8.1f} MiB",
        f"    {held:>4} calls held         {run.rss_parked_kib / 1024:8.1f} MiB   "
        f"(open fds {run.fds_parked}, threads {run.threads_parked})",
        f"    after all returned      {run.rss_drained_kib / 1024:8.1f} MiB   "
        f"(peak VmHWM {run.hwm_kib / 1024:.1f} MiB)",
        f"  memory per held call      {parked / held:8.1f} KiB   (held - sessions open) / {held}",
        f"  client side, for scale    {run.client_rss_delta_kib / held:8.1f} KiB per call in the bench process",
        f"  gateway CPU while {held} calls sit held: {run.idle_cpu_fraction * 100:.1f}% of one core "
        f"(over {run.idle_window:g} s)",
        Summary.of([c.approve_done - c.approve_sent for c in run.calls]).row("approve POST -> its response"),
        Summary.of([c.returned - c.approve_sent for c in ok]).row("approve POST sent -> agent's result"),
        Summary.of([c.returned - c.approve_done for c in ok]).row("approve response -> agent's result"),
        f"  approved all {held} in {run.drain_seconds:.2f} s ({held / run.drain_seconds:.0f} calls/s; "
        f"gateway CPU {run.approve_cpu_per_call_ms:.2f} ms per approved call)",
        decisions_sustained(run.calls),
        *approvals_in_flight(run, ok),
        f"  results: {len(ok)} ok (the broker cancelled the order), {len(failed)} not ok"
        + (" (timings above are over the ok ones)" if failed else ""),
    ]
    kinds = Counter(c.detail.split("]")[0] + "]" if c.detail.startswith("[") else c.detail[:60] for c in failed)
    for kind, count in kinds.most_common():
        example = next(c for c in failed if c.detail.startswith(kind.rstrip("]")))
        lines.append(f"    {count:5d} x {kind}  e.g. order {example.order_id}: {short(example.detail, 200)}")
    statuses = Counter(c.approve_status for c in run.calls)
    retried = [c for c in run.calls if c.approve_retries]
    if retried:
        lines.append(
            f"  {len(retried)} approve request(s) got no answer and were sent again "
            f"(first: {retried[0].approve_error}); a 409 below is such a retry finding it decided"
        )
    if set(statuses) != {200}:
        lines.append(f"  approve HTTP statuses seen (0 = no response): {dict(sorted(statuses.items()))}")
    approve_errors = [c for c in run.calls if c.approve_error and not c.approve_status]
    if approve_errors:
        lines.append(f"  {len(approve_errors)} approve request(s) failed, first: {approve_errors[0].approve_error}")
    return lines


# ---- main


async def run(args: argparse.Namespace, workdir: Path, procs: list[Proc], database_url: str, backend: str) -> None:
    gateway_port = free_port()
    broker, broker_url = await start_broker(workdir, procs)
    config = gateway_config(
        workdir,
        port=gateway_port,
        broker_url=broker_url,
        database_url=database_url,
        progress_interval=args.progress_interval,
        poll_interval=args.poll_interval,
        held_max=max(args.held, 1000),
    )
    gateway = start_process(
        "gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)], workdir, procs
    )
    gateway_base = f"http://127.0.0.1:{gateway_port}"
    await wait_healthy(gateway, f"{gateway_base}/healthz", lambda body: body.get("status") == "ok")
    gateway_url = f"{gateway_base}/mcp"
    log(f"broker pid {broker.pid} at {broker_url}, gateway pid {gateway.pid} on :{gateway_port} ({backend})")

    # Each section goes to stdout as soon as it is measured, so a run that gives up still leaves its figures.
    emit(
        "Countersign gateway benchmark",
        f"  backend {backend}; gateway = `countersign serve` subprocess (pid {gateway.pid}), "
        f"paper broker = subprocess (streamable HTTP, stateless JSON), clients in the bench process; "
        f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}",
        f"  gateway settings: progress_interval {args.progress_interval:g}s, poll_interval {args.poll_interval:g}s, "
        "policy = DEMO_POLICY with all_tools limit raised and a 2h approval timeout",
        "",
    )
    for mode in args.modes:
        log(f"passthrough, mode={mode}: {args.warmup} warm-up + {args.calls} measured calls each way")
        emit(
            *report_passthrough(await passthrough(broker_url, gateway_url, gateway, mode, args.calls, args.warmup)), ""
        )
    if args.tasks:
        for mode in args.modes:
            log(f"throughput, mode={mode}: {args.tasks} tasks x {args.task_calls} calls each way")
            measured = await throughput(broker_url, gateway_url, gateway, mode, args.tasks, args.task_calls)
            emit(*report_throughput(measured), "")
    if args.held:
        log(f"placing {args.held} working orders on the paper broker")
        order_ids = await place_orders(broker_url, args.held)
        output = args.profile_approve
        profile = (lambda: approve_profile(gateway, output, workdir, procs)) if output else None
        result = await held_calls(
            gateway_url,
            gateway,
            order_ids,
            mode=args.held_mode,
            sessions=min(args.sessions, args.held),
            approve_concurrency=args.approve_concurrency,
            idle_seconds=args.idle_seconds,
            budget=args.timeout,
            opening=args.opening,
            profile=profile,
        )
        emit(*report_held(result), "")
    gateway.check_alive()
    emit(*gateway_log_summary(gateway))


def py_spy() -> str:
    """py-spy beside this Python (a venv's), else on PATH; "" when there is none."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy") or ""


def approve_profile(gateway: Proc, output: str, workdir: Path, procs: list[Proc]) -> Callable[[], None]:
    """Record the gateway with py-spy (beside this Python, or on PATH) until the returned function is called."""
    argv = [py_spy(), "record", "--pid", str(gateway.pid), "--rate", "200", "--format", "raw", "--output", output]
    proc = start_process("py-spy", argv, workdir, procs)

    def stop() -> None:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            proc.popen.wait(timeout=60)

    return stop


def emit(*lines: str) -> None:
    print("\n".join(lines), flush=True)


def gateway_log_summary(gateway: Proc) -> list[str]:
    gateway_log = gateway.log_tail(1_000_000).splitlines()
    errors = [line for line in gateway_log if " ERROR " in line or "Traceback" in line]
    reconnects = [line for line in gateway_log if "reconnecting in" in line]
    lines = []
    if reconnects:
        lines.append(f"gateway log: upstream reconnected {len(reconnects)} time(s); first: {short(reconnects[0], 200)}")
    if errors:
        lines.append(f"gateway log: {len(errors)} error line(s); first: {short(errors[0], 300)}")
    return lines or ["gateway log: no errors, no upstream reconnects"]


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_exceptions(inner)]
    return [exc]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500, help="measured passthrough calls per side and mode (500)")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up calls per side and mode (50)")
    parser.add_argument("--modes", default="legacy,auto", help="client modes for passthrough: legacy,auto")
    parser.add_argument("--tasks", type=int, default=20, help="concurrent tasks for throughput, 0 to skip (20)")
    parser.add_argument("--task-calls", type=int, default=100, help="calls per task for throughput (100)")
    parser.add_argument("--held", type=int, default=1000, help="calls held at once, 0 to skip")
    parser.add_argument("--held-mode", default="legacy", choices=["legacy", "auto"], help="client mode, held calls")
    parser.add_argument("--sessions", type=int, default=40, help="client sessions the held calls are spread over")
    parser.add_argument(
        "--opening", type=int, default=500, help="held calls being opened at once (sent, no notice yet) (500)"
    )
    parser.add_argument("--approve-concurrency", type=int, default=20, help="approve requests in flight at once")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="window for CPU use while calls sit held")
    parser.add_argument("--progress-interval", type=float, default=5.0, help="gateway [server] progress_interval")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="gateway [server] poll_interval")
    parser.add_argument(
        "--database-url",
        help="PostgreSQL server, e.g. postgresql://postgres@127.0.0.1:5432/test: the bench creates a fresh "
        "database cs_bench_* there (connecting to the named one) and drops it afterwards. Default: SQLite in a "
        "temporary directory",
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="give up after this many seconds (1200)")
    parser.add_argument("--quick", action="store_true", help="small numbers for a smoke run")
    parser.add_argument(
        "--profile-approve",
        metavar="FILE",
        help="record the gateway with py-spy over the approvals only, in py-spy's raw (collapsed) format "
        "(summarise it with bench/profile_summary.py)",
    )
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the gateway's and broker's logs into DIR at the end")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.warmup, args.held = min(args.calls, 50), min(args.warmup, 10), min(args.held, 50)
        args.task_calls = min(args.task_calls, 20)
        args.sessions, args.idle_seconds = min(args.sessions, 5), min(args.idle_seconds, 2.0)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.profile_approve:
        if not py_spy():
            parser.error("--profile-approve needs py-spy (pip install py-spy)")
        args.profile_approve = str(Path(args.profile_approve).resolve())
    if args.held < 0:
        parser.error("--held must be 0 or more")
    if args.sessions < 1 or args.approve_concurrency < 1 or args.calls < 1:
        parser.error("--sessions, --approve-concurrency and --calls must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    procs: list[Proc] = []
    pg_name: str | None = None
    with tempfile.TemporaryDirectory(prefix="countersign-bench-") as tmp:
        workdir = Path(tmp)
        try:
            if args.database_url:
                pg_name, database_url = anyio.run(create_pg_database, args.database_url)
                backend = f"PostgreSQL (fresh database {pg_name} on {_plain_pg(args.database_url).host})"
            else:
                database_url = f"sqlite:///{workdir / 'countersign.db'}"
                backend = "SQLite (temporary file)"

            async def bounded() -> None:
                with anyio.fail_after(args.timeout):
                    await run(args, workdir, procs, database_url, backend)

            anyio.run(bounded)
        except TimeoutError:
            print(f"bench: gave up after {args.timeout:g}s", file=sys.stderr)
            gateways = [proc for proc in procs if proc.name == "gateway"]
            if gateways:
                emit(*gateway_log_summary(gateways[0]))
            for proc in procs:
                print(f"--- {proc.name} log tail:\n{proc.log_tail()}", file=sys.stderr)
            return 1
        except Exception as exc:
            # Task groups nest the cause deeper than a traceback shows; name the innermost errors plainly.
            leaves = leaf_exceptions(exc)
            traceback.print_exception(leaves[0])
            for leaf in leaves[:5]:
                print(f"bench: failed: {type(leaf).__name__}: {leaf}", file=sys.stderr)
            return 1
        finally:
            for proc in reversed(procs):
                proc.stop()
                if args.keep_logs:
                    Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
                    shutil.copy(proc.log_path, Path(args.keep_logs) / proc.log_path.name)
            if pg_name and args.database_url:
                anyio.run(drop_pg_database, args.database_url, pg_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
