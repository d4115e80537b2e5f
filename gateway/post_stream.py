"""One 2025-era `/mcp` POST's response: notice the client leaving, keep a silent stream alive, and
answer plain JSON when the result is all there is to send.

The SDK's 2025-era transport answers every request with an SSE stream. Most tool calls (those the
policy allows) put exactly one event on it, their result, and end it: such a response is sent as
`application/json` instead (the transport allows either; the client's `Accept` names both), so
neither side frames or parses an event stream for it. Only `tools/call` is answered so, the one
request on every call's path; the rest (lists, reads, prompts) keep the SDK's framing, so a client
that checks what a POST's event stream can do sees the same there as from the upstream. Whatever
else comes first on a call (a progress notice, a relayed upstream message or request, a keep-alive)
commits the response to SSE at once, and the stream goes on as the SDK wrote it.

A held call can be silent for minutes; a client's read timeout (httpx's default is 5 s) fires when
no byte arrives for that long. So a stream silent for `keepalive_interval` gets an SSE comment
(`: keep-alive`, which every SSE parser skips), and a response whose headers have not gone out by
then commits to SSE with that comment. Every open response waits on the loop's one keep-alive
wheel (`gateway.frame_clock`), which writes each due comment in one pass, without a timer or a
task per stream; a write that has to wait for a slow client goes on in a task of its own.

The client leaving: the SSE response listens for `http.disconnect` itself (through `receive`);
the wrapper flags it in `gone`, which the held call reads, so a 2025 client whose connection drops
without a cancel has its request withdrawn rather than forwarded for nobody. A held call on the
gateway's own stream (`gateway.lean_held`) attaches the connection itself (`attach`): its end is
flagged from the HTTP protocol, with nobody reading, and the stream's keep-alives and notices go
onto it as chunks, past the ASGI layers, whenever nothing is held back and it is not pushing back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from starlette.types import Message, Receive, Send

from gateway.caller import Gone
from gateway.event_store import SessionEvents
from gateway.frame_clock import FrameLock, KeepAliveWheel, run_now, wheel_of
from gateway.http_protocol import RawStream, chunk_of

log = logging.getLogger(__name__)

KEEPALIVE_COMMENT = b": keep-alive\r\n\r\n"
_KEEPALIVE_CHUNK = chunk_of(KEEPALIVE_COMMENT)  # the same comment, as the chunk it is on the connection
_SSE = b"text/event-stream"
_TOOL_CALL = re.compile(rb'"method"\s*:\s*"tools/call"')
_DROPPED_ON_JSON = {b"content-type", b"content-length", b"cache-control", b"connection", b"x-accel-buffering"}


def _fields(event: bytes) -> dict[bytes, bytes] | None:
    """The fields of one SSE frame as the SDK writes them (each field once), or None for anything else."""
    if not event.endswith(b"\r\n\r\n"):
        return None
    fields: dict[bytes, bytes] = {}
    for line in event[:-4].split(b"\r\n"):
        name, colon, value = line.partition(b": ")
        if not colon or name not in (b"id", b"event", b"data", b"retry") or name in fields:
            return None
        fields[name] = value
    return fields


def is_priming(event: bytes) -> bool:
    """A resumable stream's opening frame (an id, empty data, maybe `retry`): no message in it."""
    fields = _fields(event)
    return fields is not None and b"id" in fields and fields.get(b"data") == b"" and b"event" not in fields


def single_result(event: bytes) -> bytes | None:
    """The JSON of an SSE frame that carries one JSON-RPC response and nothing else, or None."""
    fields = _fields(event)
    if fields is None or fields.get(b"event") != b"message" or b"retry" in fields or b"data" not in fields:
        return None
    data = fields[b"data"]
    try:
        message = json.loads(data)
    except ValueError:
        return None
    if isinstance(message, dict) and "id" in message and "method" not in message:
        return data if message.keys() & {"result", "error"} else None
    return None


