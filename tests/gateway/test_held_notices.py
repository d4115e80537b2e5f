"""Held calls keep hearing that they are waiting, each about its own request, on one shared beat."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from approvals.durations import format_duration, parse_duration
from tests.harness import running_gateway, wait_for

ERAS = ["legacy", "auto"]


@pytest.mark.parametrize("mode", ERAS)
async def test_every_held_call_keeps_getting_its_own_waiting_notices_until_it_is_decided(
    tmp_path: Path, database_url: str, mode: str
) -> None:
    orders = [1001, 1003, 1005]
    async with running_gateway(tmp_path, database_url) as h, h.agent(mode=mode) as agent:
        notices: dict[int, list[str]] = {order: [] for order in orders}
        results: dict[int, Any] = {}

        async def call(order: int) -> None:
            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                notices[order].append(message or "")

            results[order] = await agent.call_tool(
                "ibkr_cancel_order", {"orderId": order, "confirm": True}, progress_callback=on_progress
            )

        async with anyio.create_task_group() as tg:
            for order in orders:
                tg.start_soon(call, order)
            requests = await h.pending(len(orders))
            ids = {r["arguments"]["orderId"]: r["id"] for r in requests}
            # Not just the first notice: the beat comes round again for every call still held.
            await wait_for(lambda: all(sum("Waiting for approval" in m for m in notices[o]) >= 3 for o in orders))
            assert results == {}, "nobody decided yet: every call is still held"
            for order in orders:
                waiting = [m for m in notices[order] if "Waiting for approval" in m]
                assert all(ids[order] in m for m in waiting), "each call hears about its own request"
            for order in orders:
                response = await h.api().post(f"/api/approvals/{ids[order]}/approve", json={})
                assert response.status_code == 200, response.text

        for order in orders:
            assert not results[order].is_error, results[order]
        assert h.book.cancel_calls == len(orders), "every approved call was forwarded once"


@pytest.mark.parametrize("mode", ERAS)
async def test_a_held_calls_notices_count_down_to_its_requests_expiry(
    tmp_path: Path, database_url: str, mode: str
) -> None:
    async with running_gateway(tmp_path, database_url) as h, h.agent(mode=mode) as agent:
        heard: list[tuple[datetime, str]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            if message and "Waiting for approval" in message:
                heard.append((datetime.now(UTC), message))

        async with anyio.create_task_group() as tg:
            tg.start_soon(
                partial(
                    agent.call_tool,
                    "ibkr_cancel_order",
                    {"orderId": 1001, "confirm": True},
                    progress_callback=on_progress,
                )
            )
            [request] = await h.pending()
            await wait_for(lambda: len(heard) >= 8)  # over a second apart, first to last
            response = await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
            assert response.status_code == 200, response.text

    expires = datetime.fromisoformat(request["expires_at"])
    left = []
    for at, message in heard[:8]:
        assert f"expires at {expires:%H:%M:%S} UTC, in " in message
        said = message.partition(", in ")[2].partition(". Inbox")[0]
        assert format_duration(parse_duration(said)) == said, "the time left reads as every other duration"
        # Never more than what was really left when the notice arrived (a second's rounding aside).
        assert parse_duration(said) <= (expires - at).total_seconds() + 1
        left.append(parse_duration(said))
    assert left == sorted(left, reverse=True) and left[0] > left[-1], "each notice has less time left"
