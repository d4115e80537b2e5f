"""OpenTelemetry traces of tool calls: one span per call, with its policy, hold, decision wait and upstream call.

Only the OpenTelemetry API is needed to run (it comes with the MCP SDK, and does nothing until an
SDK is installed); `pip install 'countersign[otel]'` adds the SDK and the OTLP exporter, which
`configure()` turns on from the standard `OTEL_*` variables (docs/deploy.md, "Traces").

A call's span continues the agent's trace: the MCP SDK opens a server span for each message,
parented to the `traceparent` in the request's `_meta`; a call without one is parented to the
`traceparent` HTTP header of the request that carried it. Upstream calls are sent inside the
"upstream" span, so the MCP SDK passes the trace on in their `_meta`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import INVALID_SPAN, NoOpTracerProvider, ProxyTracerProvider, Span, StatusCode

log = logging.getLogger(__name__)

T = TypeVar("T")

tracer = trace.get_tracer("countersign")

# The variables that ask for traces to be exported (as the OpenTelemetry SDK's own configuration reads them).
_EXPORT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER")


def recording() -> bool:
    """Whether spans are recorded: a tracer provider was set (`configure()`, or an embedding application's).

    Until then every span is a no-op that only carries its parent's trace context along.
    """
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider)


def untraced(meta: Mapping[str, Any] | None, headers: Mapping[str, str] | None) -> bool:
    """Nothing recorded and no trace to carry: no provider, no `traceparent` in `_meta`, the headers or around.

    A span then is nothing but a context switch to an empty span and back, a visible share of an allowed
    call's time; the call's spans are skipped, and nothing the agent or the upstream sees changes
    (with a `traceparent` to carry, even no-op spans pass it on upstream, so they are kept).
    """
    if recording() or (meta is not None and "traceparent" in meta):
        return False
    if headers is not None and "traceparent" in headers:
        return False
    return not trace.get_current_span().get_span_context().is_valid


@contextmanager
def tool_call(
    tool: str, agent: str, *, meta: Mapping[str, Any] | None, headers: Mapping[str, str] | None
) -> Iterator[Span]:
    """The span of one tool call, in the agent's trace: from `_meta` (the current span), else the HTTP headers."""
    if untraced(meta, headers):
        yield INVALID_SPAN
        return
    parent = None
    if not (meta and "traceparent" in meta) and headers is not None and "traceparent" in headers:
        # The SDK's server span is then a root of its own; the call joins the trace the agent's HTTP request carries.
        parent = extract({"traceparent": headers["traceparent"], "tracestate": headers.get("tracestate", "")})
    attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool, "countersign.agent": agent}
    with tracer.start_as_current_span(f"countersign.call {tool}", context=parent, attributes=attributes) as span:
        yield span


def annotate(**attributes: Any) -> None:
    """Add to the current call's span (e.g. the approval id once a call is parked)."""
    trace.get_current_span().set_attributes({f"countersign.{k}": v for k, v in attributes.items() if v is not None})


def outcome(span: Span, is_error: bool, text: str) -> None:
    span.set_attribute("countersign.outcome", text)
    if is_error:
        span.set_status(StatusCode.ERROR, text)


@contextmanager
def step(name: str, **attributes: Any) -> Iterator[Span]:
    """A child span of the current call: "policy", "hold", "decision_wait" or "upstream"."""
    if untraced(None, None):
        yield INVALID_SPAN
        return
    values = {f"countersign.{k}": v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(f"countersign.{name}", attributes=values) as span:
        yield span


async def traced(name: str, work: Awaitable[T], **attributes: Any) -> T:
    """Await `work` inside a child span of the current call."""
    if untraced(None, None):
        return await work
    with step(name, **attributes):
        return await work


def configure(environ: Mapping[str, str] | None = None) -> bool:
    """Export spans over OTLP when an `OTEL_*` variable asks for it and the SDK is installed. True when on."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or not any(env.get(v) for v in _EXPORT_VARIABLES):
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").lower() not in ("otlp", ""):
        log.warning(
            "OTEL_TRACES_EXPORTER=%s is not supported; traces are exported only over OTLP", env["OTEL_TRACES_EXPORTER"]
        )
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_* variables are set but the OpenTelemetry SDK is not installed: pip install 'countersign[otel]'"
        )
        return False
    # The SDK reads OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES and the exporter's OTEL_EXPORTER_OTLP_* itself.
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "countersign")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("exporting traces over OTLP")
    return True
