"""A gateway in front of the tests' relay upstream (`relay_upstream.py`, over stdio), served on loopback."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.app import Gateway
from gateway.config import parse_settings
from tests.harness import AGENT_TOKEN, base_config, serve_asgi, write_policy

REPO = Path(__file__).resolve().parents[2]


def relay_upstream(name: str = "memo", *, legacy: bool = False, prefix: str = "") -> dict[str, Any]:
    command = [sys.executable, "-m", "tests.gateway.relay_upstream", *(["--legacy"] if legacy else [])]
    return {"name": name, "command": command, "cwd": str(REPO), "prefix": prefix, "connect_timeout": "20s"}


@asynccontextmanager
async def relay_gateway(
    tmp_path: Path,
    database_url: str,
    policy: Mapping[str, Any],
    upstreams: list[dict[str, Any]] | None = None,
    **server: Any,
) -> AsyncIterator[tuple[str, Gateway]]:
    data = base_config(
        database_url=database_url,
        policy_file=write_policy(tmp_path / "policy.json", policy),
        upstream_url="http://unused",
        **server,
    )
    data["upstreams"] = upstreams or [relay_upstream()]
    gateway = Gateway(parse_settings(data, source="<test>", base_dir=str(tmp_path), environ={}))
    async with serve_asgi(gateway.asgi()) as base_url:
        assert await gateway.upstreams.wait_connected(30), gateway.upstreams.status()
        yield base_url, gateway


async def audit_rows(gateway: Gateway, *kinds: str) -> list[Any]:
    """The audit rows of these kinds, oldest first."""
    return [event for event in await gateway.service.history.events(limit=1000) if event.kind in kinds]


@asynccontextmanager
async def relay_agent(base: str, mode: str, **options: Any) -> AsyncIterator[Client]:
    """An agent of the given protocol era (`"legacy"` or `"2026-07-28"`) with the given callbacks and options."""
    headers = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=60.0)) as http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http), mode=mode, **options) as client,
    ):
        yield client


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))
