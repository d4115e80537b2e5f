"""Upstream MCP servers: connections kept alive with backoff, and the merged tool catalog.

Each upstream runs in its own task that owns its client. A call to an upstream that is down
gets an error result at once, never a hang; the task reconnects with exponential backoff.

An upstream's tools stay in the catalog while it reconnects (their calls answer `[UPSTREAM
UNAVAILABLE]`). Before an upstream has listed its tools once, nobody knows its tools: a call to a
name no upstream offers is then put down to that upstream (`connecting_for`, matched by its
`prefix` when it has one) and answered `[UPSTREAM UNAVAILABLE]` rather than `[UNKNOWN TOOL]`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio
import mcp_types as types
from mcp import Client, MCPError
from mcp.client.session import IncomingMessage
from mcp.shared.dispatcher import ProgressFnT
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway import tracing, upstream_links, upstream_wire
from gateway.config import UpstreamSettings
from gateway.errors import Tag
from gateway.relay_catalog import Offer, RelayUnavailable, UpstreamHooks, list_offer
from gateway.upstream_wire import Link

log = logging.getLogger(__name__)


_PING_SECONDS = 15.0
_MAX_BACKOFF = 30.0
T = TypeVar("T")
_LIST_CHANGED = (
    types.ToolListChangedNotification,
    types.PromptListChangedNotification,
    types.ResourceListChangedNotification,
)


class Forwarder(Protocol):
    """One upstream as the call path uses it: a name, whether it is connected, and calling a tool."""

    name: str

    @property
    def ready(self) -> bool: ...

    async def call(
        self, tool: str, arguments: dict[str, Any], progress: ProgressFnT | None = None
    ) -> types.CallToolResult: ...


@dataclass(frozen=True)
class Route:
    upstream: Forwarder
    upstream_tool: str
    input_schema: dict[str, Any]
    # The upstream's own readOnlyHint annotation: only `server.audit_unavailable = "allow_read_only"` reads it.
    read_only: bool = False


class Upstreams(Protocol):
    """The upstreams as the gateway core uses them; `UpstreamSet` in production, an in-memory set in tests."""

    listeners: list[Callable[[], Awaitable[None]]]

    async def run(self) -> None: ...

    async def wait_connected(self, within: float) -> bool: ...

    async def wait_attempted(self, within: float) -> bool: ...

    def connecting_for(self, name: str) -> list[str]: ...

    def tools(self) -> list[types.Tool]: ...

    def route(self, name: str) -> Route | None: ...

    def get(self, name: str) -> Forwarder | None: ...

    def catalog_name(self, upstream: str, upstream_tool: str) -> str | None: ...

    def input_schema(self, name: str) -> dict[str, Any] | None: ...

    def status(self) -> list[dict[str, Any]]: ...


class Upstream:
    def __init__(self, settings: UpstreamSettings, on_catalog: Callable[[], Awaitable[None]]) -> None:
        self.settings = settings
        self.name = settings.name
        self.state = "connecting"
        self.last_error: str | None = None
        self.tools: tuple[types.Tool, ...] = ()
        self.offer = Offer()
        self.hooks = UpstreamHooks()
        self.protocol_version: str | None = None
        self._on_catalog = on_catalog
        self._client: Client | None = None
        self._link: Link | None = None  # the lean side of the client's connection (gateway.upstream_wire)
        self._broken = anyio.Event()
        self._relist = anyio.Event()
        self.connected = anyio.Event()
        # The first connection attempt has ended, connected or not; and whether the tools were ever listed.
        self.attempted = anyio.Event()
        self.listed_once = False
        self.reconnects = 0

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self._client is not None

    @property
    def prefix(self) -> str:
        return self.settings.prefix

    # ---- the connection task

    async def run(self) -> None:
        delay = 0.5
        while True:
            self._broken = anyio.Event()
            try:
                async with anyio.create_task_group() as tg:
                    listed = anyio.Event()
                    tg.start_soon(self._session, listed)
                    # The client's own task group lives inside the session task, so the connect timeout
                    # is applied here, to the wait, rather than around the client's context.
                    with anyio.fail_after(self.settings.connect_timeout):
                        await listed.wait()
                    delay = 0.5
            except Exception as exc:  # a failing upstream must never take the gateway down
                self.last_error = _describe(exc)
                log.warning("upstream %s: %s; reconnecting in %.1fs", self.name, self.last_error, delay)
                self.attempted.set()
            finally:
                self._client = self._link = None
                self.state = "down"
                self.connected = anyio.Event()
            await anyio.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 2, _MAX_BACKOFF)
            self.reconnects += 1

    async def _session(self, listed: anyio.Event) -> None:
        async with AsyncExitStack() as stack:
            client = await self._connect(stack)
            await self._list(client)
            self._client = client
            self.state = "ready"
            self.last_error = None
            self.listed_once = True
            listed.set()
            self.connected.set()
            self.attempted.set()
            log.info("upstream %s: connected (%s), %d tools", self.name, self.protocol_version, len(self.tools))
            await self._supervise(client)

    async def _connect(self, stack: AsyncExitStack) -> Client:
        s = self.settings
        target, link = await upstream_links.target(s, stack)
        client = Client(
            target,
            message_handler=self._on_message,
            read_timeout_seconds=s.call_timeout,
            cache=None,
            **self.hooks.client_options(),
        )
        await stack.enter_async_context(client)
        self.protocol_version = client.protocol_version
        self._link = link
        return client

    async def _list(self, client: Client) -> None:
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(100):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        self.tools = tuple(tools)
        self.offer = await list_offer(client)
        await self._on_catalog()

    async def _supervise(self, client: Client) -> None:
        async with anyio.create_task_group() as tg:
            caps = client.server_capabilities
            if client.protocol_version in MODERN_PROTOCOL_VERSIONS and _announces_changes(caps):
                tg.start_soon(self._listen, client)
            while not self._broken.is_set():
                with anyio.move_on_after(_PING_SECONDS):
                    await _first(self._broken.wait, self._relist.wait)
                if self._broken.is_set():
                    break
                if self._relist.is_set():
                    self._relist = anyio.Event()
                    await self._list(client)
                    continue
                with anyio.fail_after(10):
                    try:
                        await client.send_ping()
                    except MCPError as exc:
                        # An error answer (some servers do not implement ping) still proves the link is up.
                        if exc.code == types.CONNECTION_CLOSED:
                            raise
            tg.cancel_scope.cancel()
        raise ConnectionError(self.last_error or "the connection was lost")

    async def _listen(self, client: Client) -> None:
        try:
            async with client.listen(
                tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True
            ) as subscription:
                async for _event in subscription:
                    self._relist.set()
        except Exception as exc:
            log.info("upstream %s: change subscription ended: %s", self.name, _describe(exc))

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            log.info("upstream %s: transport error: %s", self.name, _describe(message))
            return
        if isinstance(
            message,
            types.ToolListChangedNotification
            | types.PromptListChangedNotification
            | types.ResourceListChangedNotification,
        ):
            self._relist.set()
        elif isinstance(message, types.ResourceUpdatedNotification):
            await self.hooks.resource_updated(message.params.uri)

    def live_client(self) -> Client:
        """The connected client, for a long-lived stream (a resource subscription); RelayUnavailable when down."""
        if self._client is None or self.state != "ready":
            raise RelayUnavailable(f"upstream '{self.name}' is not connected")
        return self._client

    async def relay(self, what: str, request: Callable[[Client], Awaitable[T]]) -> T:
        """Send one prompt, resource or completion request; RelayUnavailable when it cannot get an answer.

        An error the upstream answers with (`MCPError`) is passed on as it is.
        """
        client = self._client
        if client is None or self.state != "ready":
            raise RelayUnavailable(f"upstream '{self.name}' is not connected; {what} was not sent")
        timeout = self.settings.call_timeout
        try:
            with anyio.fail_after(timeout):
                return await request(client)
        except TimeoutError:
            raise RelayUnavailable(f"upstream '{self.name}' did not answer {what} within {timeout:g}s") from None
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                self.last_error = exc.message
                self._broken.set()
                raise RelayUnavailable(f"upstream '{self.name}' failed {what}: {exc.message}") from exc
            raise
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self.last_error = _describe(exc)
            self._broken.set()
            raise RelayUnavailable(f"upstream '{self.name}' failed {what}: {self.last_error}") from exc

    # ---- calls

    async def call(
        self, tool: str, arguments: dict[str, Any], progress: ProgressFnT | None = None
    ) -> types.CallToolResult:
        client = self._client
        if client is None or self.state != "ready":
            why = f" (last error: {self.last_error})" if self.last_error else ""
            return Tag.UPSTREAM_UNAVAILABLE.result(
                f"upstream '{self.name}' is not connected{why}; "
                "the call was not executed. It is being reconnected; try again shortly."
            )
        timeout = self.settings.call_timeout
        try:
            with anyio.fail_after(timeout):
                async with self.hooks.serving():
                    if self._link is not None and tracing.untraced(None, None):
                        return await upstream_wire.call_tool(client, self._link, tool, arguments, timeout, progress)
                    return await client.call_tool(
                        tool, arguments, read_timeout_seconds=timeout, progress_callback=progress
                    )
        except TimeoutError:
            return Tag.UPSTREAM_TIMEOUT.result(
                f"upstream '{self.name}' did not answer {tool} within {timeout:g}s; the outcome is unknown."
            )
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                self.last_error = exc.message
                self._broken.set()
            return Tag.UPSTREAM_ERROR.result(f"upstream '{self.name}' failed {tool}: {exc.message}")
        except RuntimeError as exc:
            return Tag.UPSTREAM_ERROR.result(f"upstream '{self.name}' returned an invalid result for {tool}: {exc}")
        except Exception as exc:
            # Transport failures (connection refused, broken stream): reconnect, and say so to the agent.
            self.last_error = _describe(exc)
            self._broken.set()
            return Tag.UPSTREAM_ERROR.result(f"upstream '{self.name}' failed {tool}: {self.last_error}")


class UpstreamSet:
    """All upstreams, and the catalog the agents see (names prefixed per upstream)."""

    def __init__(self, settings: tuple[UpstreamSettings, ...]) -> None:
        self.upstreams = [Upstream(s, self._rebuild) for s in settings]
        self._routes: dict[str, Route] = {}
        self._tools: list[types.Tool] = []
        self.listeners: list[Callable[[], Awaitable[None]]] = []

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for upstream in self.upstreams:
                tg.start_soon(upstream.run)

    async def wait_connected(self, within: float) -> bool:
        with anyio.move_on_after(within):
            for upstream in self.upstreams:
                await upstream.connected.wait()
            return True
        return False

    async def wait_attempted(self, within: float) -> bool:
        """Wait until every upstream's first connection attempt has ended (either way); False after `within`."""
        with anyio.move_on_after(within):
            for upstream in self.upstreams:
                await upstream.attempted.wait()
            return True
        return False

    def connecting_for(self, name: str) -> list[str]:
        """The upstreams that may offer `name` but have not listed their tools since the gateway started."""
        return [u.name for u in self.upstreams if not u.listed_once and name.startswith(u.settings.prefix)]

    async def _rebuild(self) -> None:
        routes: dict[str, Route] = {}
        tools: list[types.Tool] = []
        for upstream in self.upstreams:
            for tool in upstream.tools:
                name = upstream.settings.prefix + tool.name
                if name in routes:
                    log.warning(
                        "tool %s of upstream %s is shadowed by upstream %s; give one of them a prefix",
                        name,
                        upstream.name,
                        routes[name].upstream.name,
                    )
                    continue
                read_only = bool(tool.annotations and tool.annotations.read_only_hint)
                routes[name] = Route(upstream, tool.name, tool.input_schema, read_only)
                tools.append(tool if name == tool.name else tool.model_copy(update={"name": name}))
        self._routes = routes
        self._tools = tools
        for listener in self.listeners:
            try:
                await listener()
            except Exception:
                log.exception("catalog listener failed")

    def tools(self) -> list[types.Tool]:
        return list(self._tools)

    def route(self, name: str) -> Route | None:
        return self._routes.get(name)

    def get(self, name: str) -> Upstream | None:
        """The upstream configured under `name` (requests name theirs), whatever tools it offers now."""
        return next((u for u in self.upstreams if u.name == name), None)

    def catalog_name(self, upstream: str, upstream_tool: str) -> str | None:
        """The name agents see for `upstream_tool` of `upstream`, if that upstream offers it now."""
        return next(
            (n for n, r in self._routes.items() if r.upstream.name == upstream and r.upstream_tool == upstream_tool),
            None,
        )

    def input_schema(self, name: str) -> dict[str, Any] | None:
        route = self._routes.get(name)
        return None if route is None else route.input_schema

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "name": u.name,
                "state": u.state,
                "first_attempt": ("connected" if u.listed_once else "failed")
                if u.attempted.is_set()
                else "in progress",
                "tools": len(u.tools),
                "protocol": u.protocol_version,
                "last_error": u.last_error,
                "reconnects": u.reconnects,
            }
            for u in self.upstreams
        ]


def _announces_changes(caps: types.ServerCapabilities) -> bool:
    return any(cap is not None and bool(cap.list_changed) for cap in (caps.tools, caps.prompts, caps.resources))


async def _first(*waits: Callable[[], Awaitable[None]]) -> None:
    async with anyio.create_task_group() as tg:

        async def run(wait: Callable[[], Awaitable[None]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        for wait in waits:
            tg.start_soon(run, wait)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    if isinstance(exc, MCPError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
