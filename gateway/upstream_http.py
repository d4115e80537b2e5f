"""The HTTP client of an upstream reached by URL: a request goes out in one send, not two.

httpcore writes an HTTP/1.1 request as its head and then its body, each in a send of its own.
Over loopback (an upstream beside the gateway) each send is a trip through the receiver's TCP
stack and a wake-up of the upstream, made in the gateway's own time: a forwarded call paid for
two where one carries the same bytes. The stream here holds a request's head until the next write
(its body, sent with it) or the next read (a request without a body), so a request is one send.
A body sent in several chunks sends its first with the head and the rest as they come; nothing is
held across a read, so no request waits for the next.

The same stream answers httpcore's "has the server closed this idle connection?" (asked of every
pooled connection each time a request is placed or a response ends) from the socket it keeps,
without rebuilding anyio's table of a stream's attributes for each question.
"""

# httpcore's network interface passes its timeouts as arguments; these streams pass them on.
# ruff: noqa: ASYNC109

from __future__ import annotations

import select
import ssl
from collections.abc import Iterable
from typing import Any, Protocol

import httpcore2
import httpx2

# A request head is held only when it is at most this long (a head is a few hundred bytes).
_HEAD_LIMIT = 16 * 1024


def send_requests_whole(client: httpx2.AsyncClient) -> bool:
    """Open `client`'s direct connections (not those through a proxy) with `OneSendBackend`.

    Whether it could: False when this httpx keeps its pool elsewhere (the client then works as it is).
    """
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    if type(pool) is not httpcore2.AsyncConnectionPool:
        return False
    backend = pool._network_backend
    if not isinstance(backend, OneSendBackend):
        pool._network_backend = OneSendBackend(backend)
    return True


class OneSendBackend(httpcore2.AsyncNetworkBackend):
    """A network backend whose streams send a request's head together with its body."""

    def __init__(self, inner: httpcore2.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return OneSendStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        return OneSendStream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class OneSendStream(httpcore2.AsyncNetworkStream):
    """One connection: a write after a read (a request's head) waits for the next write or read."""

    def __init__(self, inner: httpcore2.AsyncNetworkStream) -> None:
        self._inner = inner
        self._held = b""
        self._writing = False  # the last thing done was a write: what comes now is a body's later chunk
        # A socket or what stands for one (uvloop's pseudo-socket): anything with a file descriptor, where the
        # system can poll one (not on Windows: there httpcore's own check answers).
        sock = inner.get_extra_info("socket")
        pollable = callable(getattr(sock, "fileno", None)) and hasattr(select, "poll")
        self._socket: _HasFileno | None = sock if pollable else None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._held:
            buffer, self._held = self._held + buffer, b""
        elif not self._writing and len(buffer) <= _HEAD_LIMIT:
            self._held, self._writing = buffer, True
            return
        self._writing = True
        await self._inner.write(buffer, timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await self._flush(timeout)
        self._writing = False
        return await self._inner.read(max_bytes, timeout)

    async def _flush(self, timeout: float | None) -> None:
        if self._held:
            held, self._held = self._held, b""
            await self._inner.write(held, timeout)

    async def aclose(self) -> None:
        self._held = b""
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.AsyncNetworkStream:
        await self._flush(timeout)
        return OneSendStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._socket is not None:
            return _readable(self._socket)
        return self._inner.get_extra_info(info)


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def _readable(sock: _HasFileno) -> bool:
    """Whether a read would return at once (data, or the end of a connection the server closed)."""
    fd = sock.fileno()
    if fd < 0:
        return True
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))
