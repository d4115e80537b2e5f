"""Context for broker order cancels: the order a cancel names, as the broker lists it right now.

A cancel tool carries only an order id. Deciding needs the order itself: instrument, side,
quantity, type and prices, status, and whether it is a leg of a bracket or OCA group (cancelling a
protective stop raises exposure). The same upstream's open-orders tool is read through
`GatewayReads` (policy-checked, audited, bounded in time); one answer per upstream is shared for
a few seconds, and a failed lookup says plainly why rather than showing nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from approvals.views import RequestView
from gateway.context import Fact, GatewayReads, ReadFailed, RequestContext, number

CANCEL_TOOL = "ibkr_cancel_order"
OPEN_ORDERS_TOOL = "ibkr_get_open_orders"
_STOP_TYPES = {"STP", "STP LMT", "TRAIL", "TRAIL LIMIT"}

Order = Mapping[str, Any]


@dataclass
class _Cached:
    at: float
    orders: list[Order] | None = None
    problem: str | None = None
    lock: anyio.Lock = field(default_factory=anyio.Lock)


class OrderContext:
    def __init__(self, reads: GatewayReads, *, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.reads = reads
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, _Cached] = {}

    def applies(self, request: RequestView) -> bool:
        return request.upstream_tool == CANCEL_TOOL

    async def lookup(self, request: RequestView) -> RequestContext:
        now = datetime.now(UTC)
        arguments = request.arguments_shown
        order_id = _order_id(arguments.get("orderId") if isinstance(arguments, dict) else None)
        if order_id is None:
            return RequestContext(
                "The order", now, problem="The call names no valid orderId, so there is no order to show."
            )
        title = f"Order {order_id}"
        orders, problem = await self._open_orders(request)
        if orders is None:
            return RequestContext(title, now, problem=f"Could not look up order {order_id}: {problem}")
        found = next((o for o in orders if _order_id(o.get("orderId")) == order_id), None)
        if found is None:
            return RequestContext(
                title,
                now,
                problem=(
                    f"Order {order_id} is not among the open orders of upstream '{request.upstream}': it may have "
                    "filled or been cancelled already, or the id may be wrong."
                ),
            )
        return describe_order(order_id, found, orders, now)

    def result_summary(self, request: RequestView) -> str | None:
        structured = (request.result or {}).get("structuredContent")
        trade = structured.get("trade") if isinstance(structured, Mapping) else None
        if isinstance(trade, Mapping):
            status, order = trade.get("orderStatus"), trade.get("order")
            if isinstance(status, Mapping) and isinstance(order, Mapping) and status.get("status"):
                return f"Order {order.get('orderId')} is now {status.get('status')}."
        return None

    async def _open_orders(self, request: RequestView) -> tuple[list[Order] | None, str | None]:
        cached = self._cache.setdefault(request.upstream, _Cached(at=float("-inf")))
        async with cached.lock:
            if self.clock() - cached.at >= self.ttl:
                cached.orders, cached.problem = await self._fetch(request)
                cached.at = self.clock()
            return cached.orders, cached.problem

    async def _fetch(self, request: RequestView) -> tuple[list[Order] | None, str | None]:
        try:
            result = await self.reads.read(request, OPEN_ORDERS_TOOL, {})
        except ReadFailed as failed:
            return None, failed.reason
        data = result.structured_content
        orders = data.get("orders") if isinstance(data, dict) else None
        if not isinstance(orders, list):
            return None, f"{OPEN_ORDERS_TOOL} answered without an orders list"
        return [o for o in orders if isinstance(o, Mapping)], None


def describe_order(order_id: int, o: Order, orders: list[Order], now: datetime) -> RequestContext:
    parent, oca = o.get("parentId") or 0, o.get("ocaGroup") or ""
    siblings = [
        s
        for s in orders
        if s is not o and ((oca and s.get("ocaGroup") == oca) or (parent and (s.get("parentId") or 0) == parent))
    ]
    children = [c for c in orders if _order_id(c.get("parentId")) == order_id]
    contract = o.get("contract") if isinstance(o.get("contract"), Mapping) else {}
    assert isinstance(contract, Mapping)
    instrument = " · ".join(str(contract[k]) for k in ("symbol", "secType", "exchange", "currency") if contract.get(k))
    quantity = f"{o.get('action', '?')} {number(o.get('totalQuantity'))}"
    filled = _number(o.get("filledQuantity"))
    if filled:
        quantity += f" ({number(filled)} filled, {number(o.get('remainingQuantity'))} left)"
    price = describe_price(o) + (f" · {o['tif']}" if o.get("tif") else "")
    facts = [
        Fact("Instrument", instrument or "unknown instrument"),
        Fact("Side · quantity", quantity),
        Fact("Type · price", price),
        Fact("Status", str(o.get("status", "?"))),
        Fact("Account", str(o.get("account", "?"))),
    ]
    if parent or oca:
        legs = [f"parent order {parent}" if parent else "", f"OCA group {oca}" if oca else ""]
        facts.append(Fact("Leg of", ", ".join(leg for leg in legs if leg)))
    warnings: list[str] = []
    if (parent or oca) and str(o.get("orderType", "")).upper() in _STOP_TYPES:
        warnings.append("This looks like a protective stop: cancelling it can leave a position without its stop-loss.")
    if children:
        ids = ", ".join(str(c.get("orderId")) for c in children)
        warnings.append(f"This is a parent order: cancelling it also cancels its child orders ({ids}).")
    if filled:
        warnings.append(f"Partly filled already: {number(filled)} of {number(_number(o.get('totalQuantity')))}.")
    notes = []
    if siblings:
        listed = "; ".join(
            f"{s.get('orderId')} {s.get('action')} {number(s.get('totalQuantity'))} {s.get('orderType')} "
            f"({s.get('status')})"
            for s in siblings
        )
        notes.append(f"Same group: {listed}")
    return RequestContext(f"Order {order_id}", now, tuple(facts), tuple(warnings), tuple(notes))


def describe_price(order: Order) -> str:
    kind = str(order.get("orderType") or "?")
    lmt, aux = _number(order.get("lmtPrice")), _number(order.get("auxPrice"))
    if kind == "LMT" and lmt is not None:
        return f"LMT {number(lmt)}"
    if kind == "STP" and aux is not None:
        return f"STP {number(aux)}"
    if kind == "STP LMT" and lmt is not None and aux is not None:
        return f"STP {number(aux)} LMT {number(lmt)}"
    return kind


def _order_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
