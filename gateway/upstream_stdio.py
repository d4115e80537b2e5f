"""A stdio upstream's process and pipes, shared by the SDK's client and the gateway's own tools/call.

The gateway starts the upstream's command and owns its pipes. The SDK's client speaks over them
through the pair of streams this transport yields (its handshake, listings, pings, the upstream's
notifications and requests); a forwarded tools/call writes its JSON line straight onto stdin and
its answer is taken off stdout as it arrives, before any model is built and without a task in
between (`gateway.upstream_wire`). Each line from the upstream is parsed once: an answer or
progress for one of the gateway's own requests settles it; anything else is validated into the
SDK's message model and handed to its client, in order.

Starting and stopping follow the SDK's stdio transport: the command runs in a session of its own
with the default inherited environment; at the end its stdin is closed, it gets a grace period to
exit, then its process group is terminated and, if need be, killed. POSIX only: on Windows the
gateway uses the SDK's own stdio transport.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, cast

import anyio
import anyio.lowlevel
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import MCPError
from mcp.client._transport import TransportStreams
from mcp.client.stdio import get_default_environment
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.message import SessionMessage

from gateway.upstream_wire import CANCEL_WRITE_SECONDS, Waiters, cancel_payload

log = logging.getLogger(__name__)

_EXIT_GRACE = 2.0  # after stdin closes, as the SDK waits
_KILL_GRACE = 2.0  # after SIGTERM to the group, before SIGKILL
_FLUSH = 0.5  # for the client's accepted messages to reach stdin at the end
_BACKLOG = 64  # lines for the SDK's client held before stdout is read no further
_END = object()


class StdioLink:
    """One run of a stdio upstream's command: `open()` is the SDK client's transport, `request` the lean call."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str] | None, cwd: str | None) -> None:
        self._command = list(command)
        self._env = get_default_environment() | dict(env or {})
        self._cwd = cwd
        self.waiters = Waiters()
        self._pipes: _Pipes | None = None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[TransportStreams]:
        loop = asyncio.get_running_loop()
        pipes = _Pipes(self.waiters)
        transport, _ = await loop.subprocess_exec(
            lambda: pipes,
            *self._command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            env=self._env,
            cwd=self._cwd,
            start_new_session=True,
        )
        # No awaits from here until the task group is entered: a cancellation there would leak the process.
        to_client, client_reads = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        client_writes, from_client = anyio.create_memory_object_stream[SessionMessage](0)
        self._pipes = pipes
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipes.deliver, to_client)
            tg.start_soon(pipes.write_all, from_client)
            try:
                yield client_reads, client_writes
            finally:
                with anyio.CancelScope(shield=True):
                    self._pipes = None
                    self.waiters.close()
                    client_reads.close()
                    client_writes.close()
                    with anyio.move_on_after(_FLUSH):
                        await pipes.writer_done.wait()
                    await _stop(transport, pipes)
                    for stream in (to_client, from_client):
                        await stream.aclose()
                tg.cancel_scope.cancel()

    async def request(
        self, request_id: str, payload: bytes, headers: Mapping[str, str], progress: ProgressFnT | None
    ) -> dict[str, Any]:
        pipes = self._pipes
        if pipes is None:
            raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed")
        future = self.waiters.add(request_id, progress)
        try:
            await pipes.write(payload + b"\n")
            result = await future
            await self.waiters.relayed(request_id)
            return result
        except anyio.get_cancelled_exc_class():
            # The caller went away or its time ran out: ask the upstream to stop (the SDK's courtesy cancel).
            with anyio.move_on_after(CANCEL_WRITE_SECONDS, shield=True), suppress(MCPError):
                await pipes.write(cancel_payload(request_id, "caller cancelled") + b"\n")
            raise
        finally:
            self.waiters.drop(request_id)


