"""A tools/call forwarded to an upstream as one JSON-RPC request of the gateway's own.

The SDK's `Client.call_tool` builds a request model, hands it to its dispatcher, which wraps
it in a JSON-RPC model that the transport's writer task dumps, while the reader task parses the
answer into a model again before the dispatcher hands a dict back: about 1.2 ms of CPU a call.
An upstream link here (`gateway.upstream_stdio`, `gateway.upstream_post`) writes the request
as JSON itself and takes the answer out of the wire before any model is built; everything else
on the connection (the handshake, listings, pings, notifications, the upstream's own requests)
still goes through the SDK's client over the same link.

What the SDK does to the request and the result is kept here, in the same order: the session
stamps the request for the negotiated version (`_meta` and headers), the request id doubles as
the progress token, the result is checked for the version, later revisions' fields are dropped,
it is validated into `CallToolResult` and its structured content against the tool's output
schema. An `input_required` result and a `HEADER_MISMATCH` refusal take the SDK's own ways.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Mapping
from functools import cache
from typing import Any, Protocol, TypeGuard

import anyio
import mcp_types as types
from mcp import Client, MCPError
from mcp.client.session import _later_revision_fields
from mcp.shared.dispatcher import CallOptions, ProgressFnT
from mcp_types import methods
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import TypeAdapter

log = logging.getLogger(__name__)

# Bound on the write of a `notifications/cancelled` for an abandoned call (as the SDK bounds its own).
CANCEL_WRITE_SECONDS = 5.0
_CLOSED = "Connection closed"


class Link(Protocol):
    """One upstream connection's lean side: send a request of the gateway's own, get its answer's result."""

    waiters: Waiters

    async def request(
        self, request_id: str, payload: bytes, headers: Mapping[str, str], progress: ProgressFnT | None
    ) -> dict[str, Any]:
        """The `result` of the answer; MCPError for an error answer or a connection that closed."""
        ...


class Waiters:
    """The gateway's requests in flight on one connection, by id, and their progress callbacks.

    Ids are strings that do not parse as integers (`cs-1`, `cs-2`, ...), so they never meet the
    SDK's own integer ids on the same connection, nor each other while the connection lives.
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[str, tuple[asyncio.Future[dict[str, Any]], ProgressFnT | None]] = {}
        self._relaying: dict[str, list[asyncio.Task[None]]] = {}
        self.closed = False

    def mint(self) -> str:
        return f"cs-{next(self._ids)}"

    def add(self, request_id: str, progress: ProgressFnT | None) -> asyncio.Future[dict[str, Any]]:
        if self.closed:
            raise MCPError(code=types.CONNECTION_CLOSED, message=_CLOSED)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (future, progress)
        return future

    def drop(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)
        self._relaying.pop(request_id, None)

    async def relayed(self, request_id: str) -> None:
        """Wait until the progress that came before the answer has been relayed: the agent sees it first."""
        for task in self._relaying.pop(request_id, ()):
            if not task.done():
                await asyncio.wait({task})

    def claims(self, message: Any) -> bool:
        """Whether `message` answers (or reports progress on) one of the gateway's requests in flight."""
        if type(message) is not dict:
            return False
        if "method" in message:
            params = message.get("params")
            token = params.get("progressToken") if type(params) is dict else None
            return message.get("method") == "notifications/progress" and type(token) is str and token in self._waiting
        request_id = message.get("id")
        return type(request_id) is str and request_id in self._waiting

    def take(self, message: Any) -> bool:
        """Settle a waiter with `message` (a parsed JSON-RPC message) if it is one of ours; whether it was."""
        if type(message) is not dict:
            return False
        if "method" in message:
            return self._progress(message)
        request_id = message.get("id")
        if type(request_id) is not str or message.get("jsonrpc") != "2.0":
            return False
        waiter = self._waiting.get(request_id)
        if waiter is None:
            return False
        future = waiter[0]
        answer = outcome(message)
        if answer is None:
            return False  # not a well-formed answer: the SDK's parser reports it, as it would have
        if not future.done():
            if isinstance(answer, MCPError):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        return True

    def _progress(self, message: dict[str, Any]) -> bool:
        if message.get("method") != "notifications/progress":
            return False
        params = message.get("params")
        if type(params) is not dict:
            return False
        token, value = params.get("progressToken"), params.get("progress")
        if type(token) is not str or not _number(value):
            return False
        waiter = self._waiting.get(token)
        if waiter is None:
            return False
        callback = waiter[1]
        if callback is not None:
            total, text = params.get("total"), params.get("message")
            # A task per notification, as the SDK's dispatcher runs each: the reader never waits on a callback.
            task = asyncio.get_running_loop().create_task(
                _relay_progress(
                    callback,
                    float(value),
                    float(total) if _number(total) else None,
                    text if isinstance(text, str) else None,
                )
            )
            self._relaying.setdefault(token, []).append(task)
        return True

    def close(self) -> None:
        """The connection ended: every call still waiting gets CONNECTION_CLOSED, as the SDK's waiters do."""
        self.closed = True
        for future, _ in self._waiting.values():
            if not future.done():
                future.set_exception(MCPError(code=types.CONNECTION_CLOSED, message=_CLOSED))
        self._waiting.clear()


