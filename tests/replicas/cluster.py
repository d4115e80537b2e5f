"""Countersign as teams deploy it: replicas of `countersign serve` on one PostgreSQL database behind HAProxy.

A `Cluster` runs, as real processes on loopback: the paper broker over HTTP (one upstream shared by
every replica, writing each call it receives to a ledger file), three `countersign serve` replicas
on one configuration file, and HAProxy in front with `deploy/haproxy.cfg` exactly as shipped. It
knows nothing about pytest, so the benchmarks use it too. Its database is one the caller made;
`create_database` / `drop_database` make and drop a fresh one on a PostgreSQL server.

Tests reach it the way agents and approvers do: MCP clients (`agent`) and the approver API
(`api`) through the balancer, or a given replica directly; `kill` (SIGKILL) and `restart` one.
Every response through the balancer names the replica that answered (`X-Countersign-Replica`), and
`agent(..., seen=[...])` collects those names, so a test knows which replica holds a call.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.audit_key import audit_section

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CONFIG = REPO / "deploy" / "haproxy.cfg"
REPLICA_HEADER = "x-countersign-replica"
REPLICAS = ("replica-1", "replica-2", "replica-3")  # the server names in deploy/haproxy.cfg

AGENT_TOKEN = "agent-token-alpha"
OTHER_AGENT_TOKEN = "agent-token-bravo"
ALICE_TOKEN = "alice-api-token"
BOB_TOKEN = "bob-api-token"
CAROL_TOKEN = "carol-api-token"

HELD_TOOL = "ibkr_cancel_order"
READ_TOOL = "ibkr_get_open_orders"

# Reads pass, a cancel is held for a trader, nothing is rate limited unless a test's policy says so.
CLUSTER_POLICY: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "tools": {
        "ibkr_get_*": {},
        "ibkr_place_order": {},
        HELD_TOOL: {
            "require_approval": [{"conditions": [], "reason": "Cancelling a live order needs a human."}],
            "approval": {"timeout": "15m", "approvers": ["group:traders"], "quorum": 1, "channels": ["web"]},
        },
    },
}

A_LIMIT_ORDER = {
    "contract": {"symbol": "AAPL", "secType": "STK", "exchange": "SMART", "currency": "USD"},
    "order": {"action": "BUY", "totalQuantity": 1, "orderType": "LMT", "lmtPrice": 100.0, "tif": "GTC"},
    "confirm": True,
    "dry_run": False,
    "transmit": True,
}


class ClusterError(RuntimeError):
    """A part of the cluster did not start or answer; the message ends with the logs that say why."""


def haproxy_binary() -> str | None:
    # Debian puts it in /usr/sbin, which is not on every PATH.
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    return found


def haproxy_problem() -> str | None:
    """None when HAProxy can be run here; otherwise why not (a skip reason)."""
    if haproxy_binary() is None:
        return "haproxy is not installed (Debian: apt-get install haproxy)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- databases


def create_database(admin_url: str, prefix: str = "cs_replicas") -> str:
    """A fresh, empty database on the server of `admin_url`; returns its URL."""
    import asyncpg

    name = f"{prefix}_{secrets.token_hex(6)}"

    async def create() -> None:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    asyncio.run(create())
    return f"{admin_url.rsplit('/', 1)[0]}/{name}"


def drop_database(admin_url: str, database_url: str) -> None:
    import asyncpg

    name = database_url.rsplit("/", 1)[1]

    async def drop() -> None:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(drop())


# ---- processes


@dataclass
class Process:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise ClusterError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no shutdown, no goodbyes."""
        if self.alive:
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def terminate(self) -> None:
        if self.alive:
            assert self.popen is not None
            self.popen.terminate()

    def stop(self) -> None:
        if self.alive:
            assert self.popen is not None
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return f"--- {self.name}: no log"
        return f"--- {self.name} ({self.log}):\n" + "\n".join(text.splitlines()[-lines:])


@dataclass
class Replica(Process):
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")


def _get(url: str, token: str | None = None, timeout: float = 2.0) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _method(request: httpx2.Request) -> str | None:
    """The JSON-RPC method an MCP POST carries (None for anything else)."""
    if request.method != "POST":
        return None
    try:
        body = json.loads(request.content)
    except ValueError:
        return None
    return body.get("method") if isinstance(body, dict) else None


# ---- the cluster


