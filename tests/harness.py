"""Real servers for tests: the paper broker and the gateway under uvicorn on loopback, in the test's loop."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.app import Gateway
from gateway.config import Settings, parse_settings
from gateway.demo import DEMO_POLICY
from gateway.http_protocol import GatheringHTTPProtocol
from gateway.paper_book import PaperBook
from gateway.paper_broker import build_http_app

AGENT_TOKEN = "agent-token-alpha"
OTHER_AGENT_TOKEN = "agent-token-bravo"
ALICE_TOKEN = "alice-api-token"
BOB_TOKEN = "bob-api-token"
CAROL_TOKEN = "carol-api-token"


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class Served:
    url: str
    server: uvicorn.Server

    async def stop(self) -> None:
        """Stop serving now (the test then sees connections refused), as if the process had died."""
        self.server.should_exit = True
        self.server.force_exit = True
        await wait_for(lambda: not any(s.is_serving() for s in self.server.servers))


@asynccontextmanager
async def served(app: Any, sock: socket.socket | None = None, *, lifespan: str = "on") -> AsyncIterator[Served]:
    """Serve an ASGI app on loopback until the block ends."""
    sock = sock or bound_socket()
    port = sock.getsockname()[1]
    # The HTTP protocol `countersign serve` runs with (gateway.serving).
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_level="warning",
        lifespan=lifespan,
        timeout_graceful_shutdown=1,
        http=GatheringHTTPProtocol,
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(20):
            while not server.started:
                if server.should_exit:
                    raise RuntimeError("server failed to start")
                await anyio.sleep(0.01)
        try:
            yield Served(f"http://127.0.0.1:{port}", server)
        finally:
            server.should_exit = True
            server.force_exit = True


@asynccontextmanager
async def serve_asgi(app: Any, sock: socket.socket | None = None, *, lifespan: str = "on") -> AsyncIterator[str]:
    """Serve an ASGI app on loopback until the block ends; yields its base URL."""
    async with served(app, sock, lifespan=lifespan) as handle:
        yield handle.url


@asynccontextmanager
async def agent_client(
    base_url: str, token: str = AGENT_TOKEN, *, mode: str = "legacy", read_timeout: float = 60.0
) -> AsyncIterator[Client]:
    """A real MCP client over streamable HTTP. mode: 'legacy' (2025-11-25 handshake) or 'auto' (2026-07-28)."""
    async with (
        httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0, read=read_timeout)
        ) as http,
        Client(streamable_http_client(f"{base_url}/mcp", http_client=http), mode=mode) as client,
    ):
        yield client


def base_config(
    *,
    database_url: str,
    policy_file: Path,
    upstream_url: str,
    **server: Any,
) -> dict[str, Any]:
    return {
        "server": {"database_url": database_url, "progress_interval": 0.2, "poll_interval": 0.2, **server},
        "policy": {"file": str(policy_file), "watch": True},
        # Where the gateway keeps (and on its first start makes) its audit key; replicas in one test share it.
        "audit": {"key_file": "countersign.audit-key"},
        "upstreams": [{"name": "paper", "url": upstream_url, "call_timeout": "20s", "connect_timeout": "10s"}],
        "agents": [
            {"name": "alpha", "token": AGENT_TOKEN},
            {"name": "bravo", "token": OTHER_AGENT_TOKEN},
        ],
        "approvers": [
            {"name": "alice", "email": "alice@example.com", "groups": ["traders"], "api_token": ALICE_TOKEN},
            {"name": "bob", "email": "bob@example.com", "groups": ["traders"], "api_token": BOB_TOKEN},
            {"name": "carol", "email": "carol@example.com", "groups": ["ops"], "api_token": CAROL_TOKEN},
        ],
    }


@dataclass
class Harness:
    base_url: str
    gateway: Gateway
    book: PaperBook
    settings: Settings
    policy_file: Path
    _clients: list[httpx2.AsyncClient] = field(default_factory=list)

    @property
    def service(self) -> Any:
        return self.gateway.service

    def agent(
        self, token: str = AGENT_TOKEN, *, mode: str = "legacy", read_timeout: float = 60.0
    ) -> AbstractAsyncContextManager[Client]:
        """A real MCP client over streamable HTTP. mode: 'legacy' (2025-11-25 handshake) or 'auto' (2026-07-28)."""
        return agent_client(self.base_url, token, mode=mode, read_timeout=read_timeout)

    def api(self, token: str = ALICE_TOKEN) -> httpx2.AsyncClient:
        client = httpx2.AsyncClient(base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0)
        self._clients.append(client)
        return client

    async def pending(self, count: int = 1, *, within: float = 15.0) -> list[dict[str, Any]]:
        """Wait until at least `count` requests are pending; return them (oldest expiry first)."""
        api = self.api()
        with anyio.fail_after(within):
            while True:
                body = (await api.get("/api/approvals", params={"status": "pending"})).json()
                if len(body["approvals"]) >= count:
                    return list(body["approvals"])
                await anyio.sleep(0.05)

    async def pending_or_all(self) -> list[dict[str, Any]]:
        """Every request, newest first."""
        body = (await self.api().get("/api/approvals", params={"limit": "1000"})).json()
        return list(body["approvals"])

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()


def write_policy(path: Path, document: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(document, indent=2))
    return path


@asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    database_url: str,
    *,
    policy: Mapping[str, Any] | None = None,
    book: PaperBook | None = None,
    config: Mapping[str, Any] | None = None,
    server: Mapping[str, Any] | None = None,
    more_upstreams: Sequence[Mapping[str, Any]] = (),
    broker_in_front: Callable[[Any], Any] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[Harness]:
    """The paper broker over HTTP and the gateway in front of it, both served on loopback.

    `more_upstreams` are configured beside the broker; `broker_in_front` wraps the broker's ASGI app (a slow network);
    `clock` is the gateway's (a clock the test moves).
    """
    book = book or PaperBook()
    policy_file = write_policy(tmp_path / "policy.json", policy or DEMO_POLICY)
    broker = build_http_app(book)
    async with serve_asgi(broker_in_front(broker) if broker_in_front else broker) as broker_url:
        data = base_config(
            database_url=database_url, policy_file=policy_file, upstream_url=f"{broker_url}/mcp", **(server or {})
        )
        data["upstreams"] = [*data["upstreams"], *more_upstreams]
        for key, value in (config or {}).items():
            data[key] = value
        settings = parse_settings(data, source="<test>", base_dir=str(tmp_path), environ={})
        gateway = Gateway(settings, clock=clock)
        async with serve_asgi(gateway.asgi()) as base_url:
            assert await gateway.upstreams.wait_connected(15), gateway.upstreams.status()
            harness = Harness(base_url, gateway, book, settings, policy_file)
            try:
                yield harness
            finally:
                await harness.close()


@asynccontextmanager
async def held_call(
    h: Harness, tool: str, arguments: Mapping[str, Any], *, token: str | None = None
) -> AsyncIterator[tuple[dict[str, Any], dict[str, Any]]]:
    """An agent makes a call that the policy holds; yields (pending request, outcome box) while it waits.

    The box gets "result" when the call returns; the block exits only after it has.
    """
    box: dict[str, Any] = {}
    async with h.agent(*([token] if token else [])) as agent, anyio.create_task_group() as tg:
        before = {r["id"] for r in await h.pending(0)}

        async def call() -> None:
            box["result"] = await agent.call_tool(tool, dict(arguments))

        tg.start_soon(call)
        with anyio.fail_after(15):
            while True:
                fresh = [r for r in await h.pending(0) if r["id"] not in before]
                if fresh:
                    break
                await anyio.sleep(0.05)
        yield fresh[0], box


async def wait_for(predicate: Any, *, within: float = 10.0, interval: float = 0.02) -> None:
    """Poll a sync or async predicate until it is true, failing after `within` seconds."""
    with anyio.fail_after(within):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return
            await anyio.sleep(interval)


def seeing_bodies(app: Any, hook: Callable[[bytes], Awaitable[None]]) -> Any:
    """`app` (an upstream's ASGI app) behind a hook that sees each HTTP request's whole body first and may
    hold it there; the request then reaches `app` unchanged."""

    async def seen(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        messages = []
        while True:
            message = await receive()
            messages.append(message)
            if not message.get("more_body"):
                break
        await hook(b"".join(m.get("body", b"") for m in messages))
        replay = iter(messages)

        async def again() -> Any:
            return next(replay, None) or await receive()

        return await app(scope, again, send)

    return seen
