"""A streamable HTTP upstream's connection, shared by the SDK's client and the gateway's own tools/call.

The SDK's streamable HTTP transport carries everything the SDK's client sends (the handshake,
listings, pings, its answers to the upstream's requests, the GET stream); this module runs that
transport itself only to keep it at hand: its session id goes on the gateway's own requests. A
forwarded tools/call is one POST of the gateway's own through the same HTTP client, stamped by the
SDK's session for the negotiated version (the `MCP-Protocol-Version` header, and in the 2026 era
`_meta`, `Mcp-Method`, `Mcp-Name` and `Mcp-Param-*`), without the transport's task per message.

The answer is plain JSON or a stream of events (`gateway.upstream_wire` settles it): progress for
the call goes to its callback, its answer ends it, and anything else on the stream (the upstream's
log lines, its requests to the client) is handed to the SDK's client in the calling task's context,
as the SDK's transport does, so it reaches the agent whose call it belongs to. The answers the SDK's
transport makes of an HTTP failure are kept: 202, a redirect not followed, an error status (with a
JSON-RPC error in its body or not), an unexpected content type, a stream that ends without an answer.
Walking away from the call closes its response (the 2026-era cancellation) and sends
`notifications/cancelled` through the SDK's transport, which posts it where the era wants it
(2025) and drops it where it does not (2026).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any, Protocol

import anyio
import httpx2
import mcp_types as types
from mcp import MCPError
from mcp.client._transport import TransportStreams
from mcp.client.streamable_http import DEFAULT_MAX_SSE_EVENT_SIZE, MCP_SESSION_ID, StreamableHTTPTransport
from mcp.shared._context_streams import ContextSendStream, create_context_streams
from mcp.shared._httpx_utils import redirect_location, stream_within_origin
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.message import SessionMessage

from gateway.upstream_h1 import H1Pool, Lost
from gateway.upstream_wire import CANCEL_WRITE_SECONDS, Waiters, outcome

log = logging.getLogger(__name__)

_ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


class HttpLink:
    """One connection to a URL: `open()` is the SDK client's transport, `request` the lean call."""

    def __init__(self, url: str, http: httpx2.AsyncClient, h1: H1Pool | None = None) -> None:
        self.url = url
        self._http = http
        self._h1 = h1  # the calls' own connections (a plain-HTTP upstream without a proxy), else httpx's
        self.waiters = Waiters()
        self._transport: StreamableHTTPTransport | None = None
        self._to_client: ContextSendStream[SessionMessage | Exception] | None = None
        self._from_gateway: ContextSendStream[SessionMessage] | None = None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[TransportStreams]:
        transport = StreamableHTTPTransport(self.url, max_sse_event_size=DEFAULT_MAX_SSE_EVENT_SIZE)
        to_client, client_reads = create_context_streams[SessionMessage | Exception](0)
        client_writes, to_upstream = create_context_streams[SessionMessage](0)
        async with to_client, client_reads, client_writes, to_upstream, anyio.create_task_group() as tg:

            def start_get_stream() -> None:
                tg.start_soon(transport.handle_get_stream, self._http, to_client)

            tg.start_soon(
                transport.post_writer, self._http, to_upstream, to_client, client_writes, start_get_stream, tg
            )
            self._transport, self._to_client, self._from_gateway = transport, to_client, client_writes
            try:
                yield client_reads, client_writes
            finally:
                self._transport = self._to_client = self._from_gateway = None
                self.waiters.close()
                if self._h1 is not None:
                    self._h1.close()
                if transport.session_id:
                    await transport.terminate_session(self._http)
                tg.cancel_scope.cancel()

    async def request(
        self, request_id: str, payload: bytes, headers: Mapping[str, str], progress: ProgressFnT | None
    ) -> dict[str, Any]:
        transport = self._transport
        if transport is None:
            raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed")
        sent = dict(_ACCEPT)
        if transport.session_id:
            sent[MCP_SESSION_ID] = transport.session_id
        sent.update(headers)
        self.waiters.add(request_id, progress)
        in_session = bool(transport.session_id)
        try:
            if self._h1 is not None:
                try:
                    async with self._h1.post(sent, payload) as connection:
                        result = await self._answer(connection, request_id, in_session)
                except Lost as exc:
                    raise MCPError(code=types.CONNECTION_CLOSED, message=f"Connection closed: {exc}") from None
            else:
                async with stream_within_origin(self._http, "POST", self.url, content=payload, headers=sent) as reply:
                    result = await self._answer(_Reply(reply), request_id, in_session)
            await self.waiters.relayed(request_id)
            return result
        except anyio.get_cancelled_exc_class():
            with anyio.move_on_after(CANCEL_WRITE_SECONDS, shield=True):
                await self._cancel(request_id)
            raise
        finally:
            self.waiters.drop(request_id)

    async def _cancel(self, request_id: str) -> None:
        writes = self._from_gateway
        if writes is None:
            return
        notice = types.JSONRPCNotification(
            jsonrpc="2.0",
            method="notifications/cancelled",
            params={"requestId": request_id, "reason": "caller cancelled"},
        )
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await writes.send(SessionMessage(notice))

    async def _answer(self, reply: Reply, request_id: str, in_session: bool) -> dict[str, Any]:
        status = reply.status
        if status == 202:
            raise MCPError(code=types.INVALID_REQUEST, message="server answered a request with 202 Accepted")
        if 300 <= status < 400 and reply.header("location"):
            raise MCPError(code=types.INVALID_REQUEST, message=f"Redirect to {reply.header('location')} not followed")
        kind = reply.header("content-type").lower()
        if status >= 400:
            if kind.startswith("application/json"):
                error = _error_of(await reply.body())
                if error is not None:
                    raise error
            if status == 404:
                raise (
                    MCPError(code=types.INVALID_REQUEST, message="Session terminated")
                    if in_session
                    else MCPError(code=types.METHOD_NOT_FOUND, message="Not Found")
                )
            raise MCPError(code=types.INTERNAL_ERROR, message="Server returned an error response")
        if kind.startswith("application/json"):
            body = await reply.body()
            try:
                message = json.loads(body)
            except ValueError as exc:
                raise MCPError(code=types.PARSE_ERROR, message=f"Failed to parse JSON response: {exc}") from None
            return self._settle(message, request_id)
        if kind.startswith("text/event-stream"):
            return await self._events(reply, request_id)
        raise MCPError(code=types.INVALID_REQUEST, message=f"Unexpected content type: {kind}")

    async def _events(self, reply: Reply, request_id: str) -> dict[str, Any]:
        try:
            async for event, data in reply.events():
                if event != "message" or not data:
                    continue  # a priming event (an id for resuming, no message)
                try:
                    message = json.loads(data)
                except ValueError as exc:
                    raise MCPError(code=types.PARSE_ERROR, message=f"Failed to parse SSE message: {exc}") from None
                if type(message) is dict and "method" not in message and ("result" in message or "error" in message):
                    # The answer on a request's own stream is its answer, whatever id the upstream wrote.
                    return self._settle(message, request_id)
                if not self.waiters.take(message):
                    await self._hand_over(message)
        except (httpx2.SSEError, Lost) as exc:
            raise MCPError(code=types.CONNECTION_CLOSED, message=f"SSE stream failed: {exc}") from None
        raise MCPError(code=types.CONNECTION_CLOSED, message="SSE stream ended without a response")

    def _settle(self, message: Any, request_id: str) -> dict[str, Any]:
        answer = outcome(message) if type(message) is dict else None
        if answer is None:
            raise MCPError(code=types.PARSE_ERROR, message="Failed to parse JSON response: not a JSON-RPC answer")
        if isinstance(answer, MCPError):
            raise answer
        return answer

    async def _hand_over(self, message: Any) -> None:
        """A message on the call's stream that is not about the call: the SDK's client handles it."""
        to_client = self._to_client
        if to_client is None:
            return
        item: SessionMessage | Exception
        try:
            item = SessionMessage(types.jsonrpc_message_adapter.validate_python(message, by_name=False))
        except ValueError as exc:
            log.error("Failed to parse SSE message: %s", exc)
            item = exc
        await to_client.send(item)


class Reply(Protocol):
    """An answer's status, headers and body, from httpx (`_Reply`) or a connection of the gateway's own."""

    status: int

    def header(self, name: str) -> str: ...

    async def body(self) -> bytes: ...

    def events(self) -> AsyncIterator[tuple[str, str]]: ...


class _Reply:
    """An httpx response as a `Reply`."""

    def __init__(self, response: httpx2.Response) -> None:
        self._response = response
        self.status = response.status_code

    def header(self, name: str) -> str:
        if name == "location":
            location = redirect_location(self._response)
            return "" if location is None else str(location)
        return self._response.headers.get(name, "")

    async def body(self) -> bytes:
        return await self._response.aread()

    async def events(self) -> AsyncIterator[tuple[str, str]]:
        async for event in httpx2.EventSource(self._response, max_event_size=DEFAULT_MAX_SSE_EVENT_SIZE):
            yield event.event, event.data


def _error_of(body: bytes) -> MCPError | None:
    """The JSON-RPC error an error status carries in its body, if it carries one."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
    error = message.get("error") if type(message) is dict else None
    if type(error) is not dict or type(error.get("code")) is not int or type(error.get("message")) is not str:
        return None
    return MCPError(code=error["code"], message=error["message"], data=error.get("data"))