class Cluster:
    """The paper broker, three `countersign serve` replicas on `database_url`, and HAProxy in front."""

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        *,
        policy: Mapping[str, Any] | None = None,
        server: Mapping[str, Any] | None = None,
        extra_toml: str = "",
    ) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.policy = dict(policy or CLUSTER_POLICY)
        self.server = {"progress_interval": "1s", **(server or {})}
        self.extra_toml = extra_toml
        self.ledger_path = workdir / "ledger.jsonl"
        self.config_path = workdir / "countersign.toml"
        self.broker_port = free_port()
        self.port = free_port()
        broker = [sys.executable, "-m", "gateway.paper_broker", "--http", str(self.broker_port)]
        self.broker = Process(
            "paper broker",
            [*broker, "--ledger", str(self.ledger_path)],
            workdir / "broker.log",
        )
        self.replicas = [
            Replica(name, self._countersign("serve", "--port", str(port)), workdir / f"{name}.log", port=port)
            for name, port in ((name, free_port()) for name in REPLICAS)
        ]
        self.haproxy = Process(
            "haproxy",
            [haproxy_binary() or "haproxy", "-db", "-f", str(HAPROXY_CONFIG)],
            workdir / "haproxy.log",
            env={
                "COUNTERSIGN_LISTEN": f"127.0.0.1:{self.port}",
                **{f"COUNTERSIGN_REPLICA_{i}": f"127.0.0.1:{r.port}" for i, r in enumerate(self.replicas, 1)},
            },
        )

    @property
    def url(self) -> str:
        """The balancer: where agents and approvers connect."""
        return f"http://127.0.0.1:{self.port}"

    def replica(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    def _countersign(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gateway.cli", *args, "--config", str(self.config_path)]

    # ---- starting and stopping

    def start(self, *, within: float = 90.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + within
        try:
            self.broker.start()
            self._write_config()
            upgrade = subprocess.run(
                self._countersign("db", "upgrade"), cwd=REPO, capture_output=True, text=True, timeout=60, check=False
            )
            if upgrade.returncode != 0:
                raise ClusterError(f"countersign db upgrade failed:\n{upgrade.stdout}{upgrade.stderr}")
            self._wait(lambda: _get(f"http://127.0.0.1:{self.broker_port}/health")[0] == 200, deadline, self.broker)
            for replica in self.replicas:
                replica.start()
            for replica in self.replicas:
                self._wait(lambda r=replica: self._ready(r), deadline, replica)  # type: ignore[misc]
            self.haproxy.start()
            self._wait(lambda: self.balanced() == set(REPLICAS), deadline, self.haproxy)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        processes = (self.haproxy, *self.replicas, self.broker)
        for process in processes:  # all at once: each may take a few seconds to drain
            process.terminate()
        for process in processes:
            process.stop()

    def kill(self, name: str) -> None:
        self.replica(name).kill()

    def restart(self, name: str, *, within: float = 60.0) -> None:
        """Start a replica again (after `kill`) and wait until the balancer sends it traffic."""
        replica = self.replica(name)
        replica.stop()
        replica.start()
        deadline = time.monotonic() + within
        self._wait(lambda: self._ready(replica), deadline, replica)
        self._wait(lambda: name in self.balanced(), deadline, self.haproxy)

    @asynccontextmanager
    async def another_balancer(self, config: str) -> AsyncIterator[str]:
        """A second HAProxy in front of the same replicas with configuration `config`; yields its URL."""
        path = self.workdir / f"haproxy-{secrets.token_hex(3)}.cfg"
        path.write_text(config)
        port = free_port()
        balancer = Process(
            "haproxy (other configuration)",
            [haproxy_binary() or "haproxy", "-db", "-f", str(path)],
            path.with_suffix(".log"),
            env={**self.haproxy.env, "COUNTERSIGN_LISTEN": f"127.0.0.1:{port}"},
        )
        balancer.start()
        try:
            url = f"http://127.0.0.1:{port}"
            with anyio.fail_after(30):
                while await anyio.to_thread.run_sync(lambda: self.balanced(url=url)) != set(REPLICAS):
                    balancer.check_alive()
                    await anyio.sleep(0.1)
            yield url
        finally:
            balancer.stop()

    def _write_config(self) -> None:
        (self.workdir / "policy.json").write_text(json.dumps(self.policy, indent=2))
        server = {"host": "127.0.0.1", "database_url": self.database_url, **self.server}
        lines = ["[server]", *(f"{k} = {_toml(v)}" for k, v in server.items())]
        # Replicas sharing a database must share the audit key (they refuse to start without one).
        lines += ["[policy]", 'file = "policy.json"', ""]
        lines += ["[[upstreams]]", 'name = "paper"', f'url = "http://127.0.0.1:{self.broker_port}/mcp"']
        lines += ['call_timeout = "20s"', 'connect_timeout = "10s"', ""]
        for name, token in (("alpha", AGENT_TOKEN), ("bravo", OTHER_AGENT_TOKEN)):
            lines += ["[[agents]]", f'name = "{name}"', f'token = "{token}"', ""]
        approvers = (("alice", "traders", ALICE_TOKEN), ("bob", "traders", BOB_TOKEN), ("carol", "ops", CAROL_TOKEN))
        for name, group, token in approvers:
            lines += ["[[approvers]]", f'name = "{name}"', f'email = "{name}@example.com"', f'groups = ["{group}"]']
            lines += [f'api_token = "{token}"', ""]
        lines += audit_section()
        self.config_path.write_text("\n".join(lines) + "\n" + self.extra_toml)

    # ---- looking

    def _ready(self, replica: Replica) -> bool:
        """The replica answers and its upstream is connected (so no call of the test meets a connecting one)."""
        try:
            status, _, body = _get(f"{replica.url}/healthz", ALICE_TOKEN)
        except OSError:
            return False
        return status == 200 and all(u["state"] == "ready" for u in json.loads(body)["upstreams"])

    def balanced(self, probes: int = 12, *, url: str | None = None) -> set[str]:
        """The replicas the balancer sends traffic to now (round robin: a few probes meet each of them)."""
        seen: set[str] = set()
        for _ in range(probes):
            try:
                status, headers, _ = _get(f"{url or self.url}/healthz")
            except OSError:
                continue
            if status == 200 and REPLICA_HEADER in headers:
                seen.add(headers[REPLICA_HEADER])
        return seen

    def _wait(self, ready: Any, deadline: float, process: Process) -> None:
        while not ready():
            process.check_alive()
            if time.monotonic() > deadline:
                raise ClusterError(f"{process.name} was not ready in time:\n{self.logs()}")
            time.sleep(0.1)

    def logs(self, lines: int = 40) -> str:
        return "\n".join(p.tail(lines) for p in (self.broker, *self.replicas, self.haproxy))

    def ledger(self, tool: str | None = None) -> list[dict[str, Any]]:
        """Every call that reached the broker, in order (only those of `tool` when given)."""
        if not self.ledger_path.exists():
            return []
        calls = [json.loads(line) for line in self.ledger_path.read_text().splitlines() if line]
        return [c for c in calls if tool is None or c["tool"] == tool]

    def audit_verify(self) -> subprocess.CompletedProcess[str]:
        """`countersign audit verify` on the cluster's database, as an operator runs it."""
        command = [sys.executable, "-m", "gateway.cli", "audit", "verify", "--config", str(self.config_path)]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)

    # ---- clients

    @asynccontextmanager
    async def agent(
        self,
        token: str = AGENT_TOKEN,
        *,
        mode: str = "legacy",
        via: str | None = None,
        read_timeout: float = 60.0,
        seen: list[str] | None = None,
        calls_seen: list[str] | None = None,
    ) -> AsyncIterator[Client]:
        """A real MCP client through the balancer (or `via` a replica's URL).

        mode: "legacy" (the 2025-11-25 handshake era, with an Mcp-Session-Id) or "auto" (the
        sessionless 2026-07-28 era). `seen` collects the replica that answered each response,
        `calls_seen` the replica that answered each `tools/call` (as soon as its headers arrive,
        so while a held call is still open).
        """

        async def note(response: httpx2.Response) -> None:
            replica = response.headers.get(REPLICA_HEADER)
            if replica is None:
                return
            if seen is not None:
                seen.append(replica)
            if calls_seen is not None and _method(response.request) == "tools/call":
                calls_seen.append(replica)

        async with (
            httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {token}"},
                timeout=httpx2.Timeout(30.0, read=read_timeout),
                event_hooks={"response": [note]},
                trust_env=False,
            ) as http,
            Client(streamable_http_client(f"{via or self.url}/mcp", http_client=http), mode=mode) as client,
        ):
            yield client

    def api(self, token: str = ALICE_TOKEN, *, via: str | None = None) -> httpx2.AsyncClient:
        """The approver API through the balancer (or `via` a replica's URL); close it after use."""
        return httpx2.AsyncClient(
            base_url=via or self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0, trust_env=False
        )

    async def place_order(self) -> int:
        """A working limit order placed on the broker directly (not through the gateway): something to cancel."""
        broker = f"http://127.0.0.1:{self.broker_port}/mcp"
        async with (
            httpx2.AsyncClient(trust_env=False, timeout=30.0) as http,
            Client(streamable_http_client(broker, http_client=http), mode="legacy") as client,
        ):
            result = await client.call_tool("ibkr_place_order", dict(A_LIMIT_ORDER))
        if result.is_error or not result.structured_content:
            raise ClusterError(f"placing an order on the paper broker failed: {result.content}")
        return int(result.structured_content["trade"]["order"]["orderId"])

    async def pending(self, count: int = 1, *, within: float = 15.0) -> list[dict[str, Any]]:
        """Wait until at least `count` requests are pending (read through the balancer); return them."""
        async with self.api() as api:
            with anyio.fail_after(within):
                while True:
                    body = (await api.get("/api/approvals", params={"status": "pending"})).json()
                    if len(body["approvals"]) >= count:
                        return list(body["approvals"])
                    await anyio.sleep(0.05)
