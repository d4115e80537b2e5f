"""Prometheus metrics at /metrics, read from the audit log when Prometheus scrapes.

Everything the gateway does is already an audit event (calls allowed, denied or limited; every
transition of every request; every failed channel delivery), and the log is shared by every
replica. So the counters are not incremented on the call path: each scrape first reads the events
appended since the last one and counts them. That keeps the call path free of metrics code, and
it means any one replica reports the figures of the whole gateway since it started — query one
replica (or take `max` across them), never `sum`.

Labels are bounded: tools are the names the upstreams list (anything else is `other`), agents
are capped at `MAX_AGENTS` distinct names, and every other label comes from a fixed vocabulary.
No approval id or argument ever becomes a label.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from approvals.audit import as_utc
from approvals.db import Database
from approvals.models import ApprovalRequest, AuditEvent
from approvals.states import TERMINAL, Status
from gateway.bearer import BearerProblem, bearer_token

log = logging.getLogger(__name__)

_events = AuditEvent.__table__  # type: ignore[attr-defined]
_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]

OTHER = "other"
# Distinct agent names kept as label values; later names count as `other`.
MAX_AGENTS = 200
_BATCH = 500
# Approved requests remembered for the approve → result latency; the oldest are forgotten first.
_MAX_APPROVED = 10_000

CALL_OUTCOMES = frozenset({"allowed", "failed", "denied", "limited", "held"})
_TERMINAL_KINDS = {f"request.{s.value}": s for s in TERMINAL}
_OPEN = (Status.PENDING, Status.APPROVED, Status.EXECUTING)
# Humans decide in seconds to hours; upstream calls take milliseconds to minutes.
DECISION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
# Events per group-committed audit transaction: 1 when idle, up to approvals.audit_batch.MAX_BATCH under load.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
RESULT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class GatewayMetrics:
    """The gateway's metric families in their own registry (so any number of gateways share a process)."""

    def __init__(
        self,
        db: Database,
        *,
        tools: Callable[[], Iterable[str]],
        upstreams: Callable[[], list[dict[str, Any]]],
        agents: Iterable[str] = (),
        batches: Mapping[int, int] | None = None,
    ) -> None:
        self.db = db
        self._tools = tools
        self._agents: set[str] = set(agents)
        self._cursor: int | None = None
        self._approved_at: dict[str, datetime] = {}
        self._lock = anyio.Lock()
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls = Counter(
            "countersign_tool_calls", "Tool calls by tool, agent and outcome.", ["tool", "agent", "outcome"], registry=r
        )
        self.open = Gauge("countersign_requests_open", "Requests not ended yet, by state.", ["state"], registry=r)
        self.decision = Histogram(
            "countersign_decision_latency_seconds",
            "From a request being held to its deciding approval or rejection.",
            ["verdict"],
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.result = Histogram(
            "countersign_approval_to_result_seconds",
            "From a request's approval to the upstream's result.",
            ["state"],
            buckets=RESULT_BUCKETS,
            registry=r,
        )
        self.ended = Counter(
            "countersign_requests_ended", "Requests by final state and why they ended.", ["state", "reason"], registry=r
        )
        self.delivery = Counter(
            "countersign_channel_delivery_failures",
            "Failed channel deliveries (outcome failed: will retry; gave_up: will not).",
            ["channel", "outcome"],
            registry=r,
        )
        self.appends = Counter(
            "countersign_audit_appends",
            "Audit events appended, by the part of their kind before the dot.",
            ["kind"],
            registry=r,
        )
        r.register(_UpstreamCollector(upstreams))
        if batches is not None:
            r.register(_BatchCollector(batches))

    async def start(self) -> None:
        """Count from the current end of the log on: what happened before this process started is not counted."""
        async with self.db.read() as conn:
            self._cursor = int((await conn.execute(select(func.coalesce(func.max(_events.c.seq), 0)))).scalar_one())

    async def scrape(self) -> bytes:
        """Count the events appended since the last scrape, refresh the gauges, and render the exposition."""
        async with self._lock:
            try:
                await self._catch_up()
                await self._count_open()
            except Exception as exc:  # the store may be down: serve what was counted, and say so in the log
                log.warning("metrics: could not read the audit log: %s", exc)
        return generate_latest(self.registry)

    async def _catch_up(self) -> None:
        if self._cursor is None:
            await self.start()
        while True:
            query = (
                select(
                    _events.c.seq,
                    _events.c.at,
                    _events.c.kind,
                    _events.c.outcome,
                    _events.c.agent,
                    _events.c.tool,
                    _events.c.request_id,
                    _requests.c.created_at,
                    _requests.c.ended_because,
                )
                .select_from(_events.outerjoin(_requests, _requests.c.id == _events.c.request_id))
                .where(_events.c.seq > self._cursor)
                .order_by(_events.c.seq)
                .limit(_BATCH)
            )
            async with self.db.read() as conn:
                rows = (await conn.execute(query)).mappings().all()
            tools = set(self._tools())
            for row in rows:
                self._count(row, tools)
                self._cursor = row["seq"]
            if len(rows) < _BATCH:
                return

    def _count(self, row: Mapping[Any, Any], tools: set[str]) -> None:
        kind: str = row["kind"]
        family, _, what = kind.partition(".")
        self.appends.labels(family).inc()
        if family == "call" and what != "lookup":  # lookups are the gateway's own reads, not an agent's calls
            self._call(row, row["outcome"], tools)
        elif family == "request":
            self._request(row, kind, tools)
        elif what in ("failed", "gave_up"):
            self.delivery.labels(family, what).inc()

    def _call(self, row: Mapping[Any, Any], outcome: str, tools: set[str]) -> None:
        tool = row["tool"] if row["tool"] in tools else OTHER
        self.calls.labels(tool, self._agent(row["agent"]), outcome if outcome in CALL_OUTCOMES else OTHER).inc()

    def _request(self, row: Mapping[Any, Any], kind: str, tools: set[str]) -> None:
        at = as_utc(row["at"])
        request_id: str = row["request_id"]
        if kind == "request.created":
            self._call(row, "held", tools)
        elif kind in ("request.approved", "request.rejected") and row["created_at"] is not None:
            self.decision.labels(kind.partition(".")[2]).observe(_seconds(at - as_utc(row["created_at"])))
        if kind == "request.approved":
            self._approved_at[request_id] = at
            while len(self._approved_at) > _MAX_APPROVED:
                del self._approved_at[next(iter(self._approved_at))]
        state = _TERMINAL_KINDS.get(kind)
        if state is None:
            return
        self.ended.labels(state.value, row["ended_because"] or OTHER).inc()
        approved = self._approved_at.pop(request_id, None)
        if approved is not None and state in (Status.EXECUTED, Status.FAILED):
            self.result.labels(state.value).observe(_seconds(at - approved))

    def _agent(self, name: str | None) -> str:
        if not name:
            return OTHER
        if name not in self._agents and len(self._agents) < MAX_AGENTS:
            self._agents.add(name)
        return name if name in self._agents else OTHER

    async def _count_open(self) -> None:
        query = (
            select(_requests.c.status, func.count())
            .where(_requests.c.status.in_([s.value for s in _OPEN]))
            .group_by(_requests.c.status)
        )
        async with self.db.read() as conn:
            counts = {status: int(n) for status, n in (await conn.execute(query)).all()}
        for state in _OPEN:
            self.open.labels(state.value).set(counts.get(state.value, 0))


def _seconds(delta: Any) -> float:
    return max(float(delta.total_seconds()), 0.0)


class _UpstreamCollector(Collector):
    """Upstream connections as they are at scrape time."""

    def __init__(self, status: Callable[[], list[dict[str, Any]]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "countersign_upstream_up", "1 when the upstream is connected and listed.", labels=["upstream"]
        )
        reconnects = CounterMetricFamily(
            "countersign_upstream_reconnects", "Times the gateway connected to the upstream again.", labels=["upstream"]
        )
        for upstream in self._status():
            up.add_metric([upstream["name"]], 1.0 if upstream["state"] == "ready" else 0.0)
            reconnects.add_metric([upstream["name"]], float(upstream.get("reconnects", 0)))
        yield up
        yield reconnects


class _BatchCollector(Collector):
    """This process's audit write transactions for events that change no request, by how many events each held.

    Unlike the families above, this one is the process's own (how it wrote, not what happened), so it is
    summed across replicas. Read from the writer's counts at scrape time: nothing is added to the call path.
    """

    def __init__(self, sizes: Mapping[int, int]) -> None:
        self._sizes = sizes

    def collect(self) -> Iterator[Metric]:
        sizes = dict(self._sizes)
        buckets = [
            (str(float(bound)), float(sum(n for size, n in sizes.items() if size <= bound))) for bound in BATCH_BUCKETS
        ]
        buckets.append(("+Inf", float(sum(sizes.values()))))
        yield HistogramMetricFamily(
            "countersign_audit_batch_size",
            "Events per audit write transaction of calls and refusals (group commit), in this process.",
            buckets=buckets,
            sum_value=float(sum(size * n for size, n in sizes.items())),
        )


def metrics_endpoint(metrics: GatewayMetrics, token: str | None) -> Callable[[Request], Any]:
    """The /metrics endpoint: open, or behind its own bearer token (never an agent's or approver's)."""

    async def endpoint(request: Request) -> Response:
        if token:
            try:
                given = bearer_token(request.headers.raw)
            except BearerProblem as problem:
                return _unauthorized(str(problem))
            if given is None or not hmac.compare_digest(given.encode(), token.encode()):
                return _unauthorized("send [server] metrics_token as 'Authorization: Bearer <token>'")
        return Response(await metrics.scrape(), media_type=CONTENT_TYPE_LATEST)

    return endpoint


def _unauthorized(why: str) -> Response:
    return JSONResponse(
        {"error": "unauthorized", "detail": why},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
    )