def outcome(message: dict[str, Any]) -> dict[str, Any] | MCPError | None:
    """A JSON-RPC answer's result, or its error; None when it is neither (as the SDK's message model says)."""
    result = message.get("result")
    if type(result) is dict and "error" not in message:
        return result
    error = message.get("error")
    if type(error) is dict and "result" not in message:
        code, text = error.get("code"), error.get("message")
        if type(code) is int and type(text) is str:
            return MCPError(code=code, message=text, data=error.get("data"))
    return None


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


async def _relay_progress(callback: ProgressFnT, progress: float, total: float | None, message: str | None) -> None:
    try:
        await callback(progress, total, message)
    except Exception:
        log.exception("progress callback raised")


def encode(request_id: str, method: str, params: dict[str, Any]) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def cancel_payload(request_id: str, reason: str) -> bytes:
    """The `notifications/cancelled` for one of the gateway's requests, as the SDK words it."""
    params = {"requestId": request_id, "reason": reason}
    return json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}).encode()


async def call_tool(
    client: Client,
    link: Link,
    name: str,
    arguments: dict[str, Any],
    read_timeout: float | None,
    progress: ProgressFnT | None,
) -> types.CallToolResult:
    """`client.call_tool(name, arguments, …)`, its request and answer going through `link`."""
    session = client.session
    try:
        raw = await _send(client, link, name, arguments, progress)
    except MCPError as refused:
        if refused.code != types.HEADER_MISMATCH or client.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            raise
        # The SDK's recovery: the tool's listed schema is missing or stale; list again and send once more.
        try:
            with anyio.fail_after(read_timeout):
                await client._relist_tool(name)
        except (MCPError, TimeoutError, ValueError) as relist_error:
            raise refused from relist_error
        raw = await _send(client, link, name, arguments, progress)
    result = _parse(session.protocol_version, session._call_tool_adapter, raw)
    if isinstance(result, types.InputRequiredResult):
        # The upstream asks the agent something (2026 era): the rounds go through the SDK's client.
        async def retry(
            responses: types.InputResponses | None, state: str | None
        ) -> types.CallToolResult | types.InputRequiredResult:
            again = await session.call_tool(
                name,
                arguments,
                read_timeout_seconds=read_timeout,
                progress_callback=progress,
                input_responses=responses,
                request_state=state,
                allow_input_required=True,
            )
            assert isinstance(again, types.CallToolResult | types.InputRequiredResult)
            return again

        return await client._drive_input_required(result, retry)
    if not isinstance(result, types.CallToolResult):
        # Only a client extension's claim parses into anything else, and the gateway's client declares none.
        raise RuntimeError(f"unexpected result type {type(result).__name__}")
    if not result.is_error:
        await session.validate_tool_result(name, result)
    return result


async def _send(
    client: Client, link: Link, name: str, arguments: dict[str, Any], progress: ProgressFnT | None
) -> dict[str, Any]:
    data: dict[str, Any] = {"method": "tools/call", "params": {"name": name, "arguments": arguments}}
    opts: CallOptions = {}
    client.session._stamp(data, opts)  # the negotiated version's `_meta` (2026 era) and headers
    params: dict[str, Any] = data["params"]
    request_id = link.waiters.mint()
    if progress is not None:
        params["_meta"] = {**params.get("_meta", {}), "progressToken": request_id}
    headers = opts.get("headers") or {}
    return await link.request(request_id, encode(request_id, "tools/call", params), headers, progress)


def _parse(version: str | None, adapter: TypeAdapter[Any], raw: dict[str, Any]) -> Any:
    """The answer's result as the SDK's `send_request` makes it: checked for the version, then validated."""
    ttl = raw.get("ttlMs")
    if isinstance(ttl, int | float) and not isinstance(ttl, bool) and ttl < 0:
        raw["ttlMs"] = 0
    version = version or "2025-11-25"
    surface = _surface(version)
    if surface is not None:
        # What `methods.validate_server_result` checks, without the dump of the checked model it then drops.
        surface.validate_python(raw, by_name=False)
    if not (foreign := _later_revision_fields("tools/call", version)).isdisjoint(raw):
        raw = {key: value for key, value in raw.items() if key not in foreign}
    return adapter.validate_python(raw, by_name=False)


@cache
def _surface(version: str) -> TypeAdapter[Any] | None:
    """The tools/call result as `version` defines it; None for a version without one (the SDK skips the check)."""
    if version not in KNOWN_PROTOCOL_VERSIONS:
        raise ValueError(f"version must be a known protocol version, got {version!r}")
    target: Any = methods.SERVER_RESULTS.get(("tools/call", version))
    return None if target is None else TypeAdapter[Any](target)
