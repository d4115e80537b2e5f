"""A quota means the same with three replicas as with one: real `countersign serve` processes on PostgreSQL.

The demo policy allows 10 `ibkr_preview_order` calls a minute per agent. Spread over three
replicas, one after the other or all at once, exactly 10 pass; and quota parked on a request by
a replica that then died comes back when another replica rejects the request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from gateway.demo import DEMO_POLICY
from tests.replicas.replicas_support_shared import agent, approver_api, logs, replicas

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.filterwarnings("ignore::ResourceWarning")]

PREVIEW = {
    "contract": {"symbol": "AAPL", "secType": "STK", "exchange": "SMART", "currency": "USD"},
    "order": {"action": "BUY", "totalQuantity": 10, "orderType": "LMT", "lmtPrice": 150},
}
CANCEL = {"orderId": 1001, "confirm": True}


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def tally(results: list[types.CallToolResult]) -> tuple[int, int]:
    allowed = sum(not r.is_error for r in results)
    limited = sum(r.is_error and text(r).startswith("[RATE LIMITED]") for r in results)
    return allowed, limited


async def test_thirty_calls_spread_over_three_replicas_get_exactly_the_ten_a_minute_the_policy_allows(
    tmp_path: Path, postgres_url: str
) -> None:
    async with replicas(tmp_path, postgres_url, count=3, policy=DEMO_POLICY) as running:
        results: list[types.CallToolResult] = []
        async with agent(running[0].base_url) as a, agent(running[1].base_url) as b, agent(running[2].base_url) as c:
            for n in range(30):
                results.append(await (a, b, c)[n % 3].call_tool("ibkr_preview_order", PREVIEW))
        assert tally(results) == (10, 20), [text(r) for r in results]
        limited = next(r for r in results if r.is_error)
        assert "at most 10 calls per minute per agent" in text(limited), text(limited)
        # The tenth slot was taken on one replica; the eleventh call, on another, was the first refused.
        assert [not r.is_error for r in results] == [True] * 10 + [False] * 20, logs(running)


async def test_a_race_of_calls_on_three_replicas_at_once_never_admits_more_than_the_quota(
    tmp_path: Path, postgres_url: str
) -> None:
    async with replicas(tmp_path, postgres_url, count=3, policy=DEMO_POLICY) as running:
        results: list[types.CallToolResult] = []

        async def burst(base_url: str) -> None:
            async with agent(base_url) as client, anyio.create_task_group() as tg:

                async def one() -> None:
                    results.append(await client.call_tool("ibkr_preview_order", PREVIEW))

                for _ in range(10):
                    tg.start_soon(one)

        async with anyio.create_task_group() as tg:
            for replica in running:
                tg.start_soon(burst, replica.base_url)
        assert len(results) == 30
        assert tally(results) == (10, 20), [text(r) for r in results]


def cancel_once_an_hour(**approval: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(DEMO_POLICY))
    tool = document["tools"]["ibkr_cancel_order"]
    tool["approval"].update(approval)
    tool["limits"] = [{"counter": "cancels", "window": "hour", "max": 1, "scope": "grant"}]
    return document


async def test_quota_parked_by_a_replica_that_died_comes_back_when_another_replica_rejects_the_request(
    tmp_path: Path, postgres_url: str
) -> None:
    policy = cancel_once_an_hour(max_hold="0.5s")
    async with replicas(tmp_path, postgres_url, count=2, policy=policy) as (first, second):
        async with agent(first.base_url) as client:
            pending = await client.call_tool("ibkr_cancel_order", CANCEL)
            assert text(pending).startswith("[APPROVAL PENDING]"), text(pending)
            approval_id = pending.structured_content["approval_id"]  # type: ignore[index]
        first.kill()
        async with agent(second.base_url) as client, approver_api(second.base_url) as api:
            # One cancel an hour, and it is parked on the pending request: the quota is spent.
            limited = await client.call_tool("ibkr_cancel_order", {"orderId": 1002, "confirm": True})
            assert text(limited).startswith("[RATE LIMITED]"), text(limited)
            rejected = await api.post(f"/api/approvals/{approval_id}/reject", json={"reason": "not today"})
            assert rejected.status_code == 200, rejected.text
            # The replica that parked the quota is gone; the one that heard the rejection gave it back.
            with anyio.fail_after(10):
                while True:
                    again = await client.call_tool("ibkr_cancel_order", {"orderId": 1002, "confirm": True})
                    if not text(again).startswith("[RATE LIMITED]"):
                        break
                    await anyio.sleep(0.2)
            assert text(again).startswith("[APPROVAL PENDING]"), text(again)
