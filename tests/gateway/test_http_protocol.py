"""The HTTP protocol the gateway serves with (`gateway.http_protocol`): every response arrives whole and in
order, a stream's head is not held back for its first event, and a closing connection sends its answer
first. Raw sockets against uvicorn on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send

from gateway.http_protocol import GatheringHTTPProtocol
from tests.harness import served


@asynccontextmanager
async def gathering(app: Any) -> AsyncIterator[int]:
    """Serve `app` as the gateway is served (the test harness runs uvicorn with the same protocol); yields the port."""
    async with served(app, lifespan="off") as handle:
        assert handle.server.config.http is GatheringHTTPProtocol
        yield int(handle.url.rsplit(":", 1)[1])


async def read_until(stream: anyio.abc.ByteStream, marker: bytes, got: bytes = b"") -> bytes:
    with anyio.fail_after(10):
        while marker not in got:
            got += await stream.receive()
    return got


def request(path: str, *, close: bool = False) -> bytes:
    connection = b"connection: close\r\n" if close else b""
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: t\r\n" + connection + b"\r\n"


async def test_responses_on_one_connection_arrive_whole_and_in_order() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = scope["path"].encode() * 200
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    async with gathering(app) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        got = b""
        for path in ("/a", "/bb", "/ccc"):
            await stream.send(request(path))
            expected = path.encode() * 200
            got = await read_until(stream, expected, got)
            head, _, rest = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert f"content-length: {len(expected)}".encode() in head
            assert rest[: len(expected)] == expected
            got = rest[len(expected) :]
        assert got == b""


async def test_a_streams_head_is_not_held_back_for_its_first_event() -> None:
    head_seen = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        # The first event is sent only once the client has read the head on its own.
        await head_seen.wait()
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: last\n\n", "more_body": False})

    async with gathering(app) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request("/events"))
        got = await read_until(stream, b"\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200")
        assert b"data:" not in got
        head_seen.set()
        got = await read_until(stream, b"data: last", got)
        assert got.index(b"data: first") < got.index(b"data: last")


async def test_a_closing_connection_sends_its_answer_before_it_closes() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"done"})

    async with gathering(app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(request("/", close=True))
            got = b""
            with anyio.fail_after(10):
                while chunk := await anyio.to_thread.run_sync(raw.recv, 65536):
                    got += chunk
    assert got.startswith(b"HTTP/1.1 200")
    assert got.endswith(b"\r\n\r\ndone")
    assert b"connection: close" in got.lower()
