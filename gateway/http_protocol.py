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
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.auto import AutoHTTPProtocol

# How every response head begins (the status line); other writes go straight through.
_HEAD = b"HTTP/"


class GatheringTransport:
    """A transport that holds a first write until a second one joins it, or the loop's next turn."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

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

    def get_write_buffer_size(self) -> int:
        gathered = sum(len(data) for data in self._pending) if self._pending else 0
        return self._transport.get_write_buffer_size() + gathered

    def __getattr__(self, name: str) -> Any:
        # Everything else (extra info, flow control, is_closing, set_protocol) is the real transport's.
        return getattr(self._transport, name)


class GatheringHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """The protocol uvicorn picks by default (httptools where installed, else h11), writing through a
    `GatheringTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gathering = GatheringTransport(cast(asyncio.Transport, transport), asyncio.get_running_loop())
        super().connection_made(gathering)
