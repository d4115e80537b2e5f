"""The upstream hop alone: the SDK's `Client.call_tool` beside the gateway's forward, CPU per call.

Run from the repository root:  .venv/bin/python bench/bench_forward.py [--calls N] [--blocks N] [--modes legacy,auto]

Both clients talk to one paper broker, over stdio (each its own broker process) and over streamable
HTTP (one broker serving both), in alternating blocks of sequential `ibkr_get_open_orders` calls.
The figure is this process's CPU (user + system) per call over all blocks of a kind: what the
gateway pays per forwarded call in its upstream client, which direct callers do not pay at all.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.upstream_h1 import H1Pool
from gateway.upstream_http import send_requests_whole
from gateway.upstream_post import HttpLink
from gateway.upstream_stdio import StdioLink
from gateway.upstream_wire import call_tool

TOOL = "ibkr_get_open_orders"
BROKER = [sys.executable, "-m", "gateway.paper_broker"]


async def measure(
    label: str, sides: dict[str, Callable[[], Awaitable[object]]], calls: int, blocks: int
) -> dict[str, float]:
    spent = dict.fromkeys(sides, 0.0)
    for side in sides.values():
        for _ in range(20):
            await side()
    for _ in range(blocks):
        for name, side in sides.items():
            before = os.times()
            for _ in range(calls):
                await side()
            after = os.times()
            spent[name] += (after.user - before.user) + (after.system - before.system)
    per_call = {name: 1000 * total / (calls * blocks) for name, total in spent.items()}
    sdk, forward = per_call["sdk"], per_call["forward"]
    print(f"{label}: SDK client {sdk:.3f} ms, forward {forward:.3f} ms CPU per call ({sdk / forward:.2f}x)")
    return per_call


async def main(args: argparse.Namespace) -> None:
    port = _free_port()
    broker = await anyio.open_process([*BROKER, "--http", str(port)], stdout=subprocess.DEVNULL, stderr=None)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        await _wait_listening(port)
        for mode in args.modes.split(","):
            await _stdio(mode, args)
            await _http(url, mode, args)
    finally:
        broker.terminate()
        await broker.wait()


async def _stdio(mode: str, args: argparse.Namespace) -> None:
    async with AsyncExitStack() as stack:
        params = StdioServerParameters(command=BROKER[0], args=BROKER[1:])
        sdk = await stack.enter_async_context(Client(params, mode=mode, cache=None))
        stdio = StdioLink(BROKER, None, None)
        lean = await stack.enter_async_context(Client(stdio.open(), mode=mode, cache=None))
        await lean.list_tools()
        sides = {
            "sdk": partial(sdk.call_tool, TOOL, {}),
            "forward": partial(call_tool, lean, stdio, TOOL, {}, 30, None),
        }
        await measure(f"stdio, mode={mode}", sides, args.calls, args.blocks)


async def _http(url: str, mode: str, args: argparse.Namespace) -> None:
    async with AsyncExitStack() as stack:
        http_sdk = await stack.enter_async_context(httpx2.AsyncClient(timeout=30))
        send_requests_whole(http_sdk)
        sdk = await stack.enter_async_context(
            Client(streamable_http_client(url, http_client=http_sdk), mode=mode, cache=None)
        )
        http_lean = await stack.enter_async_context(httpx2.AsyncClient(timeout=30))
        send_requests_whole(http_lean)
        link = HttpLink(url, http_lean, H1Pool(url, {}))
        lean = await stack.enter_async_context(Client(link.open(), mode=mode, cache=None))
        await lean.list_tools()
        sides = {"sdk": partial(sdk.call_tool, TOOL, {}), "forward": partial(call_tool, lean, link, TOOL, {}, 30, None)}
        await measure(f"HTTP,  mode={mode}", sides, args.calls, args.blocks)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            await anyio.sleep(0.2)
    raise SystemExit("the paper broker did not start listening")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="sequential calls per block (200)")
    parser.add_argument("--blocks", type=int, default=5, help="blocks per client, alternating (5)")
    parser.add_argument("--modes", default="legacy,auto", help="client modes: legacy (2025-11-25), auto (2026-07-28)")
    options = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        anyio.run(main, options)
    else:
        uvloop.run(main(options))
