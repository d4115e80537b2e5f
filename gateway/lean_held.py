"""A 2025-era tool call that may be held, served on the gateway's own event stream: one task while it waits.

The SDK's 2025-era transport answers a POST through its general machinery: the request crosses
the session's message loop into a handler task of its own, and its answer comes back through the
transport's message router, a memory stream per request, an SSE writer task and sse_starlette's
response with its listener tasks: about eight tasks and several hundred objects per call for as
long as it waits, which a held call does for minutes, by the ten thousand. `LeanHeld` serves such
a call in the request's own task instead (the client leaving is flagged by the connection itself,
`gateway.http_protocol.RawStream`; only where it cannot be, by one small task reading the
connection), and writes the event stream itself, frame for frame as the SDK's transport does:

- the same headers, the priming event (an id from the session's event store, empty data, the
  `retry` hint), then each message as `id`, `event: message` and `data` (the JSON the SDK's
  model dump writes), every event kept in the same event store under the same stream name, so a
  client that reconnects with `Last-Event-ID` has them replayed by the SDK as before;
- the dispatch is the SDK's: `ServerRunner.on_request` with the server's middleware (but the SDK's
  span middleware where no span would be recorded or carry a trace, as `gateway.lean_runner` leaves
  it out for the allowed call), its validation of the params, the gateway's `call_tool` handler, and
  the SDK's shaping of the result; a failure is answered as the session's message loop answers it;
- the request is entered in the session dispatcher's table of requests in flight, so a client's
  `notifications/cancelled` cancels it exactly as it cancels a request the loop dispatched, and a
  cancelled request's stream ends with the same `REQUEST_CANCELLED` error;
- the client leaving (its connection closing) is flagged as before (`gateway.post_stream`), and
  keep-alives and the held call's notices go onto the stream as before; the response goes through
  the same `PostStream`, which answers plain JSON where the result is all there is.

Only a call that can do nothing else is taken: one JSON-RPC `tools/call` request on a live,
initialized session of the same agent, in a handshake-era protocol version, for a tool the policy
may hold, from a client that declared neither elicitation nor sampling (nobody can be asked
anything on its stream), with the transport's header checks passing. Everything else goes on to
the SDK's transport, as before. One difference: a call served here whose session is deleted
while it waits ends when its connection does, as a client leaving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import mcp_types as types
from anyio import EventStatistics
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server import Server
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, REQUEST_CANCELLED
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared import jsonrpc_dispatcher
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.exceptions import NoBackChannelError
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types.version import is_version_at_least
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.calls import CallHandler
from gateway.event_store import RETRY_MS, SessionEvents
from gateway.http_protocol import RAW_KEY
from gateway.lean_requests import (
    LeanPath,
    LiveSession,
    SessionConnections,
    in_flight,
    live_session,
    loop_error,
    open_session,
    session_request,
    talks_back,
    tool_call,
)
from gateway.lean_runner import runner_for
from gateway.mcp_server import STREAM_KEY
from gateway.memory_trim import MemoryTrim
from gateway.post_stream import PostStream
from gateway.sessions import AgentSessions

_TRANSPORT = TransportContext(kind="jsonrpc", can_send_request=False)
# What the SDK's transport puts in a request's SSE response headers, as sse_starlette writes them out.
_SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "Connection": "keep-alive",
    "Content-Type": "text/event-stream",
}
_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}
# What marks a call served here as a live stream of its session in the SDK's table (see `LeanHeld._run`).
_LIVE: tuple[MemoryObjectSendStream[Any], MemoryObjectReceiveStream[Any]] = anyio.create_memory_object_stream[Any](1)
_LIVE[0].close()
_LIVE[1].close()


def sse_headers() -> list[tuple[bytes, bytes]]:
    """The response headers the SDK's transport sends with a request's event stream, but the session id."""
    built = EventSourceResponse(content=iter(()), headers={**_SSE_HEADERS, MCP_SESSION_ID_HEADER: "-"})
    return list(built.raw_headers)


_SESSION_HEADER = MCP_SESSION_ID_HEADER.lower().encode("latin-1")


class CancelFlag(anyio.Event):
    """A held call's cancel flag (set by the session's dispatcher when the client cancels the call).

    Ten thousand held calls each have one that almost never fires and that nobody waits on: a plain
    flag, with a future only for someone who does wait, instead of an event with its queue of waiters.
    """

    __slots__ = ("_set", "_waiters")

    def __new__(cls) -> CancelFlag:
        return object.__new__(cls)

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            await anyio.lowlevel.checkpoint()
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)

    def statistics(self) -> EventStatistics:
        return EventStatistics(len(self._waiters or ()))


@dataclass(eq=False, slots=True)
class HeldExchange:
    """The dispatch context of one call served here: its messages become frames on its own stream."""

    request: Request
    request_id: types.RequestId
    frames: Frames
    progress_token: types.ProgressToken | None = None
    cancel_requested: anyio.Event = field(default_factory=CancelFlag)
    closed: bool = False

    @property
    def transport(self) -> TransportContext:
        return _TRANSPORT

    @property
    def can_send_request(self) -> bool:
        return False

    @property
    def message_metadata(self) -> ServerMessageMetadata:
        return ServerMessageMetadata(request_context=self.request)

    async def send_raw_request(self, method: str, params: Mapping[str, Any] | None, opts: Any = None) -> dict[str, Any]:
        raise NoBackChannelError(method)

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: Any = None) -> None:
        if self.closed:
            return
        if params is not None:
            message = types.JSONRPCNotification(jsonrpc="2.0", method=method, params=dict(params))
        else:
            message = types.JSONRPCNotification(jsonrpc="2.0", method=method)
        await self.frames.message(message.model_dump_json(by_alias=True, exclude_unset=True))

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        if self.progress_token is None:
            return
        params: dict[str, Any] = {"progressToken": self.progress_token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        await self.notify("notifications/progress", params)


class Frames:
    """One request's event stream: each message kept in the session's events, then sent as its SSE frame."""

    __slots__ = ("ended", "events", "send", "stream")

    def __init__(self, events: SessionEvents | None, stream: str, send: Send) -> None:
        self.events = events
        self.stream = stream
        self.send = send
        self.ended = False

    def priming(self) -> bytes:
        """The stream's opening event, kept like the SDK's, so a client can resume from it."""
        if self.events is None:
            return b""
        return f"id: {self.events.store_wire(self.stream, None)}\r\ndata: \r\nretry: {RETRY_MS}\r\n\r\n".encode()

    async def message(self, data: str) -> None:
        frame = f"event: message\r\ndata: {data}\r\n\r\n"
        if self.events is not None:
            frame = f"id: {self.events.store_wire(self.stream, data)}\r\n{frame}"
        await self._write(frame.encode())

    async def _write(self, body: bytes) -> None:
        if self.ended:
            return
        try:
            await self.send({"type": "http.response.body", "body": body, "more_body": True})
        except OSError:
            self.ended = True  # the connection is gone; what was kept is replayed to a client that comes back

    async def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            await self.send(_END)
        except OSError:
            return


class LeanHeld(LeanPath):
    """ASGI, inside the agent's authentication: serve a 2025-era call that may be held here, the rest through `app`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        server: Server[Any],
        sessions: AgentSessions,
        handler: CallHandler,
        connections: SessionConnections,
        security: TransportSecuritySettings | None,
        memory: MemoryTrim | None = None,
    ) -> None:
        super().__init__(
            app, server=server, sessions=sessions, handler=handler, connections=connections, security=security
        )
        self.memory = memory
        self._headers: list[tuple[bytes, bytes]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.memory is not None:
            self.memory.note()
        stream = scope.get(STREAM_KEY)
        if not self.enabled or scope["type"] != "http" or not isinstance(stream, PostStream):
            await self.app(scope, receive, send)
            return
        replay, body = await self._read(receive)
        if body is None or not await self._serve(scope, replay, send, body, stream):
            await self.app(scope, replay, send)

    def _candidate(self, body: bytes) -> str | None:
        """The tool of a single `tools/call` that may be held and can be served here, or None."""
        call = tool_call(body)
        if call is None:
            return None
        message, _, name = call
        if "id" not in message or not self.handler.may_hold(name):
            return None
        return name

    async def _serve(self, scope: Scope, receive: Receive, send: Send, body: bytes, stream: PostStream) -> bool:
        """Serve the call if it is the kind taken here; False (nothing sent) leaves it to the SDK."""
        if self._candidate(body) is None:
            return False
        request = Request(scope, receive)
        version = request.headers.get("mcp-protocol-version")
        live = live_session(self.sessions, self.connections, scope, request, version)
        if live is None:
            return False
        connection, transport = live.connection, live.transport
        dispatcher = connection.outbound
        if not isinstance(dispatcher, jsonrpc_dispatcher.JSONRPCDispatcher):
            return False
        if transport.is_json_response_enabled or not open_session(live):
            return False
        message = await session_request(self.security, live, request, body)
        if message is None or talks_back(connection):
            return False
        key = str(message.id)
        if key in transport._request_streams:
            return False  # a request of the same id still streams on this session: the SDK's to sort out
        self.served += 1
        await self._run(request, send, stream, message, live, dispatcher)
        return True

    async def _run(
        self,
        request: Request,
        send: Send,
        stream: PostStream,
        message: types.JSONRPCRequest,
        live: LiveSession,
        dispatcher: jsonrpc_dispatcher.JSONRPCDispatcher[Any],
    ) -> None:
        transport, connection = live.transport, live.connection
        key = str(message.id)
        frames = Frames(stream.events, key, send)
        dctx = HeldExchange(request, message.id, frames, jsonrpc_dispatcher.progress_token_from_params(message.params))
        scope = anyio.CancelScope()
        entry = jsonrpc_dispatcher._InFlight(scope=scope, dctx=dctx)  # type: ignore[arg-type]
        dispatch_id = coerce_request_id(message.id)
        # While the call is live its stream is the transport's too: a client resuming it has what was kept
        # replayed, and is not kept waiting on a second copy of a stream this response still carries.
        # Only the key's presence matters (nothing of this call goes the SDK's way), so every such call shares
        # one closed pair: a message the SDK's router might still route here is kept for replay, not queued.
        transport._request_streams[key] = _LIVE
        dispatcher._in_flight[dispatch_id] = entry
        # The connection's end flags the client leaving: from the connection itself where it can (no task),
        # else from a small task reading it.
        raw = request.scope.get(RAW_KEY)
        listener = None if stream.attach(raw) else asyncio.get_running_loop().create_task(_listen(stream))
        reply: str | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self._sse_headers(live.session_id)})
            if is_version_at_least(live.version, "2025-11-25"):
                priming = frames.priming()
                if priming:
                    await send({"type": "http.response.body", "body": priming, "more_body": True})
            # Untraced (no provider, no trace to carry), the SDK's span middleware is left out: nothing it would
            # record, and a held call would keep its frame, span and context managers for as long as it waits.
            runner = runner_for(self.server, connection, self.sessions._lifespan_state, message.params, request)
            with in_flight(transport), scope:
                try:
                    result = await runner.on_request(dctx, "tools/call", message.params)
                    reply = _dump(types.JSONRPCResponse(jsonrpc="2.0", id=message.id, result=result))
                except Exception as exc:
                    reply = _dump(types.JSONRPCError(jsonrpc="2.0", id=message.id, error=loop_error(exc)))
                finally:
                    dctx.closed = True
                    if dispatcher._in_flight.get(dispatch_id) is entry:
                        del dispatcher._in_flight[dispatch_id]
            if dctx.cancel_requested.is_set():
                # A cancelled request is not answered; its stream ends as the SDK's transport ends it.
                cancelled = types.ErrorData(code=REQUEST_CANCELLED, message="Request cancelled")
                reply = _dump(types.JSONRPCError(jsonrpc="2.0", id=message.id, error=cancelled))
            if reply is not None:
                await frames.message(reply)
            await frames.end()
        finally:
            if listener is not None:
                listener.cancel()
            streams = transport._request_streams.pop(key, None)
            if streams is not None and streams is not _LIVE:
                streams[0].close()
                streams[1].close()

    def _sse_headers(self, session_id: str) -> list[tuple[bytes, bytes]]:
        if self._headers is None:
            self._headers = sse_headers()
        session = session_id.encode("latin-1")
        return [(name, session if name == _SESSION_HEADER else value) for name, value in self._headers]


def _dump(message: types.JSONRPCResponse | types.JSONRPCError) -> str:
    return message.model_dump_json(by_alias=True, exclude_unset=True)


async def _listen(stream: PostStream) -> None:
    """Read the connection until it ends: `PostStream` flags the client leaving, which a held call watches."""
    while not stream.gone.is_set():
        message = await stream.receive()
        if message["type"] == "http.disconnect":
            return
