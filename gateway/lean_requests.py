"""What the gateway's two lean paths check and read of a request, in one place.

`gateway.lean_calls` (the plain allowed call) and `gateway.lean_held` (a 2025-era call that may be
held) each serve some `tools/call` requests without the SDK's transport and leave every other one,
body replayed, to the SDK. Both read the body the same way, pick out a single `tools/call` the same
way, accept a 2025-era request only on the same terms as the SDK's transport (a live session opened
by the same agent, whose handshake the SDK has served, and the transport's header checks), count
it in flight for the session's idle timeout as the transport does, and answer a failure as the
session's message loop does. Each check here answers None or False on any doubt, so that the
request goes on to the SDK, which answers it as before.

The SDK internals both paths rely on are checked once, when either is built (`check_sdk`).
"""

from __future__ import annotations

import json
import logging
import math
import weakref
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
import pydantic_core
from mcp.server import Server
from mcp.server import _streamable_http_modern as modern
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.runner import ServerRunner, _has_modern_envelope
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, StreamableHTTPServerTransport, check_accept_headers
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared import jsonrpc_dispatcher
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope

from gateway.calls import CallHandler
from gateway.results import STATUS_TOOL, WAIT_TOOL
from gateway.sessions import AgentSessions

log = logging.getLogger(__name__)

_TALKS_BACK = (
    types.ClientCapabilities(elicitation=types.ElicitationCapability()),
    types.ClientCapabilities(sampling=types.SamplingCapability()),
)
_GATEWAY_TOOLS = frozenset({STATUS_TOOL, WAIT_TOOL})


def check_sdk(server: Server[Any], sessions: AgentSessions) -> None:
    """The SDK internals the lean paths rely on; a new SDK without them must fail loudly, not misbehave."""
    needed = [
        (modern, "_SingleExchangeDispatchContext"),
        (modern, "_write"),
        (modern, "_mcp_param_rejection"),
        (ServerRunner, "_compose_server_middleware"),
        (ServerRunner, "_make_context"),
        (StreamableHTTPServerTransport, "_check_content_type"),
        (jsonrpc_dispatcher, "_InFlight"),
        (jsonrpc_dispatcher.JSONRPCDispatcher, "_handle_request"),
        (jsonrpc_dispatcher.JSONRPCDispatcher, "_dispatch_notification"),
        (sessions, "_server_instances"),
        (sessions, "_session_owners"),
        (sessions, "_lifespan_state"),
    ]
    missing = [name for owner, name in needed if not hasattr(owner, name)]
    if missing:
        raise RuntimeError(f"this mcp SDK lacks {', '.join(missing)}: the lean call paths need new hooks")


