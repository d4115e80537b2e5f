"""Held calls made at once share their context lookup's read, and only within one agent.

Driven through real MCP clients in both protocol eras: the broker sits behind a gate that holds
every read of open orders until the test opens it, so the calls that arrive while the first read
is out are known to have joined it; the broker counts the reads it was sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from gateway.shared_lookups import SharedLookups
from tests.harness import OTHER_AGENT_TOKEN, Harness, running_gateway, seeing_bodies, wait_for

LOOKUP = b'"ibkr_get_open_orders"'


class GatedReads:
    """The broker's ASGI app, counting the reads of open orders and holding them while the gate is shut."""

    def __init__(self) -> None:
        self.reads = 0
        self.gate = anyio.Event()

    def __call__(self, app: Any) -> Any:
        async def hook(body: bytes) -> None:
            if LOOKUP in body:
                self.reads += 1
                await self.gate.wait()

        return seeing_bodies(app, hook)


def place(h: Harness, quantity: int) -> int:
    """A resting AAPL limit buy of `quantity` at 180 + quantity, placed on the paper book directly."""
    order = {"action": "BUY", "totalQuantity": quantity, "orderType": "LMT", "lmtPrice": 180.0 + quantity}
    return h.book.place(h.book.validate_order({"symbol": "AAPL"}, order), transmit=True).order_id


async def hold(h: Harness, order_ids: list[int], results: dict[int, types.CallToolResult], mode: str) -> None:
    async with h.agent(mode=mode) as agent, anyio.create_task_group() as tg:
        for order_id in order_ids:

            async def call(order_id: int = order_id) -> None:
                results[order_id] = await agent.call_tool("ibkr_cancel_order", {"orderId": order_id, "confirm": True})

            tg.start_soon(call)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_calls_held_at_once_share_one_read_and_each_request_shows_and_audits_its_own_order(
    tmp_path: Path, database_url: str, mode: str
) -> None:
    gated = GatedReads()
    async with running_gateway(tmp_path, database_url, broker_in_front=gated) as h:
        placed = [place(h, qty) for qty in (10, 20, 30)]
        lookups = h.gateway.calls.context.reads.lookups
        results: dict[int, types.CallToolResult] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold, h, placed, results, mode)
            # One read went out; the other two calls wait for its answer rather than sending their own.
            await wait_for(lambda: gated.reads == 1 and lookups.shared == 2)
            gated.gate.set()
            pending = await h.pending(3)
            assert gated.reads == 1
            by_order = {r["arguments"]["orderId"]: r for r in pending}
            assert sorted(by_order) == sorted(placed)
            for qty, order_id in zip((10, 20, 30), placed, strict=True):
                request = by_order[order_id]
                shown = (await h.api().get(f"/api/approvals/{request['id']}")).json()
                assert shown["title"] == f"Cancel BUY {qty} AAPL LMT {180.0 + qty:.2f}, order {order_id}"
                assert shown["context"][0]["value"]["quantity"] == qty
                # Every request has its own lookup on the record; two of them name the request whose read they shared.
                assert [e["kind"] for e in shown["events"]] == ["call.lookup", "request.created"]
            lookups_audited = [
                e
                for r in pending
                for e in await h.service.history.events(request_id=r["id"])
                if e.kind == "call.lookup"
            ]
            assert sorted(e.outcome for e in lookups_audited) == ["allowed"] * 3
            sent_by = {e.request_id for e in lookups_audited if "shared_from" not in e.detail}
            assert len(sent_by) == 1
            assert {e.detail["shared_from"] for e in lookups_audited if "shared_from" in e.detail} == sent_by

            # Another agent asking the same question at the same moment is never given this agent's answer.
            async with h.agent(OTHER_AGENT_TOKEN, mode=mode) as other, anyio.create_task_group() as theirs:

                async def call() -> None:
                    results[0] = await other.call_tool("ibkr_cancel_order", {"orderId": placed[0], "confirm": True})

                theirs.start_soon(call)
                bravo = await wait_for_request(h, "bravo")
                assert gated.reads == 2
                assert bravo["context"][0]["value"]["quantity"] == 10
                await h.api().post(f"/api/approvals/{bravo['id']}/reject", json={"reason": "not now"})
            assert results.pop(0).is_error

            for request in pending:
                await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
        for order_id in placed:
            assert not results[order_id].is_error, results[order_id]
            assert (results[order_id].structured_content or {}).get("orderId") == order_id


async def wait_for_request(h: Harness, agent: str) -> dict[str, Any]:
    with anyio.fail_after(15):
        while True:
            mine = [r for r in await h.pending(0) if r["agent"] == agent]
            if mine:
                return (await h.api().get(f"/api/approvals/{mine[0]['id']}")).json()
            await anyio.sleep(0.05)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _answer() -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text='{"orders": []}')])


async def test_a_read_that_took_long_answers_for_longer_and_a_failed_one_is_asked_again() -> None:
    clock = _Clock()
    lookups = SharedLookups(clock=clock)
    question = ("alpha", "ibkr", "ibkr_get_open_orders", "{}", 3.0)

    async def slow_read() -> types.CallToolResult:
        clock.now += 2.0  # the upstream took two seconds to answer
        return _answer()

    flight, sent = await lookups.ask(question, "apr_1", slow_read)
    assert sent and flight.answered
    # Four times as long as the read took (8 s from when it was sent), not just the one second.
    clock.now += 5.0
    shared, sent = await lookups.ask(question, "apr_2", slow_read)
    assert shared is flight and not sent
    clock.now += 2.0
    again, sent = await lookups.ask(question, "apr_3", slow_read)
    assert sent and again is not flight

    # No answer within the bound: the next lookup asks again.
    never = anyio.Event()

    async def stuck() -> types.CallToolResult:
        await never.wait()
        return _answer()

    late = ("alpha", "ibkr", "ibkr_get_open_orders", "{}", 0.05)
    timed_out, sent = await lookups.ask(late, "apr_4", stuck)
    assert sent and timed_out.result is None and timed_out.error is None
    _, sent = await lookups.ask(late, "apr_5", slow_read)
    assert sent

    # A read that failed is never given to a later lookup.
    async def broken() -> types.CallToolResult:
        raise OSError("connection refused")

    failing = ("alpha", "ibkr", "ibkr_get_open_orders", '{"x":1}', 3.0)
    failed, sent = await lookups.ask(failing, "apr_7", broken)
    assert sent and failed.error is not None
    _, sent = await lookups.ask(failing, "apr_8", slow_read)
    assert sent


async def test_an_answer_is_let_go_once_it_no_longer_serves_new_lookups() -> None:
    # A whole order book can be megabytes: once no new lookup may take it, it is not kept until the next prune.
    lookups = SharedLookups(fresh=0.05)
    question = ("alpha", "ibkr", "ibkr_get_open_orders", "{}", 3.0)

    async def read() -> types.CallToolResult:
        return _answer()

    flight, sent = await lookups.ask(question, "apr_1", read)
    assert sent and flight.answered and len(lookups) == 1
    await wait_for(lambda: len(lookups) == 0)
    again, sent = await lookups.ask(question, "apr_2", read)
    assert sent and again is not flight
