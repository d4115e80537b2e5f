"""An in-memory IBKR paper account: the orders, positions and cash the paper broker's tools act on.

Free of MCP so that tests and the demo can seed, inspect, fill and cancel orders directly, and so
that every rule (what can be cancelled, what a fill does to a bracket) is testable without a server.
Field names follow the IBKR API (`orderId`, `lmtPrice`, `auxPrice`, ...) wherever they reach a caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

PRIMARY_ACCOUNT = "DU1000001"
SECONDARY_ACCOUNT = "DU1000002"
# The clientId the real server connects to TWS with. `include_all=false` lists only orders placed
# under it, the way reqOpenOrders differs from reqAllOpenOrders.
API_CLIENT_ID = 100
TWS_CLIENT_ID = 0
FIRST_ORDER_ID = 1001
_PERM_ID_BASE = 1_700_000_000

ACTIVE_STATUSES = frozenset({"ApiPending", "PendingSubmit", "PreSubmitted", "Submitted"})
ORDER_TYPES = ("MKT", "LMT", "STP", "STP LMT")
TIFS = ("DAY", "GTC", "IOC", "GTD", "OPG", "FOK")

# Reg T rates for US stocks. Real requirements vary by instrument; the book needs plausible numbers.
INITIAL_MARGIN_RATE = 0.5
MAINTENANCE_MARGIN_RATE = 0.25
# IBKR Pro fixed pricing for US stocks.
COMMISSION_PER_SHARE = 0.005
MIN_COMMISSION = 1.0
MAX_COMMISSION_RATE = 0.01


class BrokerError(Exception):
    """A failure the agent should read: the server turns it into an `isError` tool result."""

    def __init__(self, type_: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message
        self.retryable = retryable

    def as_dict(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, "retryable": self.retryable}}


def invalid_argument(message: str) -> BrokerError:
    return BrokerError("INVALID_ARGUMENT", message)


@dataclass(frozen=True)
class Instrument:
    con_id: int
    symbol: str
    long_name: str
    primary_exchange: str
    price: float
    industry: str
    category: str
    sec_type: str = "STK"
    exchange: str = "SMART"
    currency: str = "USD"
    min_tick: float = 0.01

    def contract(self) -> dict[str, Any]:
        return {
            "conId": self.con_id,
            "symbol": self.symbol,
            "secType": self.sec_type,
            "exchange": self.exchange,
            "currency": self.currency,
            "primaryExchange": self.primary_exchange,
        }


# Real IBKR conIds, so contracts copied from a real account resolve here too.
INSTRUMENTS = (
    Instrument(265598, "AAPL", "APPLE INC", "NASDAQ", 189.50, "Technology", "Computers"),
    Instrument(272093, "MSFT", "MICROSOFT CORP", "NASDAQ", 415.20, "Technology", "Software"),
    Instrument(76792991, "TSLA", "TESLA INC", "NASDAQ", 248.30, "Consumer, Cyclical", "Auto Manufacturers"),
    Instrument(4815747, "NVDA", "NVIDIA CORP", "NASDAQ", 880.10, "Technology", "Semiconductors"),
    Instrument(756733, "SPY", "SPDR S&P 500 ETF TRUST", "ARCA", 512.40, "Funds", "Equity Fund"),
)


@dataclass
class Order:
    order_id: int
    perm_id: int
    client_id: int
    account: str
    instrument: Instrument
    action: str
    total_quantity: float
    order_type: str
    lmt_price: float | None
    aux_price: float | None
    tif: str
    status: str
    parent_id: int = 0
    oca_group: str = ""
    transmit: bool = True
    filled_quantity: float = 0.0
    avg_fill_price: float = 0.0
    fills: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def remaining_quantity(self) -> float:
        return self.total_quantity - self.filled_quantity

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def reference_price(self) -> float:
        return _reference_price(self.order_type, self.lmt_price, self.aux_price, self.instrument.price)


@dataclass
class Position:
    quantity: float
    avg_cost: float


@dataclass(frozen=True)
class OrderRequest:
    """A validated `order` argument; `instrument` is None when the contract does not qualify."""

    contract_input: Mapping[str, Any]
    instrument: Instrument | None
    account: str
    action: str
    total_quantity: float
    order_type: str
    lmt_price: float | None
    aux_price: float | None
    tif: str
    parent_id: int
    oca_group: str


def commission_for(quantity: float, price: float) -> float:
    fee = max(MIN_COMMISSION, abs(quantity) * COMMISSION_PER_SHARE)
    return round(min(fee, abs(quantity) * price * MAX_COMMISSION_RATE) if quantity else 0.0, 2)


class PaperBook:
    """Accounts, positions and orders of a pretend IBKR paper login, with deterministic ids."""

    def __init__(
        self,
        *,
        seed: bool = True,
        trading_enabled: bool = True,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.trading_enabled = trading_enabled
        # Flip to False to make every tool fail with the retryable TWS_CONNECTION_FAILED.
        self.tws_connected = True
        self.cancel_calls = 0
        self.global_cancel_calls = 0
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.accounts = [PRIMARY_ACCOUNT, SECONDARY_ACCOUNT]
        self.cash = {PRIMARY_ACCOUNT: 250_000.0, SECONDARY_ACCOUNT: 50_000.0}
        self.realized_pnl = {PRIMARY_ACCOUNT: 0.0, SECONDARY_ACCOUNT: 0.0}
        self.positions: dict[tuple[str, int], Position] = {}
        self.orders: dict[int, Order] = {}
        self._next_order_id = FIRST_ORDER_ID
        self._next_exec_id = 1
        self._clock = clock or (lambda: datetime.now(UTC))
        if seed:
            self._seed()

    def _seed(self) -> None:
        aapl, _, tsla, _, spy = INSTRUMENTS
        self.positions[(PRIMARY_ACCOUNT, aapl.con_id)] = Position(300.0, 172.40)
        self.positions[(PRIMARY_ACCOUNT, tsla.con_id)] = Position(200.0, 231.10)
        self.positions[(SECONDARY_ACCOUNT, spy.con_id)] = Position(40.0, 498.20)
        lmt, gtc = {"orderType": "LMT", "tif": "DAY"}, {"tif": "GTC"}
        # 1001: a plain resting limit buy.
        self._seed_order("AAPL", API_CLIENT_ID, action="BUY", totalQuantity=100, lmtPrice=185.0, **lmt)
        # 1002-1004: a bracket whose entry has filled, leaving a take-profit and a protective stop in
        # one OCA group. Cancelling 1004 leaves the MSFT position unprotected.
        entry = self._seed_order("MSFT", API_CLIENT_ID, action="BUY", totalQuantity=50, lmtPrice=410.0, **lmt)
        legs = {"action": "SELL", "totalQuantity": 50, "parentId": entry.order_id, "ocaGroup": f"OCA_{entry.order_id}"}
        self._seed_order("MSFT", API_CLIENT_ID, orderType="LMT", lmtPrice=440.0, **legs, **gtc)
        self._seed_order("MSFT", API_CLIENT_ID, orderType="STP", auxPrice=395.0, **legs, **gtc)
        self.fill(entry.order_id)
        # 1005: a sell entered in TWS by hand, 80 of 200 shares done.
        sell = self._seed_order("TSLA", TWS_CLIENT_ID, action="SELL", totalQuantity=200, lmtPrice=260.0, **lmt)
        self.fill(sell.order_id, quantity=80)
        # 1006: an order in the second account, for the account filter.
        self._seed_order(
            "SPY", TWS_CLIENT_ID, account=SECONDARY_ACCOUNT, action="BUY", totalQuantity=10, lmtPrice=500.0, **lmt
        )

    def _seed_order(self, symbol: str, client_id: int, **order: Any) -> Order:
        return self._new_order(self.validate_order({"symbol": symbol}, order), client_id, transmit=True)

    def now(self) -> str:
        return self._clock().isoformat()

    def _new_order(self, request: OrderRequest, client_id: int, *, transmit: bool) -> Order:
        if request.instrument is None:
            raise invalid_argument("contract does not qualify to a single instrument")
        parent = self.orders.get(request.parent_id)
        if not transmit:
            status = "PendingSubmit"  # TWS holds an untransmitted order until someone presses Transmit.
        elif parent is not None and parent.is_active:
            status = "PreSubmitted"  # a bracket leg waits for its entry to fill
        else:
            status = _working_status(request.order_type)
        order_id = self._next_order_id
        self._next_order_id += 1
        order = Order(
            order_id=order_id,
            perm_id=_PERM_ID_BASE + order_id,
            client_id=client_id,
            account=request.account,
            instrument=request.instrument,
            action=request.action,
            total_quantity=request.total_quantity,
            order_type=request.order_type,
            lmt_price=request.lmt_price,
            aux_price=request.aux_price,
            tif=request.tif,
            status=status,
            parent_id=request.parent_id,
            oca_group=request.oca_group,
            transmit=transmit,
        )
        self._log(order, "order placed")
        self.orders[order_id] = order
        return order

    def _log(self, order: Order, message: str) -> None:
        order.log.append({"time": self.now(), "status": order.status, "message": message, "errorCode": 0})

    # -- checks ---------------------------------------------------------------------------------

    def ensure_connected(self) -> None:
        if not self.tws_connected:
            raise BrokerError("TWS_CONNECTION_FAILED", "failed to connect to TWS at 127.0.0.1:7497", retryable=True)

    def check_trading(self, confirm: bool) -> None:
        """The real server's gate for acting tools: trading switched on, then `confirm=true`."""
        if not self.trading_enabled:
            raise BrokerError(
                "TRADING_DISABLED",
                "live trading is disabled; set IBKR_ENABLE_TRADING=true to enable mutating tools",
            )
        if not confirm:
            raise BrokerError("CONFIRM_REQUIRED", "confirm must be true for this trading action")

    def resolve_account(self, account: str | None) -> str:
        if account is None or account == "":
            return self.accounts[0]
        if account not in self.accounts:
            raise invalid_argument(f"unknown account '{account}'; managed accounts: {', '.join(self.accounts)}")
        return account

    # -- contracts ------------------------------------------------------------------------------

    def find_instruments(self, contract: Mapping[str, Any]) -> list[Instrument]:
        known = {"conId", "symbol", "secType", "exchange", "currency", "primaryExchange", "localSymbol"}
        if not any(contract.get(key) not in (None, "") for key in known):
            raise invalid_argument("contract requires at least one field")
        con_id = contract.get("conId")
        symbol = str(contract.get("symbol") or contract.get("localSymbol") or "").upper()
        sec_type = str(contract.get("secType") or "").upper()
        currency = str(contract.get("currency") or "").upper()
        matches = []
        for instrument in INSTRUMENTS:
            if con_id not in (None, "", 0) and str(con_id) != str(instrument.con_id):
                continue
            if symbol and symbol != instrument.symbol:
                continue
            if sec_type and sec_type != instrument.sec_type:
                continue
            if currency and currency != instrument.currency:
                continue
            matches.append(instrument)
        return matches

    def contract_details(self, contract: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                **instrument.contract(),
                "longName": instrument.long_name,
                "marketName": instrument.symbol,
                "minTick": instrument.min_tick,
                "orderTypes": ",".join(ORDER_TYPES),
                "validExchanges": f"SMART,{instrument.primary_exchange}",
                "timeZoneId": "US/Eastern",
                "industry": instrument.industry,
                "category": instrument.category,
            }
            for instrument in self.find_instruments(contract)
        ]

    def search_symbols(self, query: str) -> list[dict[str, Any]]:
        needle = query.strip().upper()
        return [
            {
                **instrument.contract(),
                "description": instrument.long_name,
                "derivativeSecTypes": ["OPT", "WAR"],
            }
            for instrument in INSTRUMENTS
            if needle and (instrument.symbol.startswith(needle) or needle in instrument.long_name)
        ]

    # -- reading --------------------------------------------------------------------------------

    def open_orders(self, account: str | None = None, *, include_all: bool = True) -> list[dict[str, Any]]:
        return [
            order_listing(order)
            for order in self.orders.values()
            if order.is_active
            and (account in (None, "") or order.account == account)
            and (include_all or order.client_id == API_CLIENT_ID)
        ]

    def _positions_of(self, account: str) -> list[tuple[Instrument, Position]]:
        by_id = {instrument.con_id: instrument for instrument in INSTRUMENTS}
        return [
            (by_id[con_id], position)
            for (owner, con_id), position in self.positions.items()
            if owner == account and position.quantity
        ]

    def position_rows(self, account: str) -> list[dict[str, Any]]:
        rows = []
        for instrument, position in self._positions_of(account):
            value = position.quantity * instrument.price
            rows.append(
                {
                    "symbol": instrument.symbol,
                    "secType": instrument.sec_type,
                    "exchange": instrument.exchange,
                    "currency": instrument.currency,
                    "conId": instrument.con_id,
                    "position": position.quantity,
                    "avgCost": position.avg_cost,
                    "marketPrice": instrument.price,
                    "marketValue": round(value, 2),
                    "unrealizedPnl": round(value - position.quantity * position.avg_cost, 2),
                    "realizedPnl": None,
                }
            )
        return rows

    def balances(self, account: str) -> dict[str, float]:
        gross = sum(abs(p.quantity) * i.price for i, p in self._positions_of(account))
        net_liquidation = self.cash[account] + sum(p.quantity * i.price for i, p in self._positions_of(account))
        return _balances(self.cash[account], gross, net_liquidation)

    def account_summary(self, account: str) -> list[dict[str, Any]]:
        items = [{"tag": "AccountType", "value": "INDIVIDUAL", "currency": None, "account": account}]
        for tag, value in self.balances(account).items():
            currency = None if tag == "Cushion" else "USD"
            items.append({"tag": tag, "value": f"{value:.2f}", "currency": currency, "account": account})
        return items

    def what_if(self, request: OrderRequest) -> dict[str, Any] | None:
        """IBKR's what-if OrderState for `request`: margin before, change and after, and commission."""
        if request.instrument is None:
            return None
        instrument, account = request.instrument, request.account
        price = _reference_price(request.order_type, request.lmt_price, request.aux_price, instrument.price)
        signed = request.total_quantity if request.action == "BUY" else -request.total_quantity
        commission = commission_for(request.total_quantity, price)
        before = self.balances(account)
        held = self.positions.get((account, instrument.con_id), Position(0, 0)).quantity
        gross_after = (
            before["GrossPositionValue"] - abs(held) * instrument.price + abs(held + signed) * instrument.price
        )
        # Like IBKR's what-if, equity moves by the commission only, not by marking the fill to market.
        after = _balances(
            self.cash[account] - signed * price - commission,
            gross_after,
            before["NetLiquidation"] - commission,
        )
        state: dict[str, Any] = {"status": "PreSubmitted"}
        for tag, name in (
            ("InitMarginReq", "initMargin"),
            ("MaintMarginReq", "maintMargin"),
            ("EquityWithLoanValue", "equityWithLoan"),
        ):
            state[f"{name}Before"] = f"{before[tag]:.2f}"
            state[f"{name}Change"] = f"{after[tag] - before[tag]:.2f}"
            state[f"{name}After"] = f"{after[tag]:.2f}"
        state.update(
            commission=commission,
            minCommission=commission,
            maxCommission=commission,
            commissionCurrency=instrument.currency,
            warningText=None if after["AvailableFunds"] >= 0 else "Insufficient equity for this order",
        )
        return state

    # -- acting ---------------------------------------------------------------------------------

    def validate_order(self, contract: Mapping[str, Any], order: Mapping[str, Any]) -> OrderRequest:
        """Check an `order` argument as the real server and TWS would, raising INVALID_ARGUMENT."""
        missing = sorted(name for name in ("action", "totalQuantity", "orderType") if not order.get(name))
        if missing:
            raise invalid_argument(f"order missing required field(s): {', '.join(missing)}")
        action = str(order["action"]).strip().upper()
        if action not in ("BUY", "SELL"):
            raise invalid_argument("order action must be BUY or SELL")
        order_type = str(order["orderType"]).strip().upper()
        if order_type not in ORDER_TYPES:
            raise invalid_argument(f"orderType must be one of {', '.join(ORDER_TYPES)}")
        quantity = _number(order, "totalQuantity")
        if quantity is None or quantity <= 0:
            raise invalid_argument("order totalQuantity must be a positive number")
        lmt_price, aux_price = _number(order, "lmtPrice"), _number(order, "auxPrice")
        if order_type in ("LMT", "STP LMT") and not (lmt_price and lmt_price > 0):
            raise invalid_argument(f"{order_type} order requires a positive lmtPrice")
        if order_type in ("STP", "STP LMT") and not (aux_price and aux_price > 0):
            raise invalid_argument(f"{order_type} order requires a positive auxPrice (the stop price)")
        tif = str(order.get("tif") or "DAY").strip().upper()
        if tif not in TIFS:
            raise invalid_argument(f"tif must be one of {', '.join(TIFS)}")
        parent_id = int(_number(order, "parentId") or 0)
        if parent_id and parent_id not in self.orders:
            raise invalid_argument(f"parentId {parent_id} is not a known order")
        account = self.resolve_account(order.get("account"))
        matches = self.find_instruments(contract)
        return OrderRequest(
            contract_input=contract,
            instrument=matches[0] if len(matches) == 1 else None,
            account=account,
            action=action,
            total_quantity=quantity,
            order_type=order_type,
            lmt_price=lmt_price if order_type in ("LMT", "STP LMT") else None,
            aux_price=aux_price if order_type in ("STP", "STP LMT") else None,
            tif=tif,
            parent_id=parent_id,
            oca_group=str(order.get("ocaGroup") or ""),
        )

    def place(self, request: OrderRequest, *, transmit: bool) -> Order:
        order = self._new_order(request, API_CLIENT_ID, transmit=transmit)
        if transmit and order.order_type == "MKT" and order.status == "Submitted":
            self.fill(order.order_id)
        return order

    def cancel(self, order_id: int) -> Order:
        """Cancel one order and the children it holds; counted in `cancel_calls`."""
        order = self.orders.get(order_id)
        if order is None:
            raise invalid_argument(f"no order with orderId {order_id}")
        if not order.is_active:
            raise invalid_argument(f"order {order_id} cannot be cancelled: its status is {order.status}")
        self.cancel_calls += 1
        self._cancel(order, "cancelled by request")
        for child in self.orders.values():
            if child.parent_id == order_id and child.is_active:
                self._cancel(child, f"parent order {order_id} cancelled")
        return order

    def global_cancel(self) -> list[int]:
        self.global_cancel_calls += 1
        cancelled = [order for order in self.orders.values() if order.is_active]
        for order in cancelled:
            self._cancel(order, "global cancel")
        return [order.order_id for order in cancelled]

    def _cancel(self, order: Order, message: str) -> None:
        order.status = "Cancelled"
        self._log(order, message)

    def fill(self, order_id: int, quantity: float | None = None, price: float | None = None) -> Order:
        """Execute some or all of an order, as the market would while a cancel waits for approval."""
        order = self.orders.get(order_id)
        if order is None or not order.is_active:
            raise invalid_argument(f"order {order_id} is not working and cannot fill")
        quantity = order.remaining_quantity if quantity is None else min(quantity, order.remaining_quantity)
        price = order.reference_price() if price is None else price
        done = order.filled_quantity * order.avg_fill_price
        order.filled_quantity += quantity
        order.avg_fill_price = round((done + quantity * price) / order.filled_quantity, 4)
        order.fills.append(
            {"execId": f"0000e0d5.{self._next_exec_id:08d}.01.01", "time": self.now(), "shares": quantity}
            | {"price": price, "side": "BOT" if order.action == "BUY" else "SLD"}
        )
        self._next_exec_id += 1
        self._apply_fill(order, quantity if order.action == "BUY" else -quantity, price)
        if order.remaining_quantity <= 0:
            order.status = "Filled"
            self._log(order, f"filled {quantity:g} @ {price:g}")
            for other in self.orders.values():
                if other.parent_id == order_id and other.is_active:
                    other.status = _working_status(other.order_type)
                    self._log(other, f"parent order {order_id} filled")
                elif order.oca_group and other.oca_group == order.oca_group and other.is_active:
                    self._cancel(other, f"OCA group {order.oca_group}: order {order_id} filled")
        else:
            self._log(order, f"partially filled {quantity:g} @ {price:g}")
        return order

    def _apply_fill(self, order: Order, signed: float, price: float) -> None:
        key = (order.account, order.instrument.con_id)
        position = self.positions.setdefault(key, Position(0, 0))
        commission = commission_for(signed, price)
        self.cash[order.account] -= signed * price + commission
        held = position.quantity
        if held == 0 or (held > 0) == (signed > 0):
            position.avg_cost = round((abs(held) * position.avg_cost + abs(signed) * price) / abs(held + signed), 4)
        else:
            closed = min(abs(signed), abs(held))
            self.realized_pnl[order.account] += (price - position.avg_cost) * closed * (1 if held > 0 else -1)
            if abs(signed) > abs(held):
                position.avg_cost = price
        position.quantity = held + signed
        if position.quantity == 0:
            del self.positions[key]

    def trade_snapshot(self, order: Order) -> dict[str, Any]:
        """The `trade` object the real server returns from place and cancel (an ib_async Trade)."""
        return {
            "contract": order.instrument.contract(),
            "order": {
                "orderId": order.order_id,
                "clientId": order.client_id,
                "permId": order.perm_id,
                "action": order.action,
                "totalQuantity": order.total_quantity,
                "orderType": order.order_type,
                "lmtPrice": order.lmt_price,
                "auxPrice": order.aux_price,
                "tif": order.tif,
                "account": order.account,
                "parentId": order.parent_id,
                "ocaGroup": order.oca_group,
                "transmit": order.transmit,
            },
            "orderStatus": {
                "orderId": order.order_id,
                "status": order.status,
                "filled": order.filled_quantity,
                "remaining": order.remaining_quantity,
                "avgFillPrice": order.avg_fill_price,
                "permId": order.perm_id,
                "parentId": order.parent_id,
                "clientId": order.client_id,
            },
            "fills": [dict(fill) for fill in order.fills],
            "log": [dict(entry) for entry in order.log],
            "advancedError": None,
            "isDone": not order.is_active,
        }


