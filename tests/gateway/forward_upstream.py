"""An upstream of the tests' own for how a forwarded call comes back: progress, errors, bad results, hangs, a crash.

`python -m tests.gateway.forward_upstream [--legacy] [--record FILE]` serves it over stdio (both
eras, or the 2025-11-25 handshake era only); `build(record)` is the same server for streamable
HTTP in the test's own process. `record` is told "cancelled" when a call is cancelled under it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.runner import serve_loop
from mcp.server.stdio import stdio_server

COUNTED = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
TOOLS = [
    types.Tool(name="steps", input_schema={"type": "object"}),
    types.Tool(name="refuse", input_schema={"type": "object"}),
    types.Tool(name="miscount", input_schema={"type": "object"}, output_schema=COUNTED),
    types.Tool(name="count", input_schema={"type": "object"}, output_schema=COUNTED),
    types.Tool(name="hang", input_schema={"type": "object"}),
    types.Tool(name="crash", input_schema={"type": "object"}),
]


def build(record: Callable[[str], None]) -> Server[Any]:
    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        if params.name == "steps":
            for step in (1, 2, 3):
                await ctx.session.report_progress(step, 3, f"step {step}")
            return _text("three steps done")
        if params.name == "refuse":
            raise MCPError(code=-32001, message="the upstream will not do that")
        if params.name == "miscount":
            return types.CallToolResult(content=[_block("counted")], structured_content={"n": "many"})
        if params.name == "count":
            return types.CallToolResult(content=[_block("counted")], structured_content={"n": 3})
        if params.name == "hang":
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                record("cancelled")
                raise
        if params.name == "crash":
            os._exit(3)
        return _text(f"no tool {params.name}")

    return Server("forward", on_list_tools=list_tools, on_call_tool=call_tool)


def _block(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _text(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[_block(text)])


async def main(legacy: bool, record_to: str | None) -> None:
    def record(what: str) -> None:
        if record_to is not None:
            with Path(record_to).open("a") as out:
                out.write(what + "\n")

    server = build(record)
    options = server.create_initialization_options()
    async with stdio_server() as (read, write):
        if legacy:
            await serve_loop(server, read, write, lifespan_state={}, init_options=options)
        else:
            await server.run(read, write, options)


if __name__ == "__main__":
    args = sys.argv[1:]
    anyio.run(main, "--legacy" in args, args[args.index("--record") + 1] if "--record" in args else None)
