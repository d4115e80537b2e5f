"""The common tool call served without the SDK's HTTP transport: same checks, same dispatch, one JSON answer.

Most calls through the gateway are `tools/call`s the policy simply lets through: one request in,
one result out, nothing streamed in between. The SDK's streamable HTTP transport serves each of
them with machinery built for the general case: in the 2025 era a hop through the session's
message loop, an SSE response (`sse_starlette`) and an event-store entry per event, which
`gateway.post_stream` then turns back into JSON; in the 2026 era a task group with two tasks and
a channel per request, in case the handler streams. `LeanCalls` answers such a call itself, in
the request's own task, and falls through to the SDK for everything else, exactly as before.

What stays the SDK's: the whole dispatch. The call runs through `ServerRunner.on_request` with
the server's middleware (OpenTelemetry span, relayed traffic, cancel log), the SDK's validation
of the request's params, the gateway's `call_tool` handler (policy, quota, audit before
forwarding) and the SDK's shaping of the result for the wire. Only the transport is replaced, and
only where nothing but the result can ever go out on the response:

- a single JSON-RPC `tools/call` request with a valid envelope, no progress token, no task, not a
  gateway tool, and a tool the policy can never hold (`CallHandler.may_hold`);
- whose agent's client declared neither elicitation nor sampling (nobody could be asked anything
  during the call), and no relayed log line could reach it: in the 2026 era the request did not
  opt in to log lines; in the 2025 era the tool's upstream does not offer logging;
- 2026 era: the same checks the SDK's single-exchange entry makes, in its order (DNS-rebinding
  protection, `Accept`, duplicated routing headers, the envelope against the headers,
  `Mcp-Param-*` headers against the tool's schema); any failure is left to the SDK to answer;
- 2025 era: a live `Mcp-Session-Id` opened by this same agent, whose handshake the session has
  seen (its connection is known here once the SDK has served one message of it), a handshake-era
  `Mcp-Protocol-Version`, and the transport's own header checks. The request counts as in flight
  for the session's idle timeout, as any other does.

Differences a client can see: none in what is answered (the tests compare both paths). A call
served here is not cancelled by `notifications/cancelled` or by the client closing its
connection: an allowed call is forwarded at once, and it runs to its end and is audited.
"""

from __future__ import annotations

import json
import logging
import math
import weakref
from collections.abc import Mapping
from typing import Any

import anyio
import mcp_types as types
import pydantic_core
from mcp.server import Server
from mcp.server import _streamable_http_modern as modern
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.runner import ServerRunner, _has_modern_envelope, aclose_shielded, modern_error_data
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, check_accept_headers
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request, find_duplicated_routing_header
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.calls import CallHandler
from gateway.lean_runner import runner_for
from gateway.mcp_server import LEAN_KEY, NotPlain
from gateway.results import STATUS_TOOL, WAIT_TOOL
from gateway.sessions import AgentSessions

log = logging.getLogger(__name__)

_TALKS_BACK = (
    types.ClientCapabilities(elicitation=types.ElicitationCapability()),
    types.ClientCapabilities(sampling=types.SamplingCapability()),
)
_GATEWAY_TOOLS = frozenset({STATUS_TOOL, WAIT_TOOL})


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


def check_sdk(server: Server[Any], sessions: AgentSessions) -> None:
    """The SDK internals this module relies on; a new SDK without them must fail loudly, not misbehave."""
    needed = [
        (modern, "_SingleExchangeDispatchContext"),
        (modern, "_write"),
        (modern, "_mcp_param_rejection"),
        (ServerRunner, "_compose_server_middleware"),
        (ServerRunner, "_make_context"),
        (sessions, "_server_instances"),
        (sessions, "_session_owners"),
        (sessions, "_lifespan_state"),
    ]
    missing = [name for owner, name in needed if not hasattr(owner, name)]
    if missing:
        raise RuntimeError(f"this mcp SDK lacks {', '.join(missing)}: the lean call path needs new hooks")