def _reference_price(order_type: str, lmt_price: float | None, aux_price: float | None, market: float) -> float:
    """The price a what-if, or a fill nobody priced, assumes for an order."""
    if order_type in ("LMT", "STP LMT") and lmt_price is not None:
        return lmt_price
    if order_type == "STP" and aux_price is not None:
        return aux_price
    return market


def _working_status(order_type: str) -> str:
    # IBKR simulates stops, so they wait as PreSubmitted until triggered.
    return "PreSubmitted" if order_type == "STP" else "Submitted"


def _balances(cash: float, gross: float, net_liquidation: float) -> dict[str, float]:
    init_margin = gross * INITIAL_MARGIN_RATE
    maint_margin = gross * MAINTENANCE_MARGIN_RATE
    available = net_liquidation - init_margin
    excess = net_liquidation - maint_margin
    return {
        "NetLiquidation": net_liquidation,
        "TotalCashValue": cash,
        "GrossPositionValue": gross,
        "EquityWithLoanValue": net_liquidation,
        "InitMarginReq": init_margin,
        "MaintMarginReq": maint_margin,
        "AvailableFunds": available,
        "ExcessLiquidity": excess,
        # Reg T overnight buying power: available funds at 2:1.
        "BuyingPower": max(available, 0.0) / INITIAL_MARGIN_RATE,
        "Cushion": excess / net_liquidation if net_liquidation else 0.0,
    }


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise invalid_argument(f"order {key} must be a number") from None
    if number != number:
        raise invalid_argument(f"order {key} must be a number")
    return number


def order_listing(order: Order) -> dict[str, Any]:
    """One order as `ibkr_get_open_orders` lists it."""
    return {
        "orderId": order.order_id,
        "permId": order.perm_id,
        "action": order.action,
        "totalQuantity": order.total_quantity,
        "filledQuantity": order.filled_quantity,
        "remainingQuantity": order.remaining_quantity,
        "orderType": order.order_type,
        "lmtPrice": order.lmt_price,
        "auxPrice": order.aux_price,
        "tif": order.tif,
        "status": order.status,
        "account": order.account,
        "parentId": order.parent_id,
        "ocaGroup": order.oca_group,
        "contract": order.instrument.contract(),
    }


def order_snapshot(book: PaperBook, order_id: int) -> dict[str, Any] | None:
    """An order in the open-orders shape whatever its status, or None when the book has no such id."""
    order = book.orders.get(order_id)
    return None if order is None else order_listing(order)
