"""The paper broker: an MCP server offering the IBKR MCP server's tools over an in-memory `PaperBook`.

Tool names, input schemas, defaults and error shapes follow patrickpxp/ibkr-mcp-server, so the
gateway can be developed, demoed and tested against it without TWS. Errors are tool results with
`isError: true` and `structuredContent.error = {type, message, retryable}`, as there.

Start it with `countersign paper-broker` or `python -m gateway.paper_broker [--http PORT]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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

from gateway.paper_book import BrokerError, PaperBook, invalid_argument, order_snapshot

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

# -- argument parsing -----------------------------------------------------------------------------


class _Arguments:
    """Tool arguments read the way the real server's pydantic layer reads them (lax coercion).

    The low-level server does not validate arguments against the input schema, so this does, and a
    bad value becomes an INVALID_ARGUMENT result the agent can correct.
    """

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self._raw = raw

    def _required(self, name: str) -> Any:
        if self._raw.get(name) is None:
            raise invalid_argument(f"{name} is required")
        return self._raw[name]

    def optional_str(self, name: str) -> str | None:
        value = self._raw.get(name)
        if value is None or isinstance(value, str):
            return value
        raise invalid_argument(f"{name} must be a string")

    def string(self, name: str) -> str:
        value = self.optional_str(name)
        if value is None:
            raise invalid_argument(f"{name} is required")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._raw.get(name, default)
        if isinstance(value, bool):
            return value
        lowered = str(value).strip().lower()
        if isinstance(value, int | str) and lowered in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return lowered in ("1", "true", "yes", "on")
        raise invalid_argument(f"{name} must be a boolean")

    def integer(self, name: str) -> int:
        value = self._required(name)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise invalid_argument(f"{name} must be an integer")

    def obj(self, name: str) -> dict[str, Any]:
        value = self._required(name)
        if not isinstance(value, dict):
            raise invalid_argument(f"{name} must be an object")
        return value


# -- tools ----------------------------------------------------------------------------------------

_ACCOUNT = {
    "anyOf": [{"type": "string"}, {"type": "null"}],
    "default": None,
    "description": "IBKR account ID. Defaults to IBKR_ACCOUNT or the first managed account.",
}
_ACCOUNT_FILTER = {**_ACCOUNT, "description": "Optional IBKR account ID filter."}
_CONTRACT = {
    "type": "object",
    "additionalProperties": True,
    "description": "Contract fields such as symbol, secType, exchange, currency, conId, and primaryExchange.",
}
_ORDER = {
    "type": "object",
    "additionalProperties": True,
    "description": "Order fields (action, totalQuantity, orderType, lmtPrice, auxPrice, tif, account, etc.).",
}
_CONFIRM = {
    "type": "boolean",
    "default": False,
    "description": "Must be true to execute a live trading action.",
}

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "retryable": {"type": "boolean"},
            },
            "required": ["type", "message", "retryable"],
        }
    },
    "required": ["error"],
}
_NOTES = {"type": "array", "items": {"type": "string"}}
_OBJECTS = {"type": "array", "items": {"type": "object"}}
_MAYBE_OBJECT = {"type": ["object", "null"]}


def _input(properties: dict[str, dict[str, Any]], *required: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _output(properties: dict[str, dict[str, Any]], *optional: str) -> dict[str, Any]:
    """A success shape or the error shape, like the real server's combined output schemas."""
    required = [name for name in properties if name not in optional]
    success = {"type": "object", "properties": properties, "required": required}
    return {"type": "object", "anyOf": [success, _ERROR_SCHEMA]}


def _annotations(*, read_only: bool, idempotent: bool = True) -> types.ToolAnnotations:
    return types.ToolAnnotations(
        read_only_hint=read_only,
        # Every acting tool here is destructive: a placed order can fill and a cancel can strip a
        # position of its stop, and neither can be taken back.
        destructive_hint=not read_only,
        idempotent_hint=idempotent,
        open_world_hint=True,
    )


_Handler = Callable[[PaperBook, _Arguments], dict[str, Any]]


@dataclass(frozen=True)
class _ToolSpec:
    tool: types.Tool
    run: _Handler


def _get_open_orders(book: PaperBook, args: _Arguments) -> dict[str, Any]:
    account, include_all = args.optional_str("account"), args.boolean("include_all", True)
    return {"orders": book.open_orders(account, include_all=include_all), "notes": []}


def _get_portfolio(book: PaperBook, args: _Arguments) -> dict[str, Any]:
    account = book.resolve_account(args.optional_str("account"))
    include_pnl, as_of = args.boolean("include_pnl", True), args.optional_str("as_of")
    positions = book.position_rows(account)
    totals: dict[str, Any] = {"unrealizedPnl": None, "realizedPnl": None, "netLiquidation": None}
    if include_pnl:
        totals = {
            "unrealizedPnl": round(sum(row["unrealizedPnl"] for row in positions), 2),
            "realizedPnl": round(book.realized_pnl[account], 2),
            "netLiquidation": round(book.balances(account)["NetLiquidation"], 2),
        }
    else:
        for row in positions:
            row.update(marketPrice=None, marketValue=None, unrealizedPnl=None)
    return {
        "as_of": as_of or book.now(),
        "account": account,
        "currency": "USD" if include_pnl else "BASE",
        "positions": positions,
        "totals": totals,
        "notes": [],
    }


