"""The order behind an `ibkr_cancel_order` card, looked up live so the approver sees what would be cancelled.

`ibkr_cancel_order` carries only an order id. Deciding needs the order itself: symbol, side,
quantity, type and prices, status, and whether it is a leg of a bracket or OCA group (cancelling
a protective stop raises exposure). We ask the same upstream's `ibkr_get_open_orders` with a
short timeout, share one answer per upstream for a few seconds, and say plainly when the
lookup failed rather than show nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from approvals.views import RequestView
from gateway.results import text_of
from gateway.upstreams import UpstreamSet
from gateway.web.templating import number

log = logging.getLogger(__name__)

CANCEL_TOOL = "ibkr_cancel_order"
OPEN_ORDERS_TOOL = "ibkr_get_open_orders"
_STOP_TYPES = {"STP", "STP LMT", "TRAIL", "TRAIL LIMIT"}


@dataclass(frozen=True)
class OrderView:
    """One order, with the facts an approver reads first, and warnings worth a second look."""

    order_id: int
    raw: Mapping[str, Any]
    siblings: tuple[Mapping[str, Any], ...] = ()
    children: tuple[Mapping[str, Any], ...] = ()

    @property
    def contract(self) -> Mapping[str, Any]:
        contract = self.raw.get("contract")
        return contract if isinstance(contract, Mapping) else {}

    @property
    def instrument(self) -> str:
        c = self.contract
        parts = [str(c.get(k)) for k in ("symbol", "secType", "exchange", "currency") if c.get(k)]
        return " · ".join(parts) or "unknown instrument"

    @property
    def price(self) -> str:
        return describe_price(self.raw)

    @property
    def warnings(self) -> list[str]:
        o = self.raw
        notes: list[str] = []
        parent, oca = o.get("parentId") or 0, o.get("ocaGroup") or ""
        if (parent or oca) and str(o.get("orderType", "")).upper() in _STOP_TYPES:
            notes.append("This looks like a protective stop: cancelling it can leave a position without its stop-loss.")
        if self.children:
            ids = ", ".join(str(c.get("orderId")) for c in self.children)
            notes.append(f"This is a parent order: cancelling it also cancels its child orders ({ids}).")
        filled = _number(o.get("filledQuantity"))
        if filled:
            notes.append(f"Partly filled already: {number(filled)} of {number(_number(o.get('totalQuantity')))}.")
        return notes


@dataclass(frozen=True)
class OrderLookup:
    """The outcome of one lookup: the order, or why it could not be shown."""

    order_id: int | None
    checked_at: datetime
    order: OrderView | None = None
    problem: str | None = None


@dataclass
class _Cached:
    at: float
    orders: list[Mapping[str, Any]] | None = None
    problem: str | None = None
    lock: anyio.Lock = field(default_factory=anyio.Lock)


def applies(request: RequestView) -> bool:
    return request.upstream_tool == CANCEL_TOOL


def describe_price(order: Mapping[str, Any]) -> str:
    kind = str(order.get("orderType") or "?")
    lmt, aux = _number(order.get("lmtPrice")), _number(order.get("auxPrice"))
    if kind == "LMT" and lmt is not None:
        return f"LMT {number(lmt)}"
    if kind == "STP" and aux is not None:
        return f"STP {number(aux)}"
    if kind == "STP LMT" and lmt is not None and aux is not None:
        return f"STP {number(aux)} LMT {number(lmt)}"
    return kind


class OrderBook:
    """Looks orders up through the gateway's upstream connections (not through policy: it is our own read)."""

    def __init__(
        self,
        upstreams: UpstreamSet,
        *,
        timeout: float = 3.0,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstreams = upstreams
        self.timeout = timeout
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, _Cached] = {}

    async def lookup(self, request: RequestView) -> OrderLookup:
        now = datetime.now(UTC)
        order_id = _order_id(request.arguments.get("orderId"))
        if order_id is None:
            return OrderLookup(None, now, problem="The call names no valid orderId, so there is no order to show.")
        orders, problem = await self._open_orders(request.upstream)
        if orders is None:
            return OrderLookup(order_id, now, problem=f"Could not look up order {order_id}: {problem}")
        found = next((o for o in orders if _order_id(o.get("orderId")) == order_id), None)
        if found is None:
            return OrderLookup(
                order_id,
                now,
                problem=(
                    f"Order {order_id} is not among the open orders of upstream '{request.upstream}': it may have "
                    "filled or been cancelled already, or the id may be wrong."
                ),
            )
        parent, oca = found.get("parentId") or 0, found.get("ocaGroup") or ""
        siblings = tuple(
            o
            for o in orders
            if o is not found
            and ((oca and o.get("ocaGroup") == oca) or (parent and (o.get("parentId") or 0) == parent))
        )
        children = tuple(o for o in orders if _order_id(o.get("parentId")) == order_id)
        return OrderLookup(order_id, now, order=OrderView(order_id, found, siblings, children))

    async def _open_orders(self, upstream_name: str) -> tuple[list[Mapping[str, Any]] | None, str | None]:
        cached = self._cache.setdefault(upstream_name, _Cached(at=float("-inf")))
        async with cached.lock:
            if self.clock() - cached.at < self.ttl:
                return cached.orders, cached.problem
            orders, problem = await self._fetch(upstream_name)
            cached.at, cached.orders, cached.problem = self.clock(), orders, problem
            return orders, problem

    async def _fetch(self, upstream_name: str) -> tuple[list[Mapping[str, Any]] | None, str | None]:
        upstream = next((u for u in self.upstreams.upstreams if u.name == upstream_name), None)
        if upstream is None:
            return None, f"upstream '{upstream_name}' is no longer configured"
        if not any(t.name == OPEN_ORDERS_TOOL for t in upstream.tools):
            return None, f"upstream '{upstream_name}' offers no {OPEN_ORDERS_TOOL} tool"
        with anyio.move_on_after(self.timeout):
            result = await upstream.call(OPEN_ORDERS_TOOL, {})
            if result.is_error:
                return None, text_of(result, 200)
            data = result.structured_content
            orders = data.get("orders") if isinstance(data, dict) else None
            if not isinstance(orders, list):
                return None, f"{OPEN_ORDERS_TOOL} answered without an orders list"
            return [o for o in orders if isinstance(o, Mapping)], None
        return None, f"upstream '{upstream_name}' did not answer within {self.timeout:g}s"


def summarize_result(request: RequestView) -> str | None:
    """One line about what the upstream did, for the card: e.g. 'Order 1001 is now Cancelled'."""
    result = request.result
    if result is None:
        return None
    structured = result.get("structuredContent")
    if isinstance(structured, Mapping):
        trade = structured.get("trade")
        if isinstance(trade, Mapping):
            status = trade.get("orderStatus")
            order = trade.get("order")
            if isinstance(status, Mapping) and isinstance(order, Mapping) and status.get("status"):
                return f"Order {order.get('orderId')} is now {status.get('status')}."
    texts = [b.get("text") for b in result.get("content", []) if isinstance(b, Mapping) and b.get("type") == "text"]
    joined = " ".join(" ".join(str(t) for t in texts if t).split())
    if not joined:
        return None
    return joined if len(joined) <= 200 else joined[:199] + "…"


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
