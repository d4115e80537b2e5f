"""Traces: a held call's spans, in the agent's trace, seen through the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import anyio
import httpx2
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.gateway.test_two_gateways import cancel_with
from tests.harness import AGENT_TOKEN, running_gateway
from tests.slack.stack import CANCEL

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    # The global provider can be set once per process; later tests reuse it and start from an empty exporter.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def named(found: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    matches = [s for s in found if s.name == name]
    assert len(matches) == 1, (name, [s.name for s in found])
    return matches[0]


def parent_of(span: ReadableSpan) -> str | None:
    return None if span.parent is None else format(span.parent.span_id, "016x")


def span_id(span: ReadableSpan) -> str:
    return format(span.context.span_id, "016x")


async def test_a_held_calls_spans_continue_the_agents_trace_and_pass_it_upstream(
    tmp_path: Path, sqlite_url: str, spans: InMemorySpanExporter
) -> None:
    agent_tracer = trace.get_tracer("an-agent")
    async with running_gateway(tmp_path, sqlite_url, policy=cancel_with()) as h, h.agent() as agent:
        # The agent works inside a span of its own; its MCP client sends that trace in `_meta.traceparent`.
        with agent_tracer.start_as_current_span("agent cancels an order") as agent_span:
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await agent.call_tool("ibkr_cancel_order", CANCEL)

                tg.start_soon(call)
                pending = await h.pending()
                await h.api().post(f"/api/approvals/{pending[0]['id']}/approve", json={})
    trace_id = agent_span.get_span_context().trace_id
    found = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
    by_parent: dict[str | None, list[ReadableSpan]] = {}
    for s in found:
        by_parent.setdefault(parent_of(s), []).append(s)

    def child(parent: ReadableSpan, name: str) -> ReadableSpan:
        matches = [s for s in by_parent.get(span_id(parent), []) if s.name == name]
        assert len(matches) == 1, (name, [s.name for s in by_parent.get(span_id(parent), [])])
        return matches[0]

    root = named(tuple(found), "agent cancels an order")
    sent = child(root, "MCP send tools/call ibkr_cancel_order")
    served = child(sent, "tools/call ibkr_cancel_order")  # the gateway's server span, from the traceparent sent
    call = child(served, "countersign.call ibkr_cancel_order")
    policy, hold = child(call, "countersign.policy"), child(call, "countersign.hold")
    decision, upstream = child(call, "countersign.decision_wait"), child(call, "countersign.upstream")
    assert policy.attributes is not None and policy.attributes["countersign.action"] == "hold"
    assert call.attributes is not None and call.attributes["countersign.approval_id"] == pending[0]["id"]
    assert call.attributes["countersign.agent"] == "alpha"
    assert hold.end_time is not None and decision.start_time is not None and hold.end_time <= decision.start_time
    assert decision.end_time is not None and upstream.start_time is not None
    assert decision.end_time <= upstream.start_time, "the decision came before the call went upstream"
    # The upstream call went out inside the upstream span, and the upstream's server span continues the trace.
    forwarded = child(upstream, "MCP send tools/call ibkr_cancel_order")
    child(forwarded, "tools/call ibkr_cancel_order")


async def test_a_call_without_a_traceparent_in_meta_continues_the_one_in_its_http_headers(
    tmp_path: Path, sqlite_url: str, spans: InMemorySpanExporter
) -> None:
    trace_id, agent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with running_gateway(tmp_path, sqlite_url) as h:
        # A client that knows nothing of `_meta` tracing: plain JSON-RPC, the trace only in the HTTP header.
        headers = {
            "Authorization": f"Bearer {AGENT_TOKEN}",
            "Accept": "application/json, text/event-stream",
            "traceparent": f"00-{trace_id}-{agent_span}-01",
        }
        async with httpx2.AsyncClient(base_url=h.base_url, headers=headers, timeout=30) as http:
            hello = {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "curl", "version": "1"},
            }
            opened = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello})
            session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
            await http.post("/mcp", headers=session, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
            params = {"name": "ibkr_get_portfolio", "arguments": {}}
            answered = await http.post(
                "/mcp", headers=session, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
            )
            assert '"isError":false' in answered.text.replace(" ", ""), answered.text
    call = named(tuple(spans.get_finished_spans()), "countersign.call ibkr_get_portfolio")
    assert format(call.context.trace_id, "032x") == trace_id
    assert parent_of(call) == agent_span
    upstream = [
        s for s in spans.get_finished_spans() if s.name == "countersign.upstream" and parent_of(s) == span_id(call)
    ]
    assert len(upstream) == 1, "an allowed call goes upstream inside its own span"


def test_otel_variables_send_spans_over_otlp_to_the_configured_collector(tmp_path: Path) -> None:
    """In a process of its own (the global tracer provider is set once per process): a span reaches an OTLP endpoint."""
    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = (
        "from opentelemetry import trace\n"
        "from gateway import tracing\n"
        "assert tracing.configure()\n"
        "with tracing.tool_call('ibkr_cancel_order', 'alpha', meta=None, headers=None):\n"
        "    pass\n"
        "trace.get_tracer_provider().shutdown()\n"
    )
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}"}
    env["OTEL_SERVICE_NAME"] = "countersign-test"
    try:
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert [path for path, _ in received] == ["/v1/traces"]
    assert b"countersign.call ibkr_cancel_order" in received[0][1] and b"countersign-test" in received[0][1]
