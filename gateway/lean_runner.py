"""The SDK's dispatch of a lean call, without the spans that would record nothing or the steps it cannot need.

`gateway.lean_calls` runs the plain allowed call through the SDK's own `ServerRunner`. Its first
middleware is the SDK's OpenTelemetry span; until a tracer provider is set (`gateway.tracing`),
that span, like the gateway's own spans of the call, records nothing, and with no `traceparent`
in the request there is no trace for it to carry upstream either. Entering and leaving it was
still a visible share of the call's time. For such a call the runner here composes the same
middleware chain without it: the gateway's middleware in order, the params' validation, the
handler, the result's shaping for the request's version, all the SDK's.

`PlainRunner.call` is that dispatch for the plain allowed 2026-era `tools/call` alone (no progress
token, no log-level opt-in, nobody to ask; `gateway.lean_calls` decides), without the steps of the
SDK's general `on_request` that such a call never needs: lifting `_meta` into a model for the
request context (it only feeds the progress token and the log-level gate, both absent here; the
handler reads `_meta` from its own params), the handshake branches (a 2026-era request has no
handshake), and unwinding the connection's exit stack when nothing was put on it. Validation,
middleware, handler and result shaping are the SDK's own, in its order, so the answer is the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import mcp_types as types
from mcp.server import Server
from mcp.server._otel import OpenTelemetryMiddleware
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.runner import ServerRunner, _dump_result, aclose_shielded
from mcp.shared.dispatcher import DispatchContext
from mcp.shared.exceptions import MCPError
from mcp.shared.transport_context import TransportContext
from mcp_types import methods
from starlette.requests import Request

from gateway import tracing


class UntracedRunner(ServerRunner[Any]):
    """The SDK's runner without its OpenTelemetry middleware, for a call whose spans would all be no-ops."""

    def _compose_server_middleware(self, inner: CallNext) -> CallNext:
        call = inner
        for middleware in reversed(self.server.middleware):
            if not isinstance(middleware, OpenTelemetryMiddleware):
                call = partial(_apply, middleware, call)
        return call


class PlainRunner(UntracedRunner):
    """The untraced runner serving one plain 2026-era `tools/call`: the SDK's steps that call can need, in order."""

    async def call(self, dctx: DispatchContext[TransportContext], params: Mapping[str, Any]) -> dict[str, Any]:
        """The call's result shaped for the wire, as `on_request` returns it; raises as `on_request` raises."""
        method = "tools/call"
        version = self.connection.protocol_version
        ctx = self._make_context(dctx, method, params, None, version)

        async def inner(ctx: ServerRequestContext[Any, Any]) -> HandlerResult:
            # As the SDK's `_inner`: the spec surface first, then the handler's own params model.
            try:
                methods.validate_client_request(ctx.method, version, ctx.params)
            except KeyError:
                raise MCPError(code=types.METHOD_NOT_FOUND, message="Method not found", data=ctx.method) from None
            entry = self.server.get_request_handler(ctx.method)
            if entry is None:
                raise MCPError(code=types.METHOD_NOT_FOUND, message="Method not found", data=ctx.method)
            typed = entry.params_type.model_validate({} if ctx.params is None else ctx.params, by_name=False)
            result = await entry.handler(ctx, typed)
            if isinstance(result, types.ErrorData):
                raise MCPError.from_error_data(result)
            return self._serialize(ctx.method, version, result)

        try:
            return _dump_result(await self._compose_server_middleware(inner)(ctx))
        finally:
            if _entered(self.connection):
                await aclose_shielded(self.connection)


def _entered(connection: Connection) -> bool:
    """Whether anything was put on the connection's exit stack (unknown: assume so, and unwind it)."""
    callbacks = getattr(connection.exit_stack, "_exit_callbacks", None)
    return callbacks is None or len(callbacks) > 0


def _apply(middleware: Any, call_next: CallNext, ctx: ServerRequestContext[Any, Any]) -> Any:
    return middleware(ctx, call_next)


def runner_for(
    server: Server[Any], connection: Connection, state: Any, params: Mapping[str, Any] | None, request: Request
) -> ServerRunner[Any]:
    """The SDK's runner; the untraced one when no span of this call would be recorded or carry a trace."""
    meta = params.get("_meta") if params is not None else None
    if tracing.untraced(meta if isinstance(meta, Mapping) else None, request.headers):
        return UntracedRunner(server, connection, state)
    return ServerRunner(server, connection, state)


def plain_runner_for(
    server: Server[Any], connection: Connection, state: Any, params: Mapping[str, Any], request: Request
) -> PlainRunner | None:
    """The plain 2026-era call's own runner, or None when a span of it would be recorded or carry a trace."""
    meta = params.get("_meta")
    if tracing.untraced(meta if isinstance(meta, Mapping) else None, request.headers):
        return PlainRunner(server, connection, state)
    return None