class _Pipes(asyncio.SubprocessProtocol):
    """The process's pipes as the event loop reports them: lines in, bytes out, with flow control both ways."""

    def __init__(self, waiters: Waiters) -> None:
        self.waiters = waiters
        self.transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._stdout: asyncio.ReadTransport | None = None
        self.exited = asyncio.Event()
        self.writer_done = anyio.Event()
        self._buffer = b""
        self._backlog: deque[object] = deque()
        self._more = asyncio.Event()
        self._paused_reading = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._stdin_open = True
        self._dropping = False
        self._handing = False  # a line is being handed to the SDK's client

    # ---- the event loop's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.SubprocessTransport, transport)
        # uvloop's pipe transports do not derive from asyncio's classes; they have their methods.
        self._stdin = cast(asyncio.WriteTransport, self.transport.get_pipe_transport(0))
        self._stdout = cast(asyncio.ReadTransport, self.transport.get_pipe_transport(1))

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            return
        lines = (self._buffer + data).split(b"\n") if self._buffer else data.split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError as exc:
                self._queue(exc)
                continue
            if self._backlog or self._handing:
                # Lines the SDK's client has not had yet came first (a log line of the call, say): the answer
                # waits its turn, so the client sees them while the call is still in flight.
                self._queue(_Settle(message) if self.waiters.claims(message) else message)
            elif not self.waiters.take(message):
                self._queue(message)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 0:
            self._stdin_open = False
            self._writable.set()
        elif fd == 1:
            # The upstream's end of the conversation: what it answered counts, nothing more will be answered.
            for item in self._backlog:
                if isinstance(item, _Settle):
                    self.waiters.take(item.message)
            self.waiters.close()
            self._queue(_END)

    def process_exited(self) -> None:
        self.exited.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _queue(self, item: object) -> None:
        if self._dropping and item is not _END:
            if isinstance(item, _Settle):
                self.waiters.take(item.message)
            return
        self._backlog.append(item)
        self._more.set()
        if len(self._backlog) >= _BACKLOG and not self._paused_reading and self._stdout is not None:
            self._stdout.pause_reading()
            self._paused_reading = True

    # ---- the gateway's side

    async def write(self, data: bytes) -> None:
        stdin = self._stdin
        if not self._stdin_open or stdin is None or stdin.is_closing():
            raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed")
        stdin.write(data)
        if not self._writable.is_set():
            await self._writable.wait()

    async def write_all(self, from_client: MemoryObjectReceiveStream[SessionMessage]) -> None:
        """The SDK client's messages, onto stdin in the order it sends them."""
        try:
            async with from_client:
                async for message in from_client:
                    text = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await self.write((text + "\n").encode())
        except MCPError:
            # stdin is gone while the upstream may still run: nothing written now would be answered.
            self.waiters.close()
            self._queue(_END)
        finally:
            self.writer_done.set()

    async def deliver(self, to_client: MemoryObjectSendStream[Any]) -> None:
        """Lines that are not the gateway's own answers, validated and handed to the SDK's client in order."""
        async with to_client:
            while True:
                while not self._backlog:
                    self._more.clear()
                    await self._more.wait()
                item = self._backlog.popleft()
                if len(self._backlog) < _BACKLOG // 2:
                    self._resume_reading()
                if item is _END:
                    return
                if isinstance(item, _Settle):
                    if not self.waiters.take(item.message):
                        await self._hand(to_client, item.message)
                    continue
                if not await self._hand(to_client, item):
                    return

    async def _hand(self, to_client: MemoryObjectSendStream[Any], item: object) -> bool:
        """Hand one line to the SDK's client; False once it is gone."""
        self._handing = True
        try:
            await to_client.send(_session_message(item))
            # Two turns of the loop: the client's dispatcher takes the line and its handler starts (a log
            # line's finds the call it belongs to) before an answer that came after it wakes the caller.
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            # The client is gone: from now on lines for it are dropped, so the upstream is never blocked.
            self._dropping = True
            self._backlog.clear()
            self._resume_reading()
            return False
        finally:
            self._handing = False
        return True

    def _resume_reading(self) -> None:
        if self._paused_reading and self._stdout is not None and not self._stdout.is_closing():
            self._stdout.resume_reading()
        self._paused_reading = False


class _Settle:
    """An answer (or progress) for one of the gateway's own requests, queued behind lines for the SDK's client."""

    __slots__ = ("message",)

    def __init__(self, message: Any) -> None:
        self.message = message


def _session_message(item: object) -> SessionMessage | Exception:
    if isinstance(item, Exception):
        log.error("Failed to parse JSONRPC message from server: %s", item)
        return item
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_python(item, by_name=False))
    except ValueError as exc:
        log.error("Failed to parse JSONRPC message from server: %s", exc)
        return exc


async def _stop(transport: asyncio.SubprocessTransport, pipes: _Pipes) -> None:
    """Close stdin, let the upstream exit on its own for a while, then end its whole process group."""
    stdin = transport.get_pipe_transport(0)
    if stdin is not None:
        stdin.close()
    if not await _within(pipes.exited, _EXIT_GRACE):
        pgid = transport.get_pid()  # the leader's pid is its group's id (a session of its own)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        if not await _within(pipes.exited, _KILL_GRACE):
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            if not await _within(pipes.exited, _KILL_GRACE):
                log.warning("upstream process %d is still alive after it was killed; leaving it", pgid)
    transport.close()


async def _within(event: asyncio.Event, seconds: float) -> bool:
    with anyio.move_on_after(seconds):
        await event.wait()
        return True
    return False
