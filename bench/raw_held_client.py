"""Agents holding calls at the gateway, over raw HTTP/1.1: the 2025-era streamable HTTP protocol without an MCP SDK.

The held-call benches measure the gateway's CPU per park; an SDK client in the bench's own process costs
about as much again per call on the same cores (its session's tasks, streams, models and SSE parsing), so
the park rate it shows is the two together. This process speaks the same protocol with as little as it
can, on its own: per session the handshake (`initialize` answered with a session id, then
`notifications/initialized`), per held call one connection, one POST of a `tools/call` with a progress
token, and the response read as the event stream it is, chunk by chunk, until the call's own JSON-RPC
response arrives. What the gateway receives is what any 2025-era client sends.

Driven by the bench over stdin/stdout, one JSON object a line:

- stdin, first line: {"host", "port", "token", "sessions", "opening", "timeout", "tool", "orders": [...]};
- stdout: {"event": "ready", "cpu": s} once the sessions are open; it then waits for a line "go";
- stdout: {"event": "parked", "seconds": s, "cpu": s} when every call has had its first progress notice
  (the gateway tells a call it is held only once its request is durable), or {"event": "early", ...} when a
  call is answered before it was held;
- stdout: {"event": "done", "ok": n, "failed": n, "detail": "...", "cpu": s} when every call has its answer.

`cpu` is this process's user+system CPU so far; `seconds` from "go".
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

PROTOCOL = "2025-11-25"
ACCEPT = "application/json, text/event-stream"


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


@dataclass
class Target:
    host: str
    port: int
    token: str

    def head(self, body: bytes, extra: dict[str, str]) -> bytes:
        lines = [
            "POST /mcp HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Authorization: Bearer {self.token}",
            f"Accept: {ACCEPT}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in extra.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Response:
    """One HTTP/1.1 response read off a stream: its status and headers, then its body as it comes."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.status = 0
        self.headers: dict[str, str] = {}
        self._left = 0
        self._chunked = False
        self._done = False

    async def start(self) -> None:
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        self.status = int(head[0].split()[1])
        for line in head[1:]:
            if line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
        self._chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        self._left = int(self.headers.get("content-length", "0"))
        self._done = not self._chunked and self._left == 0

    async def piece(self) -> bytes | None:
        """The next piece of the body as it arrives; None at its end."""
        if self._done:
            return None
        if not self._chunked:
            data = await self.reader.readexactly(self._left)
            self._done = True
            return data
        size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        if size == 0:
            await self.reader.readuntil(b"\r\n")
            self._done = True
            return None
        data = await self.reader.readexactly(size + 2)
        return data[:-2]

    async def body(self) -> bytes:
        parts = []
        while (part := await self.piece()) is not None:
            parts.append(part)
        return b"".join(parts)


async def post(target: Target, message: dict[str, Any], extra: dict[str, str]) -> tuple[Response, bytes]:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(target.head(json.dumps(message).encode(), {**extra, "Connection": "close"}))
        response = Response(reader)
        await response.start()
        return response, await response.body()
    finally:
        writer.close()


def messages(data: bytes) -> list[dict[str, Any]]:
    """The JSON-RPC messages in a body: plain JSON, or the `data` of each SSE event."""
    text = data.decode()
    if text.lstrip().startswith("{"):
        return [json.loads(text)]
    found = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("data:") and line[5:].strip():
            found.append(json.loads(line[5:].strip()))
    return found


async def open_session(target: Target) -> dict[str, str]:
    hello = {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench-raw", "version": "1"}}
    response, body = await post(target, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello}, {})
    if response.status != 200 or "mcp-session-id" not in response.headers:
        raise RuntimeError(f"initialize answered {response.status}: {body[:300]!r}")
    version = messages(body)[0]["result"]["protocolVersion"]
    session = {"Mcp-Session-Id": response.headers["mcp-session-id"], "Mcp-Protocol-Version": version}
    response, body = await post(target, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    if response.status != 202:
        raise RuntimeError(f"notifications/initialized answered {response.status}: {body[:300]!r}")
    return session


@dataclass
class Call:
    order: int
    session: dict[str, str]
    noticed: float = 0.0
    ok: bool = False
    detail: str = ""


class Burst:
    def __init__(self, target: Target, tool: str, calls: list[Call], opening: int) -> None:
        self.target = target
        self.tool = tool
        self.calls = calls
        self.slots = asyncio.Semaphore(opening)
        self.started = 0.0
        self.waiting_notice = len(calls)
        self.parked = asyncio.Event()
        self.early: list[Call] = []

    def noticed(self, call: Call) -> None:
        call.noticed = time.perf_counter()
        self.waiting_notice -= 1
        self.slots.release()
        if self.waiting_notice == 0:
            self.parked.set()

    async def hold(self, call: Call) -> None:
        await self.slots.acquire()
        try:
            await self._hold(call)
        except Exception as exc:  # recorded and reported
            call.detail = call.detail or f"{type(exc).__name__}: {exc}"
        if not call.noticed:
            self.early.append(call)
            self.noticed(call)

    async def _hold(self, call: Call) -> None:
        params = {
            "name": self.tool,
            "arguments": {"orderId": call.order, "confirm": True},
            "_meta": {"progressToken": call.order},
        }
        message = {"jsonrpc": "2.0", "id": call.order, "method": "tools/call", "params": params}
        reader, writer = await asyncio.open_connection(self.target.host, self.target.port)
        try:
            writer.write(self.target.head(json.dumps(message).encode(), call.session))
            response = Response(reader)
            await response.start()
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                call.detail = f"answered at once ({response.status}): {(await response.body())[:200]!r}"
                return
            pending = b""
            while (piece := await response.piece()) is not None:
                pending += piece
                *events, pending = pending.replace(b"\r\n", b"\n").split(b"\n\n")
                for event in events:
                    for found in messages(event):
                        if found.get("method") == "notifications/progress":
                            if not call.noticed:
                                self.noticed(call)
                        elif found.get("id") == call.order:
                            self._answered(call, found)
                            return
            call.detail = call.detail or "the stream ended without an answer"
        finally:
            writer.close()

    def _answered(self, call: Call, found: dict[str, Any]) -> None:
        result = found.get("result") or {}
        structured = result.get("structuredContent") or {}
        call.ok = not result.get("isError") and structured.get("orderId") == call.order
        if not call.ok:
            call.detail = json.dumps(found)[:300]


async def main() -> None:
    config = json.loads(sys.stdin.readline())
    target = Target(config["host"], int(config["port"]), config["token"])
    sessions = [await open_session(target) for _ in range(int(config["sessions"]))]
    calls = [Call(order, sessions[i % len(sessions)]) for i, order in enumerate(config["orders"])]
    burst = Burst(target, config["tool"], calls, int(config["opening"]))
    emit(event="ready", cpu=cpu())
    loop = asyncio.get_running_loop()
    if (await loop.run_in_executor(None, sys.stdin.readline)).strip() != "go":
        return
    burst.started = time.perf_counter()
    tasks = [asyncio.create_task(burst.hold(call)) for call in calls]
    await burst.parked.wait()
    if burst.early:
        first = burst.early[0]
        emit(event="early", count=len(burst.early), detail=f"order {first.order}: {first.detail}", cpu=cpu())
    else:
        emit(event="parked", seconds=max(c.noticed for c in calls) - burst.started, cpu=cpu())
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=float(config["timeout"]))
    failed = [c for c in calls if not c.ok]
    detail = f"order {failed[0].order}: {failed[0].detail}" if failed else ""
    emit(event="done", ok=len(calls) - len(failed), failed=len(failed), detail=detail, cpu=cpu())


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
