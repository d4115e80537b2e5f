"""The paper broker: an MCP server offering the IBKR MCP server's tools over an in-memory `PaperBook`.

Tool names, input schemas, defaults and error shapes follow patrickpxp/ibkr-mcp-server, so the
gateway can be developed, demoed and tested against it without TWS. Errors are tool results with
`isError: true` and `structuredContent.error = {type, message, retryable}`, as there. This module
is the server and its transports; the tools themselves are in `gateway.paper_tools`.

Start it with `countersign paper-broker` or `python -m gateway.paper_broker [--http PORT]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp import MCPError
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.paper_book import BrokerError, PaperBook, order_snapshot
from gateway.paper_tools import TOOLS, TOOLS_BY_NAME, Arguments

__all__ = [
    "BrokerError",
    "PaperBook",
    "add_arguments",
    "build_http_app",
    "build_server",
    "main",
    "order_snapshot",
    "serve_http",
    "serve_stdio",
]

logger = logging.getLogger(__name__)

DESCRIPTION = "Serve an in-memory IBKR paper account with the IBKR MCP server's tools (stdio unless --http)."


# -- the server -----------------------------------------------------------------------------------


def _result(payload: dict[str, Any], *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(payload, indent=2))],
        structured_content=payload,
        is_error=is_error,
    )


def _append_to_ledger(ledger: Path, tool: str, arguments: Mapping[str, Any]) -> None:
    line = {"at": datetime.now(UTC).isoformat(), "tool": tool, "arguments": dict(arguments)}
    with ledger.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line, sort_keys=True) + "\n")


def build_server(
    book: PaperBook | None = None, *, name: str = "paper-broker", ledger: Path | None = None
) -> Server[Any]:
    """The low-level MCP server for `book` (a freshly seeded one when omitted).

    With `ledger`, every tool call is also appended to that file as one JSON line, before it runs:
    several processes sharing this broker can then count what reached it (say, that an approved
    cancel was executed once however many gateway replicas saw the approval).
    """
    book = book if book is not None else PaperBook()
    listing = types.ListToolsResult(tools=[spec.tool for spec in TOOLS])

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return listing

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = dict(params.arguments or {})
        book.calls.append((params.name, arguments))
        if ledger is not None:
            _append_to_ledger(ledger, params.name, arguments)
        spec = TOOLS_BY_NAME.get(params.name)
        if spec is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        try:
            book.ensure_connected()
            return _result(spec.run(book, Arguments(arguments)))
        except BrokerError as exc:
            return _result(exc.as_dict(), is_error=True)
        except Exception as exc:
            logger.exception("paper broker tool %s failed", params.name)
            return _result(BrokerError("INTERNAL_ERROR", str(exc)).as_dict(), is_error=True)

    def input_schema(tool_name: str) -> Mapping[str, Any] | None:
        spec = TOOLS_BY_NAME.get(tool_name)
        return spec.tool.input_schema if spec else None

    return Server(
        name,
        version="0.1.0",
        title="Countersign paper broker",
        instructions="An in-memory IBKR paper account with the IBKR MCP server's tools. No real orders.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        get_tool_input_schema=input_schema,
    )


# -- transports -----------------------------------------------------------------------------------


async def serve_stdio(book: PaperBook | None = None, ledger: Path | None = None) -> None:
    server = build_server(book, ledger=ledger)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def build_http_app(book: PaperBook | None = None, *, host: str = "127.0.0.1", ledger: Path | None = None) -> Starlette:
    """Streamable HTTP at /mcp, stateless with JSON responses like the real server, plus GET /health."""

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "broker": "paper"})

    return build_server(book, ledger=ledger).streamable_http_app(
        stateless_http=True,
        json_response=True,
        host=host,
        custom_starlette_routes=[Route("/health", health, methods=["GET"])],
    )


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready: asyncio.Event | None) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self._ready is not None and self.started:
            self._ready.set()


async def serve_http(
    port: int,
    host: str = "127.0.0.1",
    book: PaperBook | None = None,
    *,
    ready: asyncio.Event | None = None,
    ledger: Path | None = None,
) -> None:
    """Serve until cancelled (or interrupted); `ready` is set once the port accepts connections."""
    config = uvicorn.Config(
        build_http_app(book, host=host, ledger=ledger),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = _Uvicorn(config, ready)
    try:
        await server.serve()
    except asyncio.CancelledError:
        # uvicorn shuts down only when it leaves its main loop by itself; a cancelled task would
        # otherwise leave the listening socket and the MCP session manager running.
        with anyio.CancelScope(shield=True):
            if server.started:
                server.should_exit = True
                await server.shutdown()
        raise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `countersign paper-broker` and `python -m gateway.paper_broker`, defined once."""
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP at /mcp on PORT")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind with --http (default 127.0.0.1)")
    parser.add_argument(
        "--no-trading",
        action="store_true",
        help="answer acting tools with TRADING_DISABLED, as the real server does by default",
    )
    parser.add_argument(
        "--ledger",
        type=Path,
        metavar="FILE",
        help="also append every tool call to FILE, one JSON line each (tool, arguments, time)",
    )


def run(options: argparse.Namespace) -> int:
    book = PaperBook(trading_enabled=not options.no_trading)
    try:
        if options.http is None:
            anyio.run(serve_stdio, book, options.ledger)
        else:
            print(f"paper broker: http://{options.host}:{options.http}/mcp", flush=True)
            anyio.run(partial(serve_http, options.http, options.host, book, ledger=options.ledger))
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paper-broker", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
