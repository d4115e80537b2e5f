"""The order a cancel names, described for an approver: facts and the warnings they must not miss."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.order_context import describe_order, describe_price

NOW = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)


def test_an_order_shows_the_warnings_an_approver_must_not_miss() -> None:
    stop = {"orderId": 1004, "orderType": "STP", "auxPrice": 395.0, "parentId": 1002, "ocaGroup": "OCA_1002"}
    assert any("protective stop" in w for w in describe_order(1004, stop, [stop], NOW).warnings)
    assert describe_price(stop) == "STP 395"
    parent = {"orderId": 7, "orderType": "LMT", "lmtPrice": 10.5, "totalQuantity": 200.0, "filledQuantity": 80.0}
    child = {"orderId": 8, "parentId": 7}
    warnings = describe_order(7, parent, [parent, child], NOW).warnings
    assert "also cancels its child orders (8)" in warnings[0]
    assert "Partly filled already: 80 of 200." in warnings[1]
    assert describe_price(parent) == "LMT 10.5"
    plain = {"orderId": 9, "orderType": "MKT"}
    assert describe_order(9, plain, [plain], NOW).warnings == ()


def test_an_order_is_described_as_labelled_facts() -> None:
    order = {
        "orderId": 1001,
        "action": "BUY",
        "totalQuantity": 100.0,
        "orderType": "LMT",
        "lmtPrice": 185.0,
        "tif": "DAY",
        "status": "Submitted",
        "account": "DU123",
        "contract": {"symbol": "AAPL", "secType": "STK", "exchange": "SMART", "currency": "USD"},
    }
    context = describe_order(1001, order, [order], NOW)
    facts = {f.label: f.value for f in context.facts}
    assert context.title == "Order 1001"
    assert facts["Instrument"] == "AAPL · STK · SMART · USD"
    assert facts["Side · quantity"] == "BUY 100"
    assert facts["Type · price"] == "LMT 185 · DAY"
    assert facts["Status"] == "Submitted"
