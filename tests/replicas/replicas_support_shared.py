"""Several real `countersign serve` processes on one PostgreSQL database, for the shared-work tests.

Each replica is its own process group (the gateway and its stdio paper broker), started from a
configuration file the way an operator would, and can be killed with SIGKILL like a crashed host.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import ExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.audit_key import SHARED_AUDIT_KEY

AGENT_TOKEN = "agent-token-alpha"
ALICE_TOKEN = "alice-api-token"
COUNTERSIGN = str(Path(sys.executable).parent / "countersign")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def toml_value(value: Any) -> str:
    return json.dumps(value)  # strings, numbers and lists of them read the same in TOML


def config_text(*, port: int, database_url: str, policy_file: Path, sections: Mapping[str, Mapping[str, Any]]) -> str:
    broker = ", ".join(toml_value(part) for part in [sys.executable, "-m", "gateway.paper_broker"])
    extra = "".join(
        f"\n[{name}]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in values.items())
        for name, values in sections.items()
    )
    return f"""
[server]
host = "127.0.0.1"
port = {port}
database_url = "{database_url}"
progress_interval = "1s"
poll_interval = "0.2s"

[policy]
file = "{policy_file}"

[[upstreams]]
name = "paper"
command = [{broker}]

[[agents]]
name = "alpha"
token = "{AGENT_TOKEN}"

[[approvers]]
name = "alice"
groups = ["traders"]
api_token = "{ALICE_TOKEN}"
slack_user = "U0ALICE"

[audit]
key = "{SHARED_AUDIT_KEY}"
{extra}"""


@dataclass
class Replica:
    name: str
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the gateway and its upstream, as a crashed host would lose them."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@contextmanager
def _process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [COUNTERSIGN, "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


async def wait_ready(replica: Replica) -> None:
    """Until /healthz says the database answers and the upstream is connected."""
    async with httpx2.AsyncClient(timeout=2) as http:
        with anyio.fail_after(40):
            while True:
                if not replica.alive:
                    pytest.fail(f"{replica.name} exited early:\n{replica.log.read_text()}")
                with suppress(httpx2.TransportError):
                    response = await http.get(f"{replica.base_url}/healthz")
                    if response.status_code == 200 and response.json()["status"] == "ok":
                        return
                await anyio.sleep(0.1)


@asynccontextmanager
async def replicas(
    tmp_path: Path,
    database_url: str,
    *,
    count: int,
    policy: Mapping[str, Any],
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> AsyncIterator[list[Replica]]:
    """`count` replicas of `countersign serve` on one database, each ready before the block starts."""
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(policy))
    started: list[Replica] = []
    with ExitStack() as stack:
        for n in range(count):
            name = f"replica-{'abcdefgh'[n]}"
            folder = tmp_path / name
            folder.mkdir()
            port = free_port()
            config = folder / "countersign.toml"
            config.write_text(
                config_text(port=port, database_url=database_url, policy_file=policy_file, sections=sections or {})
            )
            log = folder / "gateway.log"
            process = stack.enter_context(_process(config, log))
            started.append(Replica(name, f"http://127.0.0.1:{port}", process, log))
        for replica in started:
            await wait_ready(replica)
        yield started


@asynccontextmanager
async def agent(base_url: str) -> AsyncIterator[Client]:
    """A real MCP client (2025-era handshake) of the agent alpha, talking to one replica."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {AGENT_TOKEN}"}, timeout=httpx2.Timeout(30.0)) as http,
        Client(streamable_http_client(f"{base_url}/mcp", http_client=http), mode="legacy") as client,
    ):
        yield client


def approver_api(base_url: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {ALICE_TOKEN}"}, timeout=30.0)


def logs(replicas: list[Replica]) -> str:
    return "\n".join(f"--- {r.name}\n{r.log.read_text()}" for r in replicas)