def _get_account_summary(book: PaperBook, args: _Arguments) -> dict[str, Any]:
    account = book.resolve_account(args.optional_str("account"))
    return {"account": account, "items": book.account_summary(account), "notes": []}


def _search_symbols(book: PaperBook, args: _Arguments) -> dict[str, Any]:
    return {"matches": book.search_symbols(args.string("query")), "notes": []}


def _get_contract_details(book: PaperBook, args: _Arguments) -> dict[str, Any]:
    details = book.contract_details(args.obj("contract"))
    return {"details": details, "notes": [] if details else ["no security definition found for the contract"]}


def _not_qualified(contract: Mapping[str, Any]) -> str:
    return f"contract not qualified: {contract.get('symbol', '')} {contract.get('secType', '')}".rstrip()


def _preview_order(book: PaperBook, args: _Arguments) -> dict[str, Any]:
    request = book.validate_order(args.obj("contract"), args.obj("order"))
    state = book.what_if(request)
    return {"orderState": state, "notes": [] if state else [_not_qualified(request.contract_input)]}


def _place_order(book: PaperBook, args: _Arguments) -> dict[str, Any]:
    contract, order = args.obj("contract"), args.obj("order")
    confirm, dry_run = args.boolean("confirm", False), args.boolean("dry_run", True)
    transmit = args.boolean("transmit", False)
    request = book.validate_order(contract, order)
    notes = [] if request.instrument else [_not_qualified(contract)]
    if dry_run:
        # The real server answers a dry run with notes alone; the what-if is added so an approver
        # (or agent) sees what the live call would commit to.
        notes += ["dry_run=true; order not sent", f"order transmit={transmit}"]
        return {"trade": None, "preview": book.what_if(request), "notes": notes}
    book.check_trading(confirm)
    if request.instrument is None:
        return {"trade": None, "notes": [*notes, "order not placed"]}
    return {"trade": book.trade_snapshot(book.place(request, transmit=transmit)), "notes": notes}


def _cancel_order(book: PaperBook, args: _Arguments) -> dict[str, Any]:
    order_id, confirm = args.integer("orderId"), args.boolean("confirm", False)
    book.check_trading(confirm)
    return {"orderId": order_id, "trade": book.trade_snapshot(book.cancel(order_id)), "notes": []}


def _global_cancel(book: PaperBook, args: _Arguments) -> dict[str, Any]:
    book.check_trading(args.boolean("confirm", False))
    cancelled = book.global_cancel()
    return {
        "status": "submitted",
        "notes": [f"cancelled orderIds: {', '.join(map(str, cancelled)) or 'none'}"],
    }


def _spec(
    name: str,
    title: str,
    description: str,
    input_schema: dict[str, Any],
    output_schema: dict[str, Any],
    annotations: types.ToolAnnotations,
    run: _Handler,
) -> _ToolSpec:
    tool = types.Tool(
        name=name,
        title=title,
        description=description,
        input_schema=input_schema,
        output_schema=output_schema,
        annotations=annotations.model_copy(update={"title": title}),
    )
    return _ToolSpec(tool, run)


