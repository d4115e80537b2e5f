"""Allowed calls arriving together are recorded in shared write transactions, on one chain that verifies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from approvals.audit import Event
from approvals.errors import StoreUnavailable
from gateway import cli
from gateway.app import Gateway
from gateway.config import parse_settings
from tests.gateway.fakes import FakeUpstream, FakeUpstreams, MovableClock, broker
from tests.gateway.test_calls import policy

AUDIT_KEY = "audit-batches-test-key-0123456789abcdef"
CALLS = 40


@dataclass(frozen=True)
class Batches:
    """`countersign_audit_batch_size` as /metrics shows it."""

    transactions: float
    events: float
    largest: float


@asynccontextmanager
async def gateway_on(tmp_path: Path, database_url: str, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(policy()))
    settings = parse_settings(
        {
            "server": {"database_url": database_url, "poll_interval": 0.05},
            "audit": {"key": AUDIT_KEY},
            "policy": {"file": str(policy_file), "watch": False},
            "agents": [{"name": "alpha", "token": "token-alpha"}],
            "approvers": [{"name": "alice", "groups": ["traders"], "api_token": "alice-token"}],
        },
        source="<test>",
        base_dir=str(tmp_path),
        environ={},
    )
    gateway = Gateway(settings, stdio_agent="alpha", clock=MovableClock(), upstreams=FakeUpstreams(upstream))
    async with gateway.running(serve_http=False):
        with anyio.fail_after(60):
            yield gateway


async def allowed_calls(agent: Client, n: int) -> list[types.CallToolResult]:
    """`n` allowed calls sent together, as concurrent agents' calls would arrive."""
    results: list[types.CallToolResult] = []

    async def one() -> None:
        results.append(await agent.call_tool("get_orders", {}))

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return results


async def batch_sizes(gateway: Gateway) -> Batches:
    app = gateway.asgi(lifespan=False)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
        body = (await http.get("/metrics")).text
    [family] = [f for f in text_string_to_metric_families(body) if f.name == "countersign_audit_batch_size"]
    found = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    buckets = sorted((float(le), n) for (name, le), n in found.items() if name.endswith("_bucket") and le)
    # The smallest bucket bound that holds every transaction: at least the largest batch written.
    largest = next(le for le, n in buckets if n == found[("countersign_audit_batch_size_count", None)])
    return Batches(
        found[("countersign_audit_batch_size_count", None)], found[("countersign_audit_batch_size_sum", None)], largest
    )


async def verify(capsys: pytest.CaptureFixture[str], database_url: str, tmp_path: Path) -> tuple[int, str]:
    key_file = tmp_path / "verify.audit-key"
    key_file.write_text(AUDIT_KEY)
    args = ["audit", "verify", "--database-url", database_url, "--key-file", str(key_file)]
    code = await anyio.to_thread.run_sync(cli.main, args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


async def test_concurrent_allowed_calls_are_each_recorded_in_fewer_transactions_on_one_chain(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with gateway_on(tmp_path, database_url, broker()) as gateway:
        async with Client(gateway.mcp, mode="legacy") as agent:  # type: ignore[arg-type]
            results = await allowed_calls(agent, CALLS)
        events = await gateway.service.history.events(limit=CALLS + 10)
        sizes = await batch_sizes(gateway)

    assert [r.is_error for r in results] == [False] * CALLS
    assert sorted(e.kind for e in events) == ["call.allowed"] * CALLS
    # Every event went through a batch, and the calls that arrived together shared transactions.
    assert sizes.events == CALLS
    assert sizes.transactions < CALLS
    assert sizes.largest > 1
    code, output = await verify(capsys, database_url, tmp_path)
    assert code == 0, output
    assert f"audit chain intact: {CALLS} events verified" in output


async def test_a_batch_that_cannot_be_written_refuses_every_call_in_it(tmp_path: Path) -> None:
    upstream = broker()
    async with gateway_on(tmp_path, f"sqlite:///{tmp_path / 'cs.db'}", upstream) as gateway:
        # The database file is replaced under the gateway: every write is refused from now on.
        (tmp_path / "cs.db").rename(tmp_path / "moved.db")
        async with Client(gateway.mcp, mode="legacy") as agent:  # type: ignore[arg-type]
            results = await allowed_calls(agent, 10)
        with pytest.raises(StoreUnavailable):
            await gateway.service.record(Event(kind="call.allowed", outcome="allowed", message="forwarded"))
        # Nothing was forwarded.
        assert upstream.calls == []

    texts = [" ".join(b.text for b in r.content if isinstance(b, types.TextContent)) for r in results]
    assert len(texts) == 10 and all(t.startswith("[AUDIT UNAVAILABLE]") for t in texts), texts


async def test_replicas_recording_together_extend_one_chain(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two gateways on one database, each with its own connections and its own batches: replicas.
    async with (
        gateway_on(tmp_path, database_url, broker()) as first,
        gateway_on(tmp_path, database_url, broker()) as second,
    ):
        async with anyio.create_task_group() as tg:
            for gateway in (first, second):
                for n in range(CALLS):
                    event = Event(kind="call.allowed", outcome="allowed", message="forwarded", agent=f"a{n}")
                    tg.start_soon(gateway.service.record, event)
        sizes = [await batch_sizes(first), await batch_sizes(second)]

    assert [s.events for s in sizes] == [CALLS, CALLS]
    assert all(s.transactions < CALLS for s in sizes)
    code, output = await verify(capsys, database_url, tmp_path)
    assert code == 0, output
    assert f"audit chain intact: {2 * CALLS} events verified" in output
