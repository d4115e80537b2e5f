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
from collections.abc import Mapping
from typing import Any

import anyio
import mcp_types as types
from mcp.server import _streamable_http_modern as modern
from mcp.server.connection import Connection
from mcp.server.runner import aclose_shielded, modern_error_data
from mcp.server.streamable_http import check_accept_headers
from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request, find_duplicated_routing_header
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from gateway.lean_requests import (
    LeanPath,
    in_flight,
    live_session,
    loop_error,
    open_session,
    session_request,
    talks_back,
    tool_call,
)
from gateway.lean_runner import plain_runner_for, runner_for
from gateway.mcp_server import LEAN_KEY, NotPlain


class LeanCalls(LeanPath):
    """ASGI, inside the agent's authentication: serve the plain allowed call here, the rest through `app`."""

    # The cancel flag every call served here shares (`_not_cancelled`), made on first use.
    _never: anyio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        replay, body = await self._read(receive)
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
        call = tool_call(body)
        if call is None:
            return None
        message, params, name = call
        meta = params.get("_meta")
        if meta is not None and not isinstance(meta, dict):
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
            plain = plain_runner_for(self.server, connection, state, params, request)
            if plain is not None:
                result = await plain.call(dctx, params)
            else:
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
        live = live_session(self.sessions, self.connections, scope, request, version)
        if live is None or not open_session(live):
            return False
        message = await session_request(self.security, live, request, body)
        if message is None:
            return False
        connection = live.connection
        if not self._quiet(connection, params, legacy=True):
            return False
        dctx = self._exchange(request, message.id)
        runner = runner_for(self.server, connection, self.sessions._lifespan_state, message.params, request)
        reply: types.JSONRPCResponse | types.JSONRPCError
        with in_flight(live.transport):
            try:
                scope[LEAN_KEY] = True
                result = await runner.on_request(dctx, "tools/call", message.params)
                reply = types.JSONRPCResponse(jsonrpc="2.0", id=message.id, result=result)
            except NotPlain:
                return False
            except Exception as exc:
                reply = types.JSONRPCError(jsonrpc="2.0", id=message.id, error=loop_error(exc))
            finally:
                scope.pop(LEAN_KEY, None)
        payload = reply.model_dump_json(by_alias=True, exclude_unset=True).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"mcp-session-id", live.session_id.encode("latin-1")),
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
        if talks_back(connection):
            return False
        if legacy:
            route = self.handler.upstreams.route(str(params.get("name")))
            offer = getattr(route.upstream, "offer", None) if route is not None else None
            capabilities = getattr(offer, "capabilities", None)
            if capabilities is not None and capabilities.logging is not None:
                return False
        return True


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
