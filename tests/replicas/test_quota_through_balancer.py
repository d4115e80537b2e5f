"""A quota through the load balancer: 10 a minute means 10 a minute, however the calls are spread.

The cluster of `tests/replicas/cluster.py` (three `countersign serve` replicas on one PostgreSQL
database, HAProxy in front with deploy/haproxy.cfg) with a policy that allows 10 order previews
a minute per agent. 2026-era calls carry no session, so the balancer spreads them over the
replicas; each replica counts in the shared database.
"""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as types
import pytest

from tests.replicas.cluster import CLUSTER_POLICY, Cluster

pytestmark = pytest.mark.slow

PREVIEW_TOOL = "ibkr_preview_order"
PREVIEW = {
    "contract": {"symbol": "AAPL", "secType": "STK", "exchange": "SMART", "currency": "USD"},
    "order": {"action": "BUY", "totalQuantity": 10, "orderType": "LMT", "lmtPrice": 150},
}


@pytest.fixture(scope="module")
def cluster_options() -> dict[str, Any]:
    limit = [{"counter": "previews", "window": "minute", "max": 10, "scope": "grant"}]
    return {"policy": {**CLUSTER_POLICY, "tools": {**CLUSTER_POLICY["tools"], PREVIEW_TOOL: {"limits": limit}}}}


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


async def test_a_quota_of_ten_a_minute_allows_exactly_ten_calls_spread_over_three_replicas(cluster: Cluster) -> None:
    results: list[types.CallToolResult] = []
    answered_by: list[str] = []

    async def one_agent(count: int) -> None:
        seen: list[str] = []
        async with cluster.agent(mode="auto", calls_seen=seen) as agent:
            for _ in range(count):
                results.append(await agent.call_tool(PREVIEW_TOOL, PREVIEW))
        answered_by.extend(seen)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one_agent, 10)

    allowed = [r for r in results if not r.is_error]
    limited = [r for r in results if r.is_error]
    assert len(allowed) == 10, [text(r) for r in results]
    assert len(limited) == 20 and all(text(r).startswith("[RATE LIMITED]") for r in limited), [text(r) for r in limited]
    # The calls really were spread: more than one replica answered them.
    assert len(set(answered_by)) >= 2, answered_by
    assert len(cluster.ledger(PREVIEW_TOOL)) == 10
