"""In-memory stand-ins for the gateway's collaborators: upstreams that record every call, and a clock the test moves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT

from gateway.upstreams import Route

START = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)

Handler = Callable[[dict[str, Any]], Awaitable[types.CallToolResult]]


class MovableClock:
    """A clock that stands still until the test moves it."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def text_result(text: str, *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=is_error)


@dataclass
class FakeUpstream:
    """One upstream: its tools answer with whatever their handler returns; every call is recorded."""

    name: str
    handlers: dict[str, Handler]
    prefix: str = ""
    ready: bool = True
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def call(
        self, tool: str, arguments: dict[str, Any], progress: ProgressFnT | None = None
    ) -> types.CallToolResult:
        self.calls.append((tool, dict(arguments)))
        return await self.handlers[tool](arguments)

    def tool(self, name: str) -> types.Tool:
        return types.Tool(name=self.prefix + name, input_schema={"type": "object"})


class FakeUpstreams:
    """The gateway's view of its upstreams, in memory. The first upstream offering a name wins it."""

    def __init__(self, *upstreams: FakeUpstream) -> None:
        self.upstreams = list(upstreams)
        self.listeners: list[Callable[[], Awaitable[None]]] = []

    async def run(self) -> None:
        await anyio.sleep_forever()

    async def wait_connected(self, within: float) -> bool:
        return True

    async def wait_attempted(self, within: float) -> bool:
        return True

    def connecting_for(self, name: str) -> list[str]:
        return []

    def _routes(self) -> dict[str, Route]:
        routes: dict[str, Route] = {}
        for upstream in self.upstreams:
            for name in upstream.handlers:
                routes.setdefault(upstream.prefix + name, Route(upstream, name, {"type": "object"}))
        return routes

    def tools(self) -> list[types.Tool]:
        return [types.Tool(name=n, input_schema=r.input_schema) for n, r in self._routes().items()]

    def route(self, name: str) -> Route | None:
        return self._routes().get(name)

    def get(self, name: str) -> FakeUpstream | None:
        return next((u for u in self.upstreams if u.name == name), None)

    def catalog_name(self, upstream: str, upstream_tool: str) -> str | None:
        return next(
            (n for n, r in self._routes().items() if r.upstream.name == upstream and r.upstream_tool == upstream_tool),
            None,
        )

    def input_schema(self, name: str) -> dict[str, Any] | None:
        route = self.route(name)
        return None if route is None else route.input_schema

    def status(self) -> list[dict[str, Any]]:
        return [{"name": u.name, "state": "ready" if u.ready else "connecting"} for u in self.upstreams]


def broker(name: str = "paper", **extra: Handler) -> FakeUpstream:
    """An upstream with a held cancel, an allowed read, and whatever `extra` adds."""

    async def cancel(arguments: Mapping[str, Any]) -> types.CallToolResult:
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=f"cancelled {arguments.get('orderId')} on {name}")],
            structured_content={"orderId": arguments.get("orderId"), "upstream": name},
        )

    async def read(arguments: Mapping[str, Any]) -> types.CallToolResult:
        return text_result(f"orders on {name}")

    return FakeUpstream(name, {"cancel_order": cancel, "get_orders": read, **extra})
