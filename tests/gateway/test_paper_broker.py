"""The paper broker through a real MCP client: in-process first, then over stdio and HTTP once each."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path
from typing import Any

import httpx2
import mcp
import mcp_types as types
import pytest

from gateway.paper_broker import PaperBook, build_server, order_snapshot, serve_http

REPO_ROOT = Path(__file__).resolve().parents[2]
LIMIT_BUY = {"action": "BUY", "totalQuantity": 10, "orderType": "LMT", "lmtPrice": 180.0}
AAPL = {"symbol": "AAPL", "secType": "STK", "exchange": "SMART", "currency": "USD"}


@pytest.fixture
def book() -> PaperBook:
    return PaperBook()


def connect(book: PaperBook) -> mcp.Client:
    # Entered inline rather than in a fixture: pytest-asyncio tears fixtures down in another task,
    # which the client's anyio task group refuses.
    return mcp.Client(build_server(book))


async def call(client: mcp.Client, name: str, **arguments: Any) -> types.CallToolResult:
    result = await client.call_tool(name, arguments)
    # Every answer, error or not, carries the same JSON as text for clients that ignore structuredContent.
    assert isinstance(result.content[0], types.TextContent)
    assert json.loads(result.content[0].text) == result.structured_content
    return result


def error_type(result: types.CallToolResult) -> str:
    assert result.is_error
    error = result.structured_content["error"]
    assert set(error) == {"type", "message", "retryable"}
    return str(error["type"])


def open_order_ids(result: types.CallToolResult) -> list[int]:
    return [order["orderId"] for order in result.structured_content["orders"]]


# -- catalogue --------------------------------------------------------------------------------------


async def test_the_tool_list_mirrors_the_ibkr_server_names_and_schemas(book: PaperBook) -> None:
    async with connect(book) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}

    assert {
        "ibkr_get_open_orders",
        "ibkr_get_portfolio",
        "ibkr_get_account_summary",
        "ibkr_preview_order",
        "ibkr_place_order",
        "ibkr_cancel_order",
        "ibkr_global_cancel",
        "ibkr_search_symbols",
        "ibkr_get_contract_details",
    } <= set(tools)
    cancel = tools["ibkr_cancel_order"].input_schema
    assert cancel["properties"]["orderId"]["type"] == "integer"
    assert (cancel["properties"]["confirm"]["type"], cancel["properties"]["confirm"]["default"]) == ("boolean", False)
    assert cancel["required"] == ["orderId"]
    place = tools["ibkr_place_order"].input_schema["properties"]
    assert [place[name]["default"] for name in ("confirm", "dry_run", "transmit")] == [False, True, False]
    assert tools["ibkr_get_open_orders"].input_schema["properties"]["include_all"]["default"] is True
    assert tools["ibkr_cancel_order"].description == "Cancel a single IBKR order by orderId. Requires confirm=true."


async def test_reading_tools_are_marked_read_only_and_acting_tools_destructive(book: PaperBook) -> None:
    async with connect(book) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}

    for name in ("ibkr_get_open_orders", "ibkr_get_portfolio", "ibkr_preview_order", "ibkr_search_symbols"):
        annotations = tools[name].annotations
        assert annotations is not None and annotations.read_only_hint is True
    for name in ("ibkr_place_order", "ibkr_cancel_order", "ibkr_global_cancel"):
        annotations = tools[name].annotations
        assert annotations is not None
        assert (annotations.read_only_hint, annotations.destructive_hint) == (False, True)
    assert tools["ibkr_cancel_order"].title == "Cancel Order"


async def test_the_legacy_handshake_era_serves_the_same_tools(book: PaperBook) -> None:
    async with mcp.Client(build_server(book), mode="legacy") as legacy:
        assert legacy.protocol_version == "2025-11-25"
        result = await call(legacy, "ibkr_get_open_orders")

    assert 1004 in open_order_ids(result)


# -- reading ----------------------------------------------------------------------------------------


async def test_open_orders_list_the_seeded_orders_with_bracket_legs_and_partial_fills(book: PaperBook) -> None:
    async with connect(book) as client:
        result = await call(client, "ibkr_get_open_orders")

    assert not result.is_error
    orders = {order["orderId"]: order for order in result.structured_content["orders"]}
    assert sorted(orders) == [1001, 1003, 1004, 1005, 1006]
    stop = orders[1004]
    assert (stop["action"], stop["orderType"], stop["auxPrice"], stop["lmtPrice"]) == ("SELL", "STP", 395.0, None)
    assert (stop["parentId"], stop["ocaGroup"]) == (1002, "OCA_1002")
    assert stop["contract"]["symbol"] == "MSFT"
    assert set(stop["contract"]) >= {"conId", "symbol", "secType", "exchange", "currency"}
    partial = orders[1005]
    assert (partial["totalQuantity"], partial["filledQuantity"], partial["remainingQuantity"]) == (200, 80, 120)
    assert orders[1001]["permId"] != orders[1003]["permId"]


async def test_open_orders_filter_by_account_and_by_this_client(book: PaperBook) -> None:
    async with connect(book) as client:
        second = await call(client, "ibkr_get_open_orders", account="DU1000002")
        ours = await call(client, "ibkr_get_open_orders", include_all=False)

    assert open_order_ids(second) == [1006]
    assert open_order_ids(ours) == [1001, 1003, 1004]


async def test_portfolio_and_account_summary_describe_the_default_account(book: PaperBook) -> None:
    async with connect(book) as client:
        portfolio = await call(client, "ibkr_get_portfolio")
        summary = await call(client, "ibkr_get_account_summary")

    assert portfolio.structured_content["account"] == "DU1000001"
    held = {row["symbol"]: row["position"] for row in portfolio.structured_content["positions"]}
    assert held == {"AAPL": 300, "TSLA": 120, "MSFT": 50}
    tags = {item["tag"]: item["value"] for item in summary.structured_content["items"]}
    assert float(tags["NetLiquidation"]) == portfolio.structured_content["totals"]["netLiquidation"]
    assert float(tags["BuyingPower"]) > 0


async def test_search_and_contract_details_resolve_only_known_contracts(book: PaperBook) -> None:
    async with connect(book) as client:
        matches = await call(client, "ibkr_search_symbols", query="micro")
        details = await call(client, "ibkr_get_contract_details", contract={"conId": 265598})
        unknown = await call(client, "ibkr_get_contract_details", contract={"symbol": "ZZZZ"})
        empty = await call(client, "ibkr_get_contract_details", contract={})

    assert [match["symbol"] for match in matches.structured_content["matches"]] == ["MSFT"]
    assert details.structured_content["details"][0]["longName"] == "APPLE INC"
    assert unknown.structured_content["details"] == [] and unknown.structured_content["notes"]
    assert error_type(empty) == "INVALID_ARGUMENT"


# -- cancelling -------------------------------------------------------------------------------------


async def test_cancel_without_confirm_is_refused_and_changes_nothing(book: PaperBook) -> None:
    async with connect(book) as client:
        result = await call(client, "ibkr_cancel_order", orderId=1004)

    assert error_type(result) == "CONFIRM_REQUIRED"
    assert result.structured_content["error"]["retryable"] is False
    assert book.cancel_calls == 0
    assert (order_snapshot(book, 1004) or {})["status"] == "PreSubmitted"


async def test_cancel_with_confirm_cancels_the_order_exactly_once(book: PaperBook) -> None:
    async with connect(book) as client:
        result = await call(client, "ibkr_cancel_order", orderId=1004, confirm=True)

        assert not result.is_error
        assert result.structured_content["orderId"] == 1004
        assert result.structured_content["trade"]["orderStatus"]["status"] == "Cancelled"
        assert book.cancel_calls == 1
        assert (order_snapshot(book, 1004) or {})["status"] == "Cancelled"
        assert 1004 not in open_order_ids(await call(client, "ibkr_get_open_orders"))
        assert book.calls[0] == ("ibkr_cancel_order", {"orderId": 1004, "confirm": True})


async def test_cancelling_an_unknown_order_id_is_an_invalid_argument(book: PaperBook) -> None:
    async with connect(book) as client:
        result = await call(client, "ibkr_cancel_order", orderId=4242, confirm=True)

    assert error_type(result) == "INVALID_ARGUMENT"
    assert "4242" in result.structured_content["error"]["message"]
    assert book.cancel_calls == 0


async def test_cancelling_a_filled_or_already_cancelled_order_is_an_error(book: PaperBook) -> None:
    async with connect(book) as client:
        filled = await call(client, "ibkr_cancel_order", orderId=1002, confirm=True)
        await call(client, "ibkr_cancel_order", orderId=1001, confirm=True)
        again = await call(client, "ibkr_cancel_order", orderId=1001, confirm=True)

    assert error_type(filled) == "INVALID_ARGUMENT" and "Filled" in filled.structured_content["error"]["message"]
    assert error_type(again) == "INVALID_ARGUMENT" and "Cancelled" in again.structured_content["error"]["message"]
    assert book.cancel_calls == 1


@pytest.mark.parametrize("order_id", ["not-a-number", 10.5, None, True])
async def test_an_order_id_that_is_not_an_integer_is_an_invalid_argument(book: PaperBook, order_id: Any) -> None:
    async with connect(book) as client:
        result = await call(client, "ibkr_cancel_order", orderId=order_id, confirm=True)

    assert error_type(result) == "INVALID_ARGUMENT"


async def test_an_order_that_fills_while_its_cancel_waits_can_no_longer_be_cancelled(book: PaperBook) -> None:
    async with connect(book) as client:
        book.fill(1001)
        result = await call(client, "ibkr_cancel_order", orderId=1001, confirm=True)

    assert error_type(result) == "INVALID_ARGUMENT"
    assert (order_snapshot(book, 1001) or {})["status"] == "Filled"
    assert book.cancel_calls == 0


async def test_filling_one_leg_of_an_oca_group_cancels_the_other(book: PaperBook) -> None:
    book.fill(1003)

    assert (order_snapshot(book, 1003) or {})["status"] == "Filled"
    assert (order_snapshot(book, 1004) or {})["status"] == "Cancelled"
    assert order_snapshot(book, 999) is None


async def test_global_cancel_needs_confirm_and_then_cancels_every_working_order(book: PaperBook) -> None:
    async with connect(book) as client:
        refused = await call(client, "ibkr_global_cancel")
        done = await call(client, "ibkr_global_cancel", confirm=True)

        assert error_type(refused) == "CONFIRM_REQUIRED"
        assert done.structured_content["status"] == "submitted"
        assert open_order_ids(await call(client, "ibkr_get_open_orders")) == []
        assert book.global_cancel_calls == 1


async def test_with_trading_disabled_acting_tools_answer_trading_disabled() -> None:
    book = PaperBook(trading_enabled=False)
    async with mcp.Client(build_server(book)) as client:
        cancel = await call(client, "ibkr_cancel_order", orderId=1001, confirm=True)
        place = await call(client, "ibkr_place_order", contract=AAPL, order=LIMIT_BUY, dry_run=False, confirm=True)
        global_cancel = await call(client, "ibkr_global_cancel", confirm=True)
        preview = await call(client, "ibkr_preview_order", contract=AAPL, order=LIMIT_BUY)
        dry_run = await call(client, "ibkr_place_order", contract=AAPL, order=LIMIT_BUY)

    assert [error_type(result) for result in (cancel, place, global_cancel)] == ["TRADING_DISABLED"] * 3
    assert not preview.is_error and not dry_run.is_error
    assert book.cancel_calls == 0 and (order_snapshot(book, 1001) or {})["status"] == "Submitted"


async def test_a_lost_tws_connection_is_a_retryable_error(book: PaperBook) -> None:
    async with connect(book) as client:
        book.tws_connected = False
        result = await call(client, "ibkr_get_open_orders")

    assert error_type(result) == "TWS_CONNECTION_FAILED"
    assert result.structured_content["error"]["retryable"] is True


async def test_an_unknown_tool_is_a_protocol_error(book: PaperBook) -> None:
    async with connect(book) as client:
        with pytest.raises(mcp.MCPError, match="Unknown tool"):
            await client.call_tool("ibkr_sell_everything", {})


# -- previewing and placing -------------------------------------------------------------------------


async def test_preview_reports_commission_and_margin_impact_without_placing(book: PaperBook) -> None:
    async with connect(book) as client:
        before = len(book.orders)
        result = await call(client, "ibkr_preview_order", contract=AAPL, order=LIMIT_BUY)

    state = result.structured_content["orderState"]
    assert state["commission"] == 1.0 and state["commissionCurrency"] == "USD"
    assert float(state["initMarginChange"]) == pytest.approx(10 * 189.50 * 0.5)
    assert float(state["initMarginAfter"]) > float(state["initMarginBefore"])
    assert len(book.orders) == before


async def test_a_dry_run_place_returns_a_preview_and_adds_no_order(book: PaperBook) -> None:
    async with connect(book) as client:
        before = len(book.orders)
        result = await call(client, "ibkr_place_order", contract=AAPL, order=LIMIT_BUY)

    assert not result.is_error
    assert result.structured_content["trade"] is None
    assert "dry_run=true; order not sent" in result.structured_content["notes"]
    assert result.structured_content["preview"]["commission"] == 1.0
    assert len(book.orders) == before


async def test_a_live_place_needs_confirm(book: PaperBook) -> None:
    async with connect(book) as client:
        before = len(book.orders)
        result = await call(client, "ibkr_place_order", contract=AAPL, order=LIMIT_BUY, dry_run=False)

    assert error_type(result) == "CONFIRM_REQUIRED"
    assert len(book.orders) == before


async def test_a_live_place_adds_an_order_that_can_then_be_cancelled(book: PaperBook) -> None:
    async with connect(book) as client:
        placed = await call(client, "ibkr_place_order", contract=AAPL, order=LIMIT_BUY, dry_run=False, confirm=True)

        trade = placed.structured_content["trade"]
        order_id = trade["order"]["orderId"]
        assert order_id == 1007
        # transmit defaults to false, so TWS holds the order rather than working it.
        assert trade["orderStatus"]["status"] == "PendingSubmit"
        assert order_id in open_order_ids(await call(client, "ibkr_get_open_orders"))
        cancelled = await call(client, "ibkr_cancel_order", orderId=order_id, confirm=True)
        assert not cancelled.is_error and book.cancel_calls == 1


async def test_a_transmitted_market_order_fills_and_moves_the_position(book: PaperBook) -> None:
    async with connect(book) as client:
        market = {"action": "SELL", "totalQuantity": 100, "orderType": "MKT"}
        placed = await call(
            client, "ibkr_place_order", contract=AAPL, order=market, dry_run=False, confirm=True, transmit=True
        )
        portfolio = await call(client, "ibkr_get_portfolio")

    assert placed.structured_content["trade"]["orderStatus"]["status"] == "Filled"
    held = {row["symbol"]: row["position"] for row in portfolio.structured_content["positions"]}
    assert held["AAPL"] == 200


@pytest.mark.parametrize(
    "order",
    [
        {"totalQuantity": 10, "orderType": "LMT", "lmtPrice": 1.0},
        {"action": "HOLD", "totalQuantity": 10, "orderType": "LMT", "lmtPrice": 1.0},
        {"action": "BUY", "totalQuantity": -5, "orderType": "MKT"},
        {"action": "BUY", "totalQuantity": 10, "orderType": "LMT"},
        {"action": "BUY", "totalQuantity": 10, "orderType": "STP"},
        {"action": "BUY", "totalQuantity": 10, "orderType": "PEG MID"},
        {"action": "BUY", "totalQuantity": 10, "orderType": "MKT", "account": "U999"},
    ],
)
async def test_bad_order_fields_are_invalid_arguments(book: PaperBook, order: dict[str, Any]) -> None:
    async with connect(book) as client:
        preview = await call(client, "ibkr_preview_order", contract=AAPL, order=order)
        place = await call(client, "ibkr_place_order", contract=AAPL, order=order, dry_run=False, confirm=True)

    assert error_type(preview) == error_type(place) == "INVALID_ARGUMENT"


async def test_an_unknown_contract_is_reported_as_not_qualified_like_the_real_server(book: PaperBook) -> None:
    async with connect(book) as client:
        result = await call(client, "ibkr_preview_order", contract={"symbol": "ZZZZ"}, order=LIMIT_BUY)

    assert result.structured_content["orderState"] is None
    assert result.structured_content["notes"] == ["contract not qualified: ZZZZ"]


# -- transports -------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_broker_serves_over_stdio_as_a_subprocess_and_writes_every_call_to_its_ledger(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    params = mcp.StdioServerParameters(
        command=sys.executable,
        args=["-m", "gateway.paper_broker", "--no-trading", "--ledger", str(ledger)],
        cwd=str(REPO_ROOT),
    )
    async with mcp.Client(params) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        orders = await call(client, "ibkr_get_open_orders")
        cancel = await call(client, "ibkr_cancel_order", orderId=1001, confirm=True)

    assert "ibkr_cancel_order" in names
    assert 1001 in open_order_ids(orders)
    assert error_type(cancel) == "TRADING_DISABLED"
    # Every call that reached the broker, refused or not, in order; listing tools is not a call.
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [(line["tool"], line["arguments"]) for line in lines] == [
        ("ibkr_get_open_orders", {}),
        ("ibkr_cancel_order", {"orderId": 1001, "confirm": True}),
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_the_broker_serves_stateless_streamable_http_with_a_health_check(book: PaperBook) -> None:
    port, ready = free_port(), asyncio.Event()
    server = asyncio.create_task(serve_http(port, book=book, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), timeout=10)
        async with httpx2.AsyncClient() as http:
            health = await http.get(f"http://127.0.0.1:{port}/health")
        async with mcp.Client(f"http://127.0.0.1:{port}/mcp") as modern:
            refused = await call(modern, "ibkr_cancel_order", orderId=1004)
        async with mcp.Client(f"http://127.0.0.1:{port}/mcp", mode="legacy") as legacy:
            cancelled = await call(legacy, "ibkr_cancel_order", orderId=1004, confirm=True)
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server

    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert error_type(refused) == "CONFIRM_REQUIRED"
    assert not cancelled.is_error
    assert book.cancel_calls == 1
