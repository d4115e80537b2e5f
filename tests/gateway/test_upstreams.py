"""Upstreams: several at once, prefixes, schemas passed through, refresh on list_changed, reconnect after death."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged

from gateway.app import Gateway
from gateway.config import parse_settings
from gateway.paper_book import PaperBook
from gateway.paper_broker import build_http_app, build_server
from tests.harness import agent_client, base_config, bound_socket, serve_asgi, served, wait_for, write_policy

ALLOW_ALL = {"version": "1", "default": "allow"}


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def upstream_names(listing: types.ListToolsResult) -> list[str]:
    """The listed tools other than the gateway's own approval tools."""
    return [t.name for t in listing.tools if not t.name.startswith("countersign_")]


def settings_for(tmp_path: Path, upstreams: list[dict[str, Any]], policy: dict[str, Any] = ALLOW_ALL) -> Any:
    data = base_config(
        database_url=f"sqlite:///{tmp_path / 'gw.db'}",
        policy_file=write_policy(tmp_path / "policy.json", policy),
        upstream_url="http://unused",
    )
    data["upstreams"] = upstreams
    return parse_settings(data, source="<test>", base_dir=str(tmp_path), environ={})


def catalog_server() -> tuple[Server[Any], list[types.Tool], InMemorySubscriptionBus]:
    """A small upstream whose tool list a test can change, announcing it to listeners."""
    tools = [types.Tool(name="echo", input_schema={"type": "object", "properties": {"text": {"type": "string"}}})]
    bus = InMemorySubscriptionBus()

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(tools))

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"{params.name}:{params.arguments}")])

    server: Server[Any] = Server(
        "catalog", on_list_tools=list_tools, on_call_tool=call_tool, on_subscriptions_listen=ListenHandler(bus)
    )
    return server, tools, bus


async def test_two_upstreams_merge_into_one_catalog_with_prefixes_and_unchanged_schemas(tmp_path: Path) -> None:
    book = PaperBook()
    async with Client(build_server(PaperBook())) as direct:
        direct_tools = {t.name: t for t in (await direct.list_tools()).tools}
    catalog, _, _ = catalog_server()
    async with serve_asgi(build_http_app(book)) as broker, serve_asgi(catalog.streamable_http_app()) as other:
        settings = settings_for(
            tmp_path,
            [{"name": "paper", "url": f"{broker}/mcp", "prefix": "paper."}, {"name": "misc", "url": f"{other}/mcp"}],
        )
        gateway = Gateway(settings)
        async with serve_asgi(gateway.asgi()) as base:
            assert await gateway.upstreams.wait_connected(10)
            async with agent_client(base) as agent:
                listed = {t.name: t for t in (await agent.list_tools()).tools}
                assert "echo" in listed
                assert "paper.ibkr_cancel_order" in listed and "ibkr_cancel_order" not in listed
                for name, tool in direct_tools.items():
                    through = listed[f"paper.{name}"]
                    assert through.input_schema == tool.input_schema
                    assert through.title == tool.title
                    assert through.annotations == tool.annotations
                    assert through.description == tool.description
                result = await agent.call_tool("paper.ibkr_cancel_order", {"orderId": 1001, "confirm": True})
                assert not result.is_error, text(result)
                assert book.cancel_calls == 1
                assert text(await agent.call_tool("echo", {"text": "hi"})) == "echo:{'text': 'hi'}"


async def test_the_catalog_is_refreshed_when_an_upstream_announces_list_changed(tmp_path: Path) -> None:
    catalog, tools, bus = catalog_server()
    async with serve_asgi(catalog.streamable_http_app()) as other:
        gateway = Gateway(settings_for(tmp_path, [{"name": "misc", "url": f"{other}/mcp"}]))
        async with serve_asgi(gateway.asgi()) as base:
            assert await gateway.upstreams.wait_connected(10)
            async with agent_client(base, mode="auto") as agent:
                assert upstream_names(await agent.list_tools()) == ["echo"]
                async with agent.listen(tools_list_changed=True) as subscription:
                    tools.append(types.Tool(name="shout", input_schema={"type": "object"}))
                    await bus.publish(ToolsListChanged())
                    with anyio.fail_after(10):
                        await subscription.__anext__()
                assert upstream_names(await agent.list_tools(cache_mode="bypass")) == ["echo", "shout"]
                assert text(await agent.call_tool("shout", {})) == "shout:{}"


async def test_a_dead_http_upstream_gives_a_clear_error_at_once_and_is_reconnected(tmp_path: Path) -> None:
    book = PaperBook()
    sock = bound_socket()
    port = sock.getsockname()[1]
    gateway_ready = False
    async with served(build_http_app(book), sock) as broker:
        gateway = Gateway(settings_for(tmp_path, [{"name": "paper", "url": f"{broker.url}/mcp"}]))
        async with serve_asgi(gateway.asgi()) as base, agent_client(base) as agent:
            assert await gateway.upstreams.wait_connected(10)
            gateway_ready = True
            assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error
            await broker.stop()
            with anyio.fail_after(10):
                down = await agent.call_tool("ibkr_get_open_orders", {})
            assert down.is_error
            assert text(down).startswith(("[UPSTREAM ERROR]", "[UPSTREAM UNAVAILABLE]"))
            await wait_for(lambda: gateway.upstreams.status()[0]["state"] == "down", within=20)
            health = (await _http(base).get("/healthz")).json()
            assert health["status"] == "degraded"
            revived = bound_socket_at(port)
            async with serve_asgi(build_http_app(book), revived):
                await wait_for(lambda: gateway.upstreams.status()[0]["state"] == "ready", within=30)
                again = await agent.call_tool("ibkr_get_open_orders", {})
                assert not again.is_error, text(again)
    assert gateway_ready


async def test_a_stdio_upstream_that_dies_is_restarted(tmp_path: Path) -> None:
    gateway = Gateway(
        settings_for(tmp_path, [{"name": "paper", "command": [sys.executable, "-m", "gateway.paper_broker"]}])
    )
    async with serve_asgi(gateway.asgi()) as base, agent_client(base) as agent:
        assert await gateway.upstreams.wait_connected(20)
        assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error
        [pid] = _children_running("gateway.paper_broker")
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(10):
            down = await agent.call_tool("ibkr_get_open_orders", {})
        assert down.is_error
        await wait_for(lambda: _children_running("gateway.paper_broker") not in ([], [pid]), within=30)
        await wait_for(lambda: gateway.upstreams.status()[0]["state"] == "ready", within=30)
        assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error


# ---- helpers


def _http(base: str) -> Any:
    import httpx2

    return httpx2.AsyncClient(base_url=base, timeout=10)


def bound_socket_at(port: int) -> Any:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def _children_running(marker: str) -> list[int]:
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and marker in cmdline and " Z " not in stat[stat.rfind(")") :][:4]:
            found.append(int(entry.name))
    return found
