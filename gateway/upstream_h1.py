"""A forwarded call's POST to a plain-HTTP upstream, on keep-alive connections of the gateway's own.

httpx builds a request and a response object for every POST and parses HTTP/1.1 with h11, in
Python: most of what a forwarded call cost the gateway after the SDK's client was taken off it.
For an `http://` upstream reached without a proxy (no proxy variables in the environment, which
httpx would honour), a forwarded call's POST is written here as bytes on an asyncio connection and
its answer parsed with httptools (uvicorn's parser, a dependency already): its status and headers,
then its body whole (JSON) or as server-sent events as they arrive. A connection serves one call at
a time and goes back to the pool once its answer is read to the end; one the call walks away from
(the caller gone, the timeout) is closed, which is also the 2026-era cancellation. Everything else
on the upstream's connection (the SDK's client) keeps httpx, and so do `https://` upstreams.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httptools

_PROXY_VARIABLES = ("http_proxy", "all_proxy")
MAX_EVENT = 1024 * 1024  # bytes in one event, as the SDK's transport bounds it


class Lost(ConnectionError):
    """The connection ended before the answer did."""


def plain_http(url: str, environ: Mapping[str, str]) -> bool:
    """Whether `url` is one this module serves: `http://`, and no proxy that httpx would route it through."""
    lowered = {key.lower() for key, value in environ.items() if value}
    return urlsplit(url).scheme == "http" and not any(name in lowered for name in _PROXY_VARIABLES)


class H1Pool:
    """Keep-alive connections to one upstream URL, each carrying one POST at a time."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "localhost"
        self._port = parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        fixed = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._head = f"POST {target} HTTP/1.1\r\nhost: {host}\r\n{fixed}"
        self._idle: deque[_Connection] = deque()

    @asynccontextmanager
    async def post(self, headers: Mapping[str, str], body: bytes) -> AsyncIterator[_Connection]:
        connection = await self._connection()
        head = self._head + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        connection.send(f"{head}content-length: {len(body)}\r\n\r\n".encode("latin-1") + body)
        try:
            await connection.started()
            yield connection
        finally:
            if connection.reusable():
                self._idle.append(connection)
            else:
                connection.close()

    def close(self) -> None:
        while self._idle:
            self._idle.popleft().close()

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.open:
                return connection
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(_Connection, self._host, self._port)
        return connection


class _Connection(asyncio.Protocol):
    """One connection: httptools' callbacks fill the current answer; the caller waits on what it needs next."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.open = False
        self._wake: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self._headers: dict[str, str] = {}
        self._headed = False
        self._chunks: deque[bytes] = deque()
        self._complete = False
        self._failure: BaseException | None = None

    # ---- the event loop's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.open = True

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Lost(f"unreadable HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self._complete:
            self._fail(Lost("the upstream closed the connection"))
        self._poke()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._headed = True
        self._poke()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._poke()

    def on_message_complete(self) -> None:
        self._complete = True
        self._poke()

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # ---- the caller's side

    def send(self, data: bytes) -> None:
        self._reset()
        assert self._transport is not None
        self._transport.write(data)

    def header(self, name: str) -> str:
        return self._headers.get(name, "")

    async def started(self) -> None:
        while not self._headed:
            await self._next()

    async def body(self) -> bytes:
        while not self._complete:
            await self._next()
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    async def events(self) -> AsyncIterator[tuple[str, str]]:
        """Server-sent events as (event, data), as they arrive."""
        buffer = b""
        event, size = "", 0
        data: list[str] = []
        while True:
            while not self._chunks:
                if self._complete:
                    return
                await self._next()
            buffer += self._chunks.popleft()
            *lines, buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            for raw in lines:
                line = raw.decode()
                if not line:
                    if data:
                        yield event or "message", "\n".join(data)
                    event, data, size = "", [], 0
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "data":
                    data.append(value)
                    size += len(value)
                    if size > MAX_EVENT:
                        raise Lost(f"an event larger than {MAX_EVENT} bytes")
                elif field == "event":
                    event = value

    async def _next(self) -> None:
        if self._failure is not None:
            raise self._failure
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await self._wake
        finally:
            self._wake = None
        if self._failure is not None:
            raise self._failure

    def reusable(self) -> bool:
        return self.open and self._complete and self._failure is None and self._parser.should_keep_alive()

    def close(self) -> None:
        self.open = False
        if self._transport is not None:
            self._transport.close()
