"""MCP sessions through the load balancer: both protocol eras, through HAProxy with deploy/haproxy.cfg.

A 2025-era session lives in the replica that answered its `initialize`; the balancer learns the
session id from that response and keeps the session there. A 2026-era client has no session, so
any replica serves any of its calls. Without the stickiness lines, 2025-era sessions break: the
control test shows the configuration is what makes them work.
"""

from __future__ import annotations

from collections import Counter

import anyio
import mcp_types as types
import pytest
from mcp import MCPError

from tests.replicas.cluster import HAPROXY_CONFIG, READ_TOOL, REPLICAS, Cluster

pytestmark = pytest.mark.slow

CLIENTS = 5
CALLS_EACH = 20


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


async def test_a_hundred_passthrough_calls_from_2025_era_clients_meet_no_session_error(cluster: Cluster) -> None:
    before = len(cluster.ledger(READ_TOOL))
    answered: dict[int, list[str]] = {}
    failures: list[str] = []

    async def one_client(index: int) -> None:
        seen = answered.setdefault(index, [])
        async with cluster.agent(mode="legacy", seen=seen) as agent:
            for _ in range(CALLS_EACH):
                try:
                    result = await agent.call_tool(READ_TOOL, {})
                except MCPError as exc:
                    failures.append(f"client {index}: {exc}")
                    continue
                if result.is_error or "orders" not in (result.structured_content or {}):
                    failures.append(f"client {index}: {text(result)}")

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for index in range(CLIENTS):
                tg.start_soon(one_client, index)

    assert failures == []
    assert len(cluster.ledger(READ_TOOL)) - before == CLIENTS * CALLS_EACH
    # Each session stayed on one replica, and the sessions were spread over the replicas.
    homes = {index: set(seen) for index, seen in answered.items()}
    assert all(len(home) == 1 for home in homes.values()), homes
    assert len(set().union(*homes.values())) >= 2, homes


async def test_2026_era_calls_are_served_by_every_replica(cluster: Cluster) -> None:
    seen: list[str] = []
    async with cluster.agent(mode="auto", seen=seen) as agent:
        results = [await agent.call_tool(READ_TOOL, {}) for _ in range(12)]
    assert [r for r in results if r.is_error] == []
    assert set(seen) == set(REPLICAS), Counter(seen)


async def test_without_stickiness_2025_era_sessions_break(cluster: Cluster) -> None:
    config = HAPROXY_CONFIG.read_text()
    unsticky = "".join(line for line in config.splitlines(keepends=True) if not line.strip().startswith("stick"))
    assert unsticky != config
    failures: list[str] = []
    async with cluster.another_balancer(unsticky) as url:
        with anyio.fail_after(60):
            try:
                async with cluster.agent(mode="legacy", via=url) as agent:
                    for _ in range(6):
                        try:
                            result = await agent.call_tool(READ_TOOL, {})
                        except MCPError as exc:
                            failures.append(str(exc))
                            continue
                        if result.is_error:
                            failures.append(text(result))
            except Exception as exc:  # the session may already fail while it is being set up
                failures.append(repr(exc))
    assert failures, "2025-era calls all succeeded without stickiness: the control proves nothing"
    assert any("session" in f.lower() for f in failures), failures
