"""The paper broker's tools: their input and output schemas, annotations and handlers over a `PaperBook`.

`gateway.paper_broker` serves `TOOLS` over MCP; this module knows nothing of transports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import mcp_types as types

from gateway.paper_book import PaperBook, invalid_argument

# -- argument parsing -----------------------------------------------------------------------------


class Arguments:
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


_Handler = Callable[[PaperBook, Arguments], dict[str, Any]]


@dataclass(frozen=True)
class ToolSpec:
    tool: types.Tool
    run: _Handler


def _get_open_orders(book: PaperBook, args: Arguments) -> dict[str, Any]:
    account, include_all = args.optional_str("account"), args.boolean("include_all", True)
    return {"orders": book.open_orders(account, include_all=include_all), "notes": []}


def _get_portfolio(book: PaperBook, args: Arguments) -> dict[str, Any]:
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


def _get_account_summary(book: PaperBook, args: Arguments) -> dict[str, Any]:
    account = book.resolve_account(args.optional_str("account"))
    return {"account": account, "items": book.account_summary(account), "notes": []}


def _search_symbols(book: PaperBook, args: Arguments) -> dict[str, Any]:
    return {"matches": book.search_symbols(args.string("query")), "notes": []}


def _get_contract_details(book: PaperBook, args: Arguments) -> dict[str, Any]:
    details = book.contract_details(args.obj("contract"))
    return {"details": details, "notes": [] if details else ["no security definition found for the contract"]}


def _not_qualified(contract: Mapping[str, Any]) -> str:
    return f"contract not qualified: {contract.get('symbol', '')} {contract.get('secType', '')}".rstrip()


def _preview_order(book: PaperBook, args: Arguments) -> dict[str, Any]:
    request = book.validate_order(args.obj("contract"), args.obj("order"))
    state = book.what_if(request)
    return {"orderState": state, "notes": [] if state else [_not_qualified(request.contract_input)]}


def _place_order(book: PaperBook, args: Arguments) -> dict[str, Any]:
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


def _cancel_order(book: PaperBook, args: Arguments) -> dict[str, Any]:
    order_id, confirm = args.integer("orderId"), args.boolean("confirm", False)
    book.check_trading(confirm)
    return {"orderId": order_id, "trade": book.trade_snapshot(book.cancel(order_id)), "notes": []}


def _global_cancel(book: PaperBook, args: Arguments) -> dict[str, Any]:
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
) -> ToolSpec:
    tool = types.Tool(
        name=name,
        title=title,
        description=description,
        input_schema=input_schema,
        output_schema=output_schema,
        annotations=annotations.model_copy(update={"title": title}),
    )
    return ToolSpec(tool, run)


_READ = _annotations(read_only=True)
TOOLS = (
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
TOOLS_BY_NAME = {spec.tool.name: spec for spec in TOOLS}
