"""uvicorn's HTTP protocol, with a response's head and body sent in one write.

uvicorn writes a response's head as soon as the application sends `http.response.start`, and its
body when the application sends `http.response.body`: two writes, two TCP segments (the socket runs
without Nagle's delay), so a client on the other end wakes for the head, parses it and waits again
for the body. Almost every answer of the gateway (a tool call's result, an API reply) is a head and
a body sent one right after the other. Here the transport holds a first write until a second one
joins it, and both leave in one `write`, or until the event loop's next turn, when it leaves alone:
a response that streams (SSE: a held call, a keep-alive) has its head sent on that next turn, not
held for its first event. Only a head is held: the later frames of a stream go straight to the socket,
so thousands of waiting streams' keep-alives cost no extra loop callback.

Closing or half-closing the connection writes what is held first; aborting drops it, as an abort
drops the transport's own buffer.

A held call's stream can also reach its connection without going through the ASGI layers
(`RawStream`, found in the request's scope under `RAW_KEY`): a frame of a stream already under way
written as its chunk straight onto the transport, and the connection's end reported by a callback,
so that thousands of waiting streams need neither a send chain per frame nor a task each reading
for the connection's end.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.http.auto import AutoHTTPProtocol

# How every response head begins (the status line); other writes go straight through.
_HEAD = b"HTTP/"
# Where a request's scope carries its `RawStream`.
RAW_KEY = "countersign.raw_stream"


class GatheringTransport:
    """A transport that holds a first write until a second one joins it, or the loop's next turn."""

    __slots__ = ("_loop", "_pending", "_transport", "lost")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None
        # Called once when the connection is lost (set by the request that watches for it; see `RawStream`).
        self.lost: Callable[[], None] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        if pending is None:
            if bytes(data[:5]) != _HEAD:
                # A frame of a stream that is already under way (an event, a keep-alive): nothing to join it.
                self._transport.write(data)
                return
            # A response's head: held for its body, or until the loop's next turn at the latest.
            self._pending = [bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            # The body right behind it: both leave now, in one write.
            self._pending = None
            pending.append(bytes(data))
            self._transport.write(b"".join(pending))

    def write_frame(self, data: bytes) -> bool:
        """A frame of a stream under way, written now unless the connection is closing (False: nothing written)."""
        if self._pending is not None:
            return False  # a head still held back (the loop has not turned since it was sent): the ASGI way
        transport = self._transport
        if transport.is_closing():
            return False
        transport.write(data)
        return True

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Write what is held now (the loop's next turn, or before the connection closes)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        if not self._transport.is_closing():
            self._transport.write(pending[0])

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        gathered = sum(len(data) for data in self._pending) if self._pending else 0
        return self._transport.get_write_buffer_size() + gathered

    def __getattr__(self, name: str) -> Any:
        # Everything else (extra info, flow control, is_closing, set_protocol) is the real transport's.
        return getattr(self._transport, name)


class RawStream:
    """A request's way to its connection around the ASGI layers, for the frames of a response under way.

    It holds uvicorn's request cycle weakly (the cycle holds the scope this sits in). `write` puts one
    frame on the connection as uvicorn's `send` would (a chunk of a chunked body) when nothing can stand
    in the way: the head sent, the body chunked and not ended, the connection up and not pushing back;
    else it writes nothing and says so, and the frame takes the ASGI way.
    """

    __slots__ = ("_cycle",)

    def __init__(self, cycle: Any) -> None:
        self._cycle: weakref.ref[Any] = weakref.ref(cycle)

    def write(self, chunk: bytes) -> bool:
        """Write `chunk` (already framed by `chunk_of`) now if it can go straight out; False: nothing written."""
        cycle = self._cycle()
        if (
            cycle is None
            or cycle.disconnected
            or cycle.response_complete
            or not cycle.response_started
            or cycle.chunked_encoding is not True
            or cycle.flow.write_paused
        ):
            return False
        transport = cycle.transport
        return isinstance(transport, GatheringTransport) and transport.write_frame(chunk)

    def on_lost(self, callback: Callable[[], None]) -> bool:
        """Call `callback` once when the connection is lost; False (nothing done) if that cannot be watched here."""
        cycle = self._cycle()
        if cycle is None or not isinstance(cycle.transport, GatheringTransport) or cycle.transport.lost is not None:
            return False
        if cycle.disconnected:
            callback()
            return True
        cycle.transport.lost = callback
        cycle.flow.resume_reading()  # as uvicorn's `receive` does before it waits, so that an end is seen
        return True

    def forget_lost(self, callback: Callable[[], None]) -> None:
        """No more `callback` for this connection's end (the request it was for is over)."""
        cycle = self._cycle()
        if cycle is not None and isinstance(cycle.transport, GatheringTransport) and cycle.transport.lost == callback:
            cycle.transport.lost = None


class ListEvent(asyncio.Event):
    """asyncio's event with its waiters in a list: a connection's two events almost never have a waiter,
    and an empty deque is ten times the size of an empty list (it counts by the ten thousand held calls)."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: Any = []


class ListPipeline(list[Any]):
    """uvicorn's queue of pipelined requests (`appendleft` to queue, `pop` to take the oldest) in a list: a
    connection almost never has one queued, and the empty deque it keeps otherwise is ten times the size."""

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


def _lighter(event: asyncio.Event) -> asyncio.Event:
    """The same state in a `ListEvent`; an event someone waits on already is kept as it is."""
    if type(event) is not asyncio.Event or getattr(event, "_waiters", None):
        return event
    lighter = ListEvent()
    if event.is_set():
        lighter.set()
    return lighter


def chunk_of(frame: bytes) -> bytes:
    """`frame` as one chunk of a chunked HTTP body, as uvicorn frames a body it sends."""
    return b"%x\r\n%b\r\n" % (len(frame), frame)


class GatheringHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """The protocol uvicorn picks by default (httptools where installed, else h11), writing through a
    `GatheringTransport`, and giving each request its `RawStream` (with httptools)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gathering = GatheringTransport(cast(asyncio.Transport, transport), asyncio.get_running_loop())
        super().connection_made(gathering)
        pipeline = getattr(self, "pipeline", None)
        if type(pipeline) is collections.deque and not pipeline:
            self.pipeline = ListPipeline()
        flow = getattr(self, "flow", None)
        if flow is not None and isinstance(getattr(flow, "_is_writable_event", None), asyncio.Event):
            flow._is_writable_event = _lighter(flow._is_writable_event)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        cycle.scope[RAW_KEY] = RawStream(cycle)
        cycle.message_event = _lighter(cycle.message_event)
        super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        transport = self.transport
        super().connection_lost(exc)
        if isinstance(transport, GatheringTransport) and transport.lost is not None:
            lost, transport.lost = transport.lost, None
            lost()
