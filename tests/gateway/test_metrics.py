"""/metrics after a scripted run: every family with the counts the run must produce, and promtool's blessing."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from approvals.audit import Event
from tests.gateway.fakes import broker, text_result
from tests.gateway.test_calls import ALICE, CANCEL, Core, call_in_background, core

PROMTOOL = shutil.which("promtool")


async def scrape(c: Core, token: str | None = None) -> httpx2.Response:
    app = c.gateway.asgi(lifespan=False)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
        return await http.get("/metrics", headers=headers)


def samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def held(c: Core, agent: Any, *, wait: float, verdict: str, order: int) -> None:
    async with anyio.create_task_group() as tg:
        box: dict[str, Any] = {}
        # A distinct order each time: an identical call just after would be answered as a repeat, not held.
        await call_in_background(agent, tg, "cancel_order", {**CANCEL, "orderId": order}, box)
        request = await c.pending()
        c.clock.advance(wait)
        if verdict == "approve":
            await c.service.approve(request.id, ALICE, "api")
        else:
            await c.service.reject(request.id, ALICE, "api", "not now")


async def test_a_scripted_run_shows_in_every_metric_family(tmp_path: Path) -> None:
    upstream = broker(limited_read=lambda _arguments: _answer("read"))
    async with core(tmp_path, upstream) as c, c.agent() as agent:
        await agent.call_tool("get_orders", {})  # allowed
        await agent.call_tool("limited_read", {})  # allowed, and uses up the hour's one call
        await agent.call_tool("limited_read", {})  # limited
        await agent.call_tool("place_everything", {"id": "apr_should_never_be_a_label"})  # denied: not listed
        await held(c, agent, wait=30, verdict="approve", order=101)
        await held(c, agent, wait=90, verdict="reject", order=102)
        # What the Slack outbox appends when a delivery fails, and when it gives up.
        await c.service.record(Event(kind="slack.failed", outcome="failed", message="slack: ratelimited"))
        await c.service.record(Event(kind="slack.gave_up", outcome="gave_up", message="slack: gave up"))

        async with anyio.create_task_group() as tg:
            box: dict[str, Any] = {}
            await call_in_background(agent, tg, "cancel_order", {"orderId": 7}, box)
            waiting = await c.pending()
            during = await scrape(c)
            await c.service.reject(waiting.id, ALICE, "api", "no")
        after = samples((await scrape(c)).text)

    assert during.status_code == 200
    assert during.headers["content-type"].startswith("text/plain; version=")
    now = samples(during.text)
    assert value(now, "countersign_requests_open", state="pending") == 1
    assert value(after, "countersign_requests_open", state="pending") == 0

    calls = "countersign_tool_calls_total"
    assert value(after, calls, tool="get_orders", agent="alpha", outcome="allowed") == 1
    assert value(after, calls, tool="limited_read", agent="alpha", outcome="allowed") == 1
    assert value(after, calls, tool="limited_read", agent="alpha", outcome="limited") == 1
    assert value(after, calls, tool="other", agent="alpha", outcome="denied") == 1
    assert value(after, calls, tool="cancel_order", agent="alpha", outcome="held") == 3
    assert "place_everything" not in during.text and "apr_" not in during.text

    ended = "countersign_requests_ended_total"
    assert value(after, ended, state="executed", reason="executed") == 1
    assert value(after, ended, state="rejected", reason="rejected") == 2

    decision = "countersign_decision_latency_seconds"
    assert value(after, f"{decision}_count", verdict="approved") == 1
    assert value(after, f"{decision}_sum", verdict="approved") == 30
    assert value(after, f"{decision}_bucket", verdict="approved", le="15.0") == 0
    assert value(after, f"{decision}_bucket", verdict="approved", le="30.0") == 1
    assert value(after, f"{decision}_count", verdict="rejected") == 2
    assert value(after, f"{decision}_sum", verdict="rejected") == 90
    assert value(after, "countersign_approval_to_result_seconds_count", state="executed") == 1

    failures = "countersign_channel_delivery_failures_total"
    assert value(after, failures, channel="slack", outcome="failed") == 1
    assert value(after, failures, channel="slack", outcome="gave_up") == 1

    assert value(after, "countersign_upstream_up", upstream="paper") == 1
    assert value(after, "countersign_upstream_reconnects_total", upstream="paper") == 0

    appends = "countersign_audit_appends_total"
    assert value(after, appends, kind="call") == 4
    assert value(after, appends, kind="slack") == 2
    # created, approved, executing, executed; created, rejected; created, rejected.
    assert value(after, appends, kind="request") >= 8

    # One call at a time: every call event is written alone, at once (group commit never waits for company).
    batches = "countersign_audit_batch_size"
    assert value(after, f"{batches}_count") == value(after, f"{batches}_sum") >= 6
    assert value(after, f"{batches}_bucket", le="1.0") == value(after, f"{batches}_count")


async def _answer(text: str) -> Any:
    return text_result(text)


async def test_metrics_behind_their_own_token_refuse_anything_else(tmp_path: Path) -> None:
    async with core(tmp_path, metrics_token="scrape-secret") as c:
        assert (await scrape(c)).status_code == 401
        assert (await scrape(c, "token-alpha")).status_code == 401  # an agent's token is not the metrics token
        answer = await scrape(c, "scrape-secret")
    assert answer.status_code == 200
    assert "countersign_tool_calls" in answer.text


async def test_promtool_accepts_the_exposition(tmp_path: Path) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    async with core(tmp_path) as c, c.agent() as agent:
        await agent.call_tool("get_orders", {})
        await held(c, agent, wait=5, verdict="approve", order=101)
        body = (await scrape(c)).content
    checked = await anyio.run_process([PROMTOOL, "check", "metrics"], input=body, check=False)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