class LeanCalls:
    """ASGI, inside the agent's authentication: serve the plain allowed call here, the rest through `app`."""

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
        self._never: anyio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        read, body = await _read_body(receive, self.sessions.max_request_body_size)
        replay = _replaying(read, receive)
        if body is not None and await self._serve(scope, replay, send, body):
            self.served += 1
        else:
            await self.app(scope, replay, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> bool:
        """Answer the call if it is the plain kind; False (nothing sent) leaves it to the SDK."""
        message = self._plain_call(body)
        if message is None:
            return False
        params: dict[str, Any] = message["params"]
        request = Request(scope, receive)
        version = request.headers.get("mcp-protocol-version")
        if version in MODERN_PROTOCOL_VERSIONS:
            return await self._serve_modern(scope, receive, send, request, message, params)
        if version in HANDSHAKE_PROTOCOL_VERSIONS:
            return await self._serve_session(scope, receive, send, request, version, body, params)
        return False

    def _plain_call(self, body: bytes) -> dict[str, Any] | None:
        """The message of a tools/call that can only ever be answered with its result, or None."""
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
        meta = params.get("_meta")
        if not isinstance(name, str) or name in _GATEWAY_TOOLS or (meta is not None and not isinstance(meta, dict)):
            return None
        if meta is not None and ("progressToken" in meta or types.LOG_LEVEL_META_KEY in meta):
            return None
        if self.handler.may_hold(name):
            return None
        return message

    # ---- 2026 era

    async def _serve_modern(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: Request,
        decoded: dict[str, Any],
        params: dict[str, Any],
    ) -> bool:
        # The SDK's single-exchange entry, check for check; the first that fails leaves the request to it.
        if await self.security.validate_request(request, is_post=True) is not None:
            return False
        has_json, has_sse = check_accept_headers(request)
        if not (has_json and has_sse):
            return False
        try:
            req = types.JSONRPCRequest.model_validate(decoded)
        except ValidationError:
            return False
        if find_duplicated_routing_header(request.headers.items()) is not None:
            return False
        verdict = classify_inbound_request(decoded, headers=dict(request.headers))
        if isinstance(verdict, InboundLadderRejection):
            return False
        state = self.sessions._lifespan_state
        if await modern._mcp_param_rejection(self.server, request, req, verdict, state) is not None:
            return False
        connection = Connection.from_envelope(
            verdict.protocol_version, verdict.client_info, verdict.client_capabilities
        )
        if not self._quiet(connection, params, legacy=False):
            return False
        dctx = self._exchange(request, req.id)
        try:
            scope[LEAN_KEY] = True
            # As the SDK's `serve_one`: one runner for the request, the connection's exit stack closed after it.
            runner = runner_for(self.server, connection, state, req.params, request)
            try:
                result = await runner.on_request(dctx, "tools/call", req.params)
            finally:
                await aclose_shielded(connection)
        except NotPlain:
            return False
        except Exception as exc:
            # As the SDK's single-exchange entry maps a failure (modern._to_jsonrpc_response).
            failure = types.JSONRPCError(jsonrpc="2.0", id=req.id, error=modern_error_data(exc))
            await modern._write(failure, scope, receive, send)
            return True
        finally:
            scope.pop(LEAN_KEY, None)
        await _write_result(req.id, result, scope, receive, send)
        return True

    # ---- 2025 era

    async def _serve_session(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: Request,
        version: str,
        body: bytes,
        params: dict[str, Any],
    ) -> bool:
        session_id = request.headers.get(MCP_SESSION_ID_HEADER)
        if session_id is None:
            return False
        transport = self.sessions._server_instances.get(session_id)
        user = scope.get("user")
        if transport is None or not isinstance(user, AuthenticatedUser):
            return False
        if authorization_context(user) != self.sessions._session_owners.get(session_id):
            return False
        connection = self.connections.get(session_id)
        if connection is None or not connection.initialize_accepted or connection.protocol_version != version:
            return False
        idle = getattr(transport, "idle_scope", None)
        if transport.is_terminated or (idle is not None and idle.cancel_called):
            return False
        if await self.security.validate_request(request, is_post=True) is not None:
            return False
        has_json, has_sse = check_accept_headers(request)
        if not (has_json and has_sse) or not transport._check_content_type(request):
            return False
        try:
            message = types.jsonrpc_message_adapter.validate_python(pydantic_core.from_json(body), by_name=False)
        except ValueError:
            return False
        if not isinstance(message, types.JSONRPCRequest) or _has_modern_envelope(message.params):
            return False
        if not self._quiet(connection, params, legacy=True):
            return False
        dctx = self._exchange(request, message.id)
        runner = runner_for(self.server, connection, self.sessions._lifespan_state, message.params, request)
        reply: types.JSONRPCResponse | types.JSONRPCError
        with _in_flight(transport):
            try:
                scope[LEAN_KEY] = True
                result = await runner.on_request(dctx, "tools/call", message.params)
                reply = types.JSONRPCResponse(jsonrpc="2.0", id=message.id, result=result)
            except NotPlain:
                return False
            except Exception as exc:
                # As the session's message loop answers a failed request (its code 0 included).
                error = handler_exception_to_error_data(exc)
                if error is None:
                    log.exception("handler for 'tools/call' raised")
                    error = types.ErrorData(code=0, message=str(exc))
                reply = types.JSONRPCError(jsonrpc="2.0", id=message.id, error=error)
            finally:
                scope.pop(LEAN_KEY, None)
        payload = reply.model_dump_json(by_alias=True, exclude_unset=True).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"mcp-session-id", session_id.encode("latin-1")),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload, "more_body": False})
        return True

    # ---- both

    def _exchange(self, request: Request, request_id: types.RequestId) -> modern._SingleExchangeDispatchContext:
        """The dispatch context of one request answered here: no back-channel, never cancelled."""
        return modern._SingleExchangeDispatchContext(
            transport=TransportContext(kind="streamable-http", can_send_request=False, headers=request.headers),
            request_id=request_id,
            message_metadata=ServerMessageMetadata(request_context=request),
            cancel_requested=self._not_cancelled(),
        )

    def _not_cancelled(self) -> anyio.Event:
        """The cancel flag of a call served here: nothing can set it (no message loop delivers a cancel), so
        one shared event serves them all; making one per call was a visible share of a 2026-era call's time."""
        if self._never is None:
            self._never = anyio.Event()
        return self._never

    def _quiet(self, connection: Connection, params: Mapping[str, Any], *, legacy: bool) -> bool:
        """Nothing but the result can go out: nobody to ask, and no log line to relay."""
        if any(connection.check_capability(wanted) for wanted in _TALKS_BACK):
            return False
        if legacy:
            route = self.handler.upstreams.route(str(params.get("name")))
            offer = getattr(route.upstream, "offer", None) if route is not None else None
            capabilities = getattr(offer, "capabilities", None)
            if capabilities is not None and capabilities.logging is not None:
                return False
        return True


class _in_flight:
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


async def _write_result(
    request_id: types.RequestId, result: dict[str, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    """A 2026-era success as the SDK's entry writes it, byte for byte, without a response model in between.

    The SDK has already shaped `result` for the wire (validated and dumped for the request's version),
    so it is JSON as it stands; building a `JSONRPCResponse` around it and dumping that again only
    copied it. A value standard JSON cannot carry (NaN, infinity) is left to the SDK's writer, which
    turns it into null.
    """
    try:
        body = json.dumps(
            {"jsonrpc": "2.0", "id": request_id, "result": result}, separators=(",", ":"), allow_nan=False
        )
    except ValueError:
        await modern._write(types.JSONRPCResponse(jsonrpc="2.0", id=request_id, result=result), scope, receive, send)
        return
    payload = body.encode()
    start: Message = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-length", str(len(payload)).encode()), (b"content-type", b"application/json")],
    }
    await send(start)
    await send({"type": "http.response.body", "body": payload})


async def _read_body(receive: Receive, limit: int) -> tuple[list[Message], bytes | None]:
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


def _replaying(read: list[Message], receive: Receive) -> Receive:
    """`receive` for whoever reads the request after us: what was read, then the connection as it goes on."""
    pending = list(reversed(read))

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
