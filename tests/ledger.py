"""Exactly-once under crashes: an upstream that records every execution, and real `countersign serve` processes.

The upstream (`LedgerUpstream`) appends one line per execution to a ledger file and fsyncs it
*before* it answers, so the file is the truth about what ran, whatever happened to the gateway.
It can block an execution (to kill the gateway while the upstream is working) or take a while
over each one. `GatewayProcess` runs `countersign serve` as a real subprocess on a configuration
of its own, and can be killed with SIGKILL and started again on the same database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.server.mcpserver import MCPServer

from gateway.app import Gateway
from gateway.config import parse_settings
from tests.audit_key import audit_section, verify_env
from tests.harness import ALICE_TOKEN, BOB_TOKEN, CAROL_TOKEN, base_config, bound_socket, serve_asgi, write_policy

AGENT_TOKEN = "agent-token-alpha"
TOOL = "ledger_act"


class LedgerUpstream:
    """One tool, `act(op, work)`: writes `op` to the ledger (fsync'd), then works `work` seconds, then answers.

    `hold()` makes every execution that starts afterwards wait until `release()`; `entered` is set
    when one such execution has reached the ledger.
    """

    def __init__(self, ledger: Path) -> None:
        self.ledger = ledger
        self.ledger.touch()
        self._gate: anyio.Event | None = None
        self.entered = anyio.Event()

    def hold(self) -> None:
        self._gate = anyio.Event()
        self.entered = anyio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
        self._gate = None

    def record(self, op: str) -> None:
        with self.ledger.open("a") as out:
            out.write(json.dumps({"op": op}) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def executions(self) -> Counter[str]:
        lines = self.ledger.read_text().splitlines()
        return Counter(json.loads(line)["op"] for line in lines if line.strip())

    def app(self) -> Any:
        server = MCPServer("ledger")

        @server.tool()
        async def act(op: str, work: float = 0.0) -> str:
            """Carry out operation `op` (recorded in the ledger before anything else), taking `work` seconds."""
            self.record(op)
            gate = self._gate
            if gate is not None:
                self.entered.set()
                await gate.wait()
            if work > 0:
                await anyio.sleep(work)
            return f"done {op}"

        return server.streamable_http_app(stateless_http=True)


@asynccontextmanager
async def ledger_upstream(ledger: Path) -> AsyncIterator[tuple[LedgerUpstream, str]]:
    upstream = LedgerUpstream(ledger)
    async with serve_asgi(upstream.app()) as url:
        yield upstream, f"{url}/mcp"
    upstream.release()


def held_policy(*, timeout: str = "10m", pickup: str = "10m", max_hold: str = "none") -> dict[str, Any]:
    approval = {
        "timeout": timeout,
        "pickup_window": pickup,
        "max_hold": max_hold,
        "approvers": ["group:traders"],
        "channels": ["web"],
    }
    rule = {"require_approval": [{"conditions": [], "reason": "Every act is decided by a human."}]}
    return {"version": "1", "default": "deny", "tools": {TOOL: {**rule, "approval": approval}}}


def free_port() -> int:
    with bound_socket() as sock:
        port: int = sock.getsockname()[1]
        return port


def write_config(
    folder: Path, *, database_url: str, upstream_url: str, port: int, policy: Mapping[str, Any], **server: Any
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.json").write_text(json.dumps(policy))
    settings = {"poll_interval": "0.2s", "progress_interval": "1s", "execution_lease": "2s", **server}
    lines = ["[server]", 'host = "127.0.0.1"', f"port = {port}", f"database_url = {json.dumps(database_url)}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    lines += ["[policy]", 'file = "policy.json"', "watch = false"]
    lines += ["[[upstreams]]", 'name = "ledger"', f"url = {json.dumps(upstream_url)}", 'prefix = "ledger_"']
    lines += ['call_timeout = "120s"', 'connect_timeout = "20s"']
    lines += ["[[agents]]", 'name = "alpha"', f'token = "{AGENT_TOKEN}"']
    for name, token, group in (("alice", ALICE_TOKEN, "traders"), ("bob", BOB_TOKEN, "traders")):
        lines += ["[[approvers]]", f'name = "{name}"', f'groups = ["{group}"]', f'api_token = "{token}"']
    lines += ["[[approvers]]", 'name = "carol"', 'groups = ["ops"]', f'api_token = "{CAROL_TOKEN}"']
    lines += audit_section()
    config = folder / "countersign.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


@dataclass
class GatewayProcess:
    """`countersign serve` as a real process: started, killed with SIGKILL, started again."""

    config: Path
    port: int
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.starts += 1
        self.process = self._spawn()
        await self.wait_ready()

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config)]
        with self.log.open("ab") as out:
            out.write(f"\n---- start {self.starts}\n".encode())
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env})

    async def wait_ready(self, within: float = 40.0) -> None:
        async with httpx2.AsyncClient(timeout=2) as http:
            with anyio.fail_after(within):
                while True:
                    assert self.process is not None
                    if self.process.poll() is not None:
                        raise RuntimeError(f"the gateway exited early:\n{self.log.read_text()[-3000:]}")
                    with suppress(httpx2.TransportError):
                        health = await http.get(f"{self.url}/healthz")
                        if health.status_code == 200:
                            return
                    await anyio.sleep(0.1)

    async def kill9(self) -> None:
        assert self.process is not None
        with suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        await self.wait_dead()

    async def wait_dead(self, within: float = 30.0) -> int:
        process = self.process
        assert process is not None
        return await anyio.to_thread.run_sync(lambda: process.wait(timeout=within))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@asynccontextmanager
async def gateway_process(
    folder: Path,
    *,
    database_url: str,
    upstream_url: str,
    policy: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    **server: Any,
) -> AsyncIterator[GatewayProcess]:
    port = free_port()
    config = write_config(
        folder,
        database_url=database_url,
        upstream_url=upstream_url,
        port=port,
        policy=policy or held_policy(),
        **server,
    )
    gateway = GatewayProcess(config, port, folder / "gateway.log", dict(env or {}))
    try:
        await gateway.start()
        yield gateway
    finally:
        gateway.stop()


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


async def api_requests(url: str, **params: str) -> list[dict[str, Any]]:
    async with httpx2.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ALICE_TOKEN}"}) as api:
        response = await api.get("/api/approvals", params={"limit": "1000", **params})
        response.raise_for_status()
        return list(response.json()["approvals"])


async def decide(url: str, request_id: str, verdict: str, token: str = ALICE_TOKEN) -> httpx2.Response:
    async with httpx2.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        body = {"reason": "not this one"} if verdict == "reject" else {}
        return await api.post(f"/api/approvals/{request_id}/{verdict}", json=body)


async def audit_verify(database_url: str) -> tuple[int, str]:
    """`countersign audit verify` as a real command; its exit status and what it printed."""
    command = [sys.executable, "-m", "gateway.cli", "audit", "verify", "--database-url", database_url]
    done = await anyio.run_process(command, check=False, env=verify_env(dict(os.environ)))
    return done.returncode, (done.stdout + done.stderr).decode()


@asynccontextmanager
async def ledger_gateway(
    folder: Path,
    database_url: str,
    upstream_url: str,
    *,
    policy: Mapping[str, Any] | None = None,
    clock: Any = None,
    **server: Any,
) -> AsyncIterator[tuple[str, Gateway]]:
    """The gateway in this process, in front of the ledger upstream; yields its base URL and itself."""
    policy_file = write_policy(folder / "policy.json", policy or held_policy())
    data = base_config(database_url=database_url, policy_file=policy_file, upstream_url=upstream_url, **server)
    data["upstreams"] = [
        {"name": "ledger", "url": upstream_url, "prefix": "ledger_", "call_timeout": "120s", "connect_timeout": "10s"}
    ]
    settings = parse_settings(data, source="<test>", base_dir=str(folder), environ={})
    gateway = Gateway(settings, clock=clock)
    async with serve_asgi(gateway.asgi()) as url:
        assert await gateway.upstreams.wait_connected(15), gateway.upstreams.status()
        yield url, gateway
