"""The SDK's dispatch of a lean call, without the spans that would record nothing.

`gateway.lean_calls` runs the plain allowed call through the SDK's own `ServerRunner`. Its first
middleware is the SDK's OpenTelemetry span; until a tracer provider is set (`gateway.tracing`),
that span, like the gateway's own spans of the call, records nothing, and with no `traceparent`
in the request there is no trace for it to carry upstream either. Entering and leaving it was
still a visible share of the call's time. For such a call the runner here composes the same
middleware chain without it: the gateway's middleware in order, the params' validation, the
handler, the result's shaping for the request's version, all the SDK's.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from mcp.server import Server
from mcp.server._otel import OpenTelemetryMiddleware
from mcp.server.connection import Connection
from mcp.server.context import CallNext, ServerRequestContext
from mcp.server.runner import ServerRunner
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