class PostStream:
    """The `receive` and `send` one POST's app sees (build one per request)."""

    __slots__ = (
        "_body_done",
        "_ended",
        "_first",
        "_interval",
        "_last",
        "_lock",
        "_loop",
        "_opened",
        "_pinging",
        "_priming",
        "_raw",
        "_reading",
        "_receive",
        "_send",
        "_start",
        "_streaming",
        "_tool_call",
        "_wheel",
        "events",
        "gone",
    )

    def __init__(
        self,
        receive: Receive,
        send: Send,
        gone: Gone,
        keepalive_interval: float | None,
        events: SessionEvents | None = None,
    ) -> None:
        self._receive = receive
        self.events = events  # the session's resumable events, which a message written here joins
        self._send = send
        self.gone = gone
        self._interval = keepalive_interval
        self._body_done = False
        self._tool_call = False
        self._reading = False
        self._start: Message | None = None  # SSE headers held back while the result may be all there is
        self._first: bytes | None = None  # the one event held back with them
        self._priming: bytes | None = None  # a resumable stream's opening frame, held back with the headers
        self._streaming = False
        self._opened = False  # the SDK's first event (a resumable stream's priming) has gone out
        self._ended = False
        self._last = 0.0
        self._loop = asyncio.get_running_loop()
        self._wheel: KeepAliveWheel | None = (
            None if keepalive_interval is None else wheel_of(self._loop, keepalive_interval)
        )
        # Serialises the app's sends with the frames of the wheel and the notices; uncontended, it never waits.
        self._lock = FrameLock()
        self._pinging: asyncio.Task[None] | None = None
        # The connection itself (`gateway.http_protocol`), once a held call's stream is under way on it.
        self._raw: RawStream | None = None

    def attach(self, raw: RawStream | None) -> bool:
        """Write this stream's own frames straight to its connection where they can go, and flag the
        connection's end from the connection itself: True if that is watched so (no task need read for it)."""
        if raw is None or self._ended or not raw.on_lost(self._lost):
            return False
        self._raw = raw
        return True

    def _lost(self) -> None:
        self.gone.set()
        self._body_done = True
        self._unwatch()

    @property
    def keeps_alive(self) -> bool:
        """Whether this response gets keep-alive comments while it is silent."""
        return self._interval is not None

    # ---- receive

    async def receive(self) -> Message:
        if self._body_done and self._reading:
            # Someone already waits on the connection for its end; the end reaches everyone through `gone`.
            await self.gone.wait()
            return {"type": "http.disconnect"}
        self._reading = self._body_done
        try:
            message = await self._receive()
        finally:
            self._reading = False
        if message["type"] == "http.disconnect":
            self.gone.set()
            self._body_done = True
            self._unwatch()
        elif message["type"] == "http.request":
            self._tool_call = self._tool_call or bool(_TOOL_CALL.search(message.get("body", b"")))
            self._body_done = not message.get("more_body", False)
        return message

    # ---- send

    async def send(self, message: Message) -> None:
        async with self._lock:
            await self._deliver(message)

    async def stream_now(self) -> None:
        """This call may wait (it may be held) with nothing to stream until it ends: its stream's headers go
        out at once, as the SDK sends them, so a client knows the call was taken.

        A call with a progress token does not need this: its first notice (sent once the call is parked,
        or a keep-alive at the latest) opens the stream, in the same write as the headers.
        """
        async with self._lock:
            self._tool_call = False
            if self._start is not None:
                await self._commit()

    async def _deliver(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" and _is_sse(message):
            self._start = message if self._tool_call else None
            if self._start is None:
                await self._send(message)
                self._streaming = True
            self._last = self._loop.time()
            self._arm()
            return
        if kind != "http.response.body" or (self._start is None and not self._streaming):
            await self._send(message)
            return
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if self._start is not None:
            if more and self._first is None and self._priming is None and is_priming(body):
                self._priming = body  # dropped if the answer becomes JSON: a JSON body is never resumed
                return
            if more and self._first is None and single_result(body) is not None:
                self._first = body
                return
            if not more and self._first is not None and not body:
                await self._send_json(self._start, single_result(self._first) or b"")
                self._finish()
                return
            await self._commit()
        await self._send(message)
        self._opened = self._opened or bool(body)
        self._last = self._loop.time()
        if not more:
            self._finish()

    async def _send_json(self, start: Message, data: bytes) -> None:
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in _DROPPED_ON_JSON]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        self._start = self._first = self._priming = None
        await self._send({"type": "http.response.start", "status": start.get("status", 200), "headers": headers})
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    async def _commit(self, then: bytes = b"") -> None:
        """Send the held-back SSE headers (and events), with `then` behind them: a stream from here on.

        The held-back events and `then` go as one body, which the connection joins to the headers
        (`gateway.http_protocol`): a held call's stream opens with its first notice in one write.
        """
        start, priming, first = self._start, self._priming, self._first
        self._start = self._first = self._priming = None
        self._streaming = True
        if start is not None:
            await self._send(start)
        held = [event for event in (priming, first) if event is not None]
        if held or then:
            await self._send({"type": "http.response.body", "body": b"".join([*held, then]), "more_body": True})
            self._opened = self._opened or bool(held)
        self._last = self._loop.time()

    def _held_back(self) -> bool:
        return self._start is not None or self._first is not None or self._priming is not None

    async def write_message(self, data: str, stream_id: str) -> bool:
        """Put one message (its wire JSON) on this stream as the SDK's transport frames it, kept for resuming.

        Only on a live stream the SDK has opened (so it follows the SDK's opening event); False, with
        nothing kept or sent, otherwise, and the message then goes the SDK's way.
        """
        async with self._lock:
            if not self._writable():
                return False
            frame = self._frame(data, stream_id)
            if self._held_back():
                await self._commit(frame)
            else:
                await self._send({"type": "http.response.body", "body": frame, "more_body": True})
            self._last = self._loop.time()
        return True

    def write_now(self, data: str, stream_id: str) -> bool:
        """`write_message` without waiting: written at once (or going on in a task if the client is slow).

        False, with nothing kept or sent, when it cannot go straight out now (another write is under way, or
        the stream is not one a message can be written to); the caller then takes the awaited way.
        """
        if not self._writable() or not self._lock.free():
            return False
        frame = self._frame(data, stream_id)
        if self._raw_write(chunk_of(frame)):
            return True
        self._lock.acquire_nowait()
        self._go_on(run_now(self._write(frame), self._loop))
        return True

    def _raw_write(self, chunk: bytes) -> bool:
        """With the lock free: the chunk straight onto the connection, if nothing is held back and it can go now.

        Such a write finishes before anything else can run, so it needs no lock of its own.
        """
        raw = self._raw
        if raw is None or not self._streaming or self._start is not None or self._first is not None:
            return False
        if self._priming is not None or not raw.write(chunk):
            return False
        self._last = self._loop.time()
        return True

    async def _write(self, frame: bytes) -> None:
        await self._write_locked(frame)

    def _writable(self) -> bool:
        # Behind the SDK's opening event: sent, or held back to open the stream with this message.
        opened = self._opened or (self._priming is not None and self._first is None)
        return opened and (self._streaming or self._start is not None) and not self._ended and not self.gone.is_set()

    def _frame(self, data: str, stream_id: str) -> bytes:
        frame = f"event: message\r\ndata: {data}\r\n\r\n"
        if self.events is not None:
            frame = f"id: {self.events.store_wire(stream_id, data)}\r\n{frame}"
        return frame.encode()

    async def _write_locked(self, body: bytes) -> bool:
        """Write one frame under the lock already taken, then let go of it; False if the connection is gone."""
        try:
            if self._held_back():
                await self._commit(body)
            else:
                await self._send({"type": "http.response.body", "body": body, "more_body": True})
            self._last = self._loop.time()
            return True
        except OSError:
            return False  # the disconnect reaches the held call through `gone`
        finally:
            self._lock.release()

    def _go_on(self, task: asyncio.Task[None] | None) -> None:
        if task is not None:
            self._pinging = task
            task.add_done_callback(self._went_on)

    def _went_on(self, task: asyncio.Task[None]) -> None:
        if self._pinging is task:
            self._pinging = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("a frame could not be written", exc_info=task.exception())

    def _finish(self) -> None:
        self._ended = True
        self._unwatch()

    def close(self) -> None:
        """The app returned: nothing more goes out on this response."""
        self._finish()
        if self._raw is not None:
            self._raw.forget_lost(self._lost)
            self._raw = None

    # ---- keep-alive

    def _arm(self) -> None:
        if self._wheel is not None and self._interval is not None and not self._ended and not self.gone.is_set():
            self._wheel.watch(self, self._last + self._interval)

    def _unwatch(self) -> None:
        if self._wheel is not None:
            self._wheel.unwatch(self)

    def keepalive_due(self, now: float) -> float | None:
        """Called by the wheel: write a keep-alive if this stream is about to be silent too long; when to look next."""
        if self._ended or self.gone.is_set() or self._interval is None or self._wheel is None:
            return None
        due = self._last + self._interval
        if due - now > self._wheel.tick or self._pinging is not None:
            return max(due, now + self._wheel.tick)
        if self._start is None and not self._streaming:
            return None  # not a stream (yet): nothing to keep alive
        if not self._lock.free():
            # Someone is writing (a slow client's frame): this stream's keep-alive waits its turn in a task.
            self._go_on(self._loop.create_task(self._ping()))
            return None
        if self._raw_write(_KEEPALIVE_CHUNK):
            return self._last + self._interval
        self._lock.acquire_nowait()
        self._go_on(run_now(self._keepalive_locked(), self._loop))
        return None

    async def _ping(self) -> None:
        await self._lock.acquire()
        await self._keepalive_locked()

    async def _keepalive_locked(self) -> None:
        if self._ended or self.gone.is_set():
            self._lock.release()
            return
        if await self._write_locked(KEEPALIVE_COMMENT):
            self._arm()


def _is_sse(message: Message) -> bool:
    headers: Any = message.get("headers", [])
    return any(k.lower() == b"content-type" and v.startswith(_SSE) for k, v in headers)