class LeanPath:
    """ASGI, inside the agent's authentication: what a lean path holds, and how it reads a request.

    It serves some requests itself and passes every other one, body replayed, to `app`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        server: Server[Any],
        sessions: AgentSessions,
        handler: CallHandler,
        connections: SessionConnections,
        security: TransportSecuritySettings | None,
    ) -> None:
        check_sdk(server, sessions)
        self.app = app
        self.server = server
        self.sessions = sessions
        self.handler = handler
        self.connections = connections
        self.security = TransportSecurityMiddleware(security)
        # Tests turn it off to compare with what the SDK's transport answers, and count what it served.
        self.enabled = True
        self.served = 0

    async def _read(self, receive: Receive) -> tuple[Receive, bytes | None]:
        """`receive` replaying the request for whoever reads it next, and its body (None: the SDK's to answer)."""
        read, body = await read_body(receive, self.sessions.max_request_body_size)
        return replaying(read, receive), body


class SessionConnections:
    """The SDK's connection of each open 2025-era session, learnt from the messages it serves.

    Held weakly: a session the SDK has ended and dropped is forgotten here too.
    """

    def __init__(self) -> None:
        self._connections: weakref.WeakValueDictionary[str, Connection] = weakref.WeakValueDictionary()

    async def middleware(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        connection = getattr(ctx.session, "_connection", None)
        if isinstance(connection, Connection) and connection.session_id is not None:
            self._connections.setdefault(connection.session_id, connection)
        return await call_next(ctx)

    def get(self, session_id: str) -> Connection | None:
        return self._connections.get(session_id)


def tool_call(body: bytes) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """A single `tools/call` message, its params and its tool, if it is one for an upstream tool, else None.

    A call with a task, or for one of the gateway's own tools, is never taken by a lean path.
    """
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return None
    params = message.get("params")
    if not isinstance(params, dict) or "task" in params:
        return None
    name = params.get("name")
    if not isinstance(name, str) or name in _GATEWAY_TOOLS:
        return None
    return message, params, name


def talks_back(connection: Connection) -> bool:
    """Whether the client declared elicitation or sampling: something could be asked of it during a call."""
    return any(connection.check_capability(wanted) for wanted in _TALKS_BACK)


@dataclass(frozen=True, slots=True)
class LiveSession:
    """A 2025-era request's session, found live, owned by its agent and past its handshake."""

    session_id: str
    transport: Any  # the SDK's StreamableHTTPServerTransport of the session
    connection: Connection
    version: str  # the request's protocol version, the session's own


def live_session(
    sessions: AgentSessions,
    connections: SessionConnections,
    scope: Scope,
    request: Request,
    version: str | None,
) -> LiveSession | None:
    """The request's session if the SDK's transport would serve the request on it, else None.

    A handshake-era version, a known session that this same agent opened, whose handshake the SDK
    has served (its connection is known here once the SDK has served one message of it) in this
    same version, not terminated and not idled out.
    """
    session_id = request.headers.get(MCP_SESSION_ID_HEADER)
    if version not in HANDSHAKE_PROTOCOL_VERSIONS or session_id is None:
        return None
    transport = sessions._server_instances.get(session_id)
    user = scope.get("user")
    if transport is None or not isinstance(user, AuthenticatedUser):
        return None
    if authorization_context(user) != sessions._session_owners.get(session_id):
        return None
    connection = connections.get(session_id)
    if connection is None or not connection.initialize_accepted or connection.protocol_version != version:
        return None
    return LiveSession(session_id, transport, connection, version)


def open_session(live: LiveSession) -> bool:
    """Whether the session still takes requests: not terminated, its idle timeout not fired."""
    idle = getattr(live.transport, "idle_scope", None)
    return not (live.transport.is_terminated or (idle is not None and idle.cancel_called))


async def session_request(
    security: TransportSecurityMiddleware, live: LiveSession, request: Request, body: bytes
) -> types.JSONRPCRequest | None:
    """The request, if it passes the 2025-era transport's header checks and is a handshake-era request."""
    if await security.validate_request(request, is_post=True) is not None:
        return None
    has_json, has_sse = check_accept_headers(request)
    if not (has_json and has_sse) or not live.transport._check_content_type(request):
        return None
    try:
        message = types.jsonrpc_message_adapter.validate_python(pydantic_core.from_json(body), by_name=False)
    except ValueError:
        return None
    if not isinstance(message, types.JSONRPCRequest) or _has_modern_envelope(message.params):
        return None
    return message


def loop_error(exc: Exception) -> types.ErrorData:
    """A failed request's error as the session's message loop answers it (its code 0 included)."""
    error = jsonrpc_dispatcher.handler_exception_to_error_data(exc)
    if error is None:
        log.exception("handler for 'tools/call' raised")
        error = types.ErrorData(code=0, message=str(exc))
    return error


class in_flight:
    """The session's idle countdown stops while this request is served, as the SDK's transport does it."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def __enter__(self) -> None:
        transport = self.transport
        if transport.idle_scope is not None and transport._idle_timeout is not None:
            transport._requests_in_flight += 1
            transport.idle_scope.deadline = math.inf

    def __exit__(self, *exc: object) -> None:
        transport = self.transport
        if transport.idle_scope is not None and transport._idle_timeout is not None:
            transport._requests_in_flight -= 1
            if not transport._requests_in_flight:
                transport.idle_scope.deadline = anyio.current_time() + transport._idle_timeout


async def read_body(receive: Receive, limit: int) -> tuple[list[Message], bytes | None]:
    """What was read of the request, and its whole body if it came complete within `limit` bytes.

    Past the limit reading stops: the SDK, reading on, answers 413 as before.
    """
    read: list[Message] = []
    size = 0
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return read, None
        size += len(message.get("body", b""))
        if size > limit:
            return read, None
        if not message.get("more_body", False):
            return read, b"".join(part.get("body", b"") for part in read)


def replaying(read: list[Message], receive: Receive) -> Receive:
    """`receive` for whoever reads the request after us: what was read, then the connection as it goes on."""
    pending = list(reversed(read))

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
