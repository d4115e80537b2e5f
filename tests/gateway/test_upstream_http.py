"""An upstream's HTTP client sends each request whole: its head and body in one write."""

# ruff: noqa: ASYNC109

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore2
import httpx2

from gateway.upstream_http import OneSendBackend, OneSendStream, send_requests_whole

RESPONSE = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'


class Wire(httpcore2.AsyncNetworkStream):
    """A connection that records what is written to it, and answers each request with RESPONSE."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.unread = b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.writes.append(buffer)
        self.unread = RESPONSE

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        assert self.unread, "read before the request was sent: it would wait for ever"
        data, self.unread = self.unread[:max_bytes], self.unread[max_bytes:]
        return data

    async def aclose(self) -> None:
        pass

    def get_extra_info(self, info: str) -> Any:
        return None


class Backend(httpcore2.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.wires: list[Wire] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        self.wires.append(Wire())
        return self.wires[-1]


def client_over(backend: Backend) -> httpx2.AsyncClient:
    client = httpx2.AsyncClient(trust_env=False)
    assert send_requests_whole(client)
    pool: Any = client._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool._network_backend, OneSendBackend)
    pool._network_backend._inner = backend
    return client


async def test_a_request_with_a_body_is_one_write_and_keep_alive_requests_too() -> None:
    backend = Backend()
    async with client_over(backend) as client:
        for n in range(3):
            response = await client.post("http://upstream.test/mcp", json={"call": n})
            assert response.json() == {"ok": True}
    [wire] = backend.wires  # one connection, kept alive
    assert len(wire.writes) == 3
    for n, write in enumerate(wire.writes):
        assert write.startswith(b"POST /mcp HTTP/1.1\r\n")
        assert write.endswith(b'\r\n\r\n{"call":' + str(n).encode() + b"}")


async def test_a_request_without_a_body_is_sent_before_its_answer_is_read() -> None:
    backend = Backend()
    async with client_over(backend) as client:
        response = await client.get("http://upstream.test/mcp")
    assert response.status_code == 200
    [wire] = backend.wires
    [write] = wire.writes
    assert write.startswith(b"GET /mcp HTTP/1.1\r\n") and write.endswith(b"\r\n\r\n")


async def test_a_body_in_chunks_sends_the_first_with_the_head_and_the_rest_as_they_come() -> None:
    backend = Backend()

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"one", b"two", b"three"):
            yield part

    async with client_over(backend) as client:
        response = await client.post("http://upstream.test/mcp", content=chunks())
    assert response.status_code == 200
    [wire] = backend.wires
    assert wire.writes[0].startswith(b"POST /mcp HTTP/1.1\r\n")
    assert wire.writes[0].endswith(b"\r\n\r\n3\r\none\r\n")
    assert wire.writes[1:] == [b"3\r\ntwo\r\n", b"5\r\nthree\r\n", b"0\r\n\r\n"]


def test_wrapping_twice_wraps_once() -> None:
    client = httpx2.AsyncClient(trust_env=False)
    assert send_requests_whole(client)
    assert send_requests_whole(client)
    pool: Any = client._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool._network_backend, OneSendBackend)
    assert not isinstance(pool._network_backend._inner, OneSendBackend)


class Pseudo:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()


async def test_an_idle_connection_the_server_closed_reads_as_readable() -> None:
    near, far = socket.socketpair()
    wire = Wire()
    pseudo = Pseudo(near)  # what uvloop gives for a stream's socket: not a socket.socket, but with its descriptor
    wire.get_extra_info = lambda info: pseudo if info == "socket" else None  # type: ignore[method-assign]
    stream = OneSendStream(wire)
    assert stream.get_extra_info("is_readable") is False
    far.close()  # the server's end goes: a read would return the end of the stream at once
    assert stream.get_extra_info("is_readable") is True
    near.close()