_READ = _annotations(read_only=True)
_TOOLS = (
    _spec(
        "ibkr_get_portfolio",
        "Get Portfolio",
        "Return positions and best-effort P&L for an IBKR account.",
        _input(
            {
                "account": _ACCOUNT,
                "include_pnl": {
                    "type": "boolean",
                    "default": True,
                    "description": "Compute best-effort P&L.",
                },
                "as_of": {**_ACCOUNT, "description": "ISO-8601 timestamp to report as the response time."},
            }
        ),
        _output(
            {"as_of": {"type": "string"}, "account": {"type": "string"}, "currency": {"type": "string"}}
            | {"positions": _OBJECTS, "totals": {"type": "object"}, "notes": _NOTES}
        ),
        _READ,
        _get_portfolio,
    ),
    _spec(
        "ibkr_get_account_summary",
        "Get Account Summary",
        "Return account summary values such as NetLiquidation and BuyingPower.",
        _input({"account": _ACCOUNT}),
        _output({"account": {"type": "string"}, "items": _OBJECTS, "notes": _NOTES}),
        _READ,
        _get_account_summary,
    ),
    _spec(
        "ibkr_get_open_orders",
        "Get Open Orders",
        "Return open orders with contract details and status.",
        _input(
            {
                "account": _ACCOUNT_FILTER,
                "include_all": {
                    "type": "boolean",
                    "default": True,
                    "description": "Include open orders from all accounts and clients.",
                },
            }
        ),
        _output({"orders": _OBJECTS, "notes": _NOTES}),
        _READ,
        _get_open_orders,
    ),
    _spec(
        "ibkr_search_symbols",
        "Search Symbols",
        "Search for symbols and matching contracts.",
        _input({"query": {"type": "string", "description": "Symbol or name to search for."}}, "query"),
        _output({"matches": _OBJECTS, "notes": _NOTES}),
        _READ,
        _search_symbols,
    ),
    _spec(
        "ibkr_get_contract_details",
        "Get Contract Details",
        "Return contract details for a given contract input.",
        _input({"contract": _CONTRACT}, "contract"),
        _output({"details": _OBJECTS, "notes": _NOTES}),
        _READ,
        _get_contract_details,
    ),
    _spec(
        "ibkr_preview_order",
        "Preview Order",
        "Run IBKR what-if analysis for an order and return margin/commission impact.",
        _input({"contract": _CONTRACT, "order": _ORDER}, "contract", "order"),
        _output({"orderState": _MAYBE_OBJECT, "notes": _NOTES}),
        _READ,
        _preview_order,
    ),
    _spec(
        "ibkr_place_order",
        "Place Order",
        "Place an IBKR order. Defaults to dry_run=true and transmit=false for safety.",
        _input(
            {
                "contract": _CONTRACT,
                "order": _ORDER,
                "confirm": _CONFIRM,
                "dry_run": {
                    "type": "boolean",
                    "default": True,
                    "description": "When true, return notes only and do not place orders.",
                },
                "transmit": {
                    "type": "boolean",
                    "default": False,
                    "description": "Whether to transmit placed orders to IBKR (default false).",
                },
            },
            "contract",
            "order",
        ),
        _output({"trade": _MAYBE_OBJECT, "preview": _MAYBE_OBJECT, "notes": _NOTES}, "preview"),
        _annotations(read_only=False, idempotent=False),
        _place_order,
    ),
    _spec(
        "ibkr_cancel_order",
        "Cancel Order",
        "Cancel a single IBKR order by orderId. Requires confirm=true.",
        _input(
            {"orderId": {"type": "integer", "description": "IBKR orderId to cancel."}, "confirm": _CONFIRM},
            "orderId",
        ),
        _output({"orderId": {"type": "integer"}, "trade": _MAYBE_OBJECT, "notes": _NOTES}),
        _annotations(read_only=False),
        _cancel_order,
    ),
    _spec(
        "ibkr_global_cancel",
        "Global Cancel",
        "Cancel all active IBKR orders. Requires confirm=true.",
        _input({"confirm": _CONFIRM}),
        _output({"status": {"type": "string"}, "notes": _NOTES}),
        _annotations(read_only=False),
        _global_cancel,
    ),
)
_TOOLS_BY_NAME = {spec.tool.name: spec for spec in _TOOLS}


def _result(payload: dict[str, Any], *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(payload, indent=2))],
        structured_content=payload,
        is_error=is_error,
    )


def build_server(book: PaperBook | None = None, *, name: str = "paper-broker") -> Server[Any]:
    """The low-level MCP server for `book` (a freshly seeded one when omitted)."""
    book = book if book is not None else PaperBook()
    listing = types.ListToolsResult(tools=[spec.tool for spec in _TOOLS])

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return listing

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = dict(params.arguments or {})
        book.calls.append((params.name, arguments))
        spec = _TOOLS_BY_NAME.get(params.name)
        if spec is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        try:
            book.ensure_connected()
            return _result(spec.run(book, _Arguments(arguments)))
        except BrokerError as exc:
            return _result(exc.as_dict(), is_error=True)
        except Exception as exc:
            logger.exception("paper broker tool %s failed", params.name)
            return _result(BrokerError("INTERNAL_ERROR", str(exc)).as_dict(), is_error=True)

    def input_schema(tool_name: str) -> Mapping[str, Any] | None:
        spec = _TOOLS_BY_NAME.get(tool_name)
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


async def serve_stdio(book: PaperBook | None = None) -> None:
    server = build_server(book)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def build_http_app(book: PaperBook | None = None, *, host: str = "127.0.0.1") -> Starlette:
    """Streamable HTTP at /mcp, stateless with JSON responses like the real server, plus GET /health."""

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "broker": "paper"})

    return build_server(book).streamable_http_app(
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
) -> None:
    """Serve until cancelled (or interrupted); `ready` is set once the port accepts connections."""
    config = uvicorn.Config(
        build_http_app(book, host=host),
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


def run(options: argparse.Namespace) -> int:
    book = PaperBook(trading_enabled=not options.no_trading)
    try:
        if options.http is None:
            anyio.run(serve_stdio, book)
        else:
            print(f"paper broker: http://{options.host}:{options.http}/mcp", flush=True)
            anyio.run(serve_http, options.http, options.host, book)
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paper-broker", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
