"""What an approver needs beside the arguments: facts looked up for a request, through the gateway's own rules.

Channels show a request's context without knowing which tools produce it: they ask a
`ContextLookup`, and render the `RequestContext` they get (a title, labelled facts, warnings, or
the reason it could not be looked up). A lookup reads through `GatewayReads`, which calls an
upstream tool only when the current policy allows that tool outright, under the gateway's own
identity, and writes an audit row for each read — so what an approver saw is on the record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

import anyio
import mcp_types as types

from approvals.audit import Event, canonical_json
from approvals.service import ApprovalService
from approvals.views import RequestView
from gateway.policy_store import PolicyStore
from gateway.results import text_of
from gateway.upstreams import Upstreams

log = logging.getLogger(__name__)

# The identity the gateway's own reads are audited under.
GATEWAY_IDENTITY = "countersign"


@dataclass(frozen=True)
class Fact:
    label: str
    value: str


@dataclass(frozen=True)
class RequestContext:
    """Facts about a request, as of `checked_at`; or `problem` saying why there are none."""

    title: str
    checked_at: datetime
    facts: tuple[Fact, ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    problem: str | None = None


class ContextLookup(Protocol):
    def applies(self, request: RequestView) -> bool:
        """Whether this request has context worth looking up (the channel shows nothing otherwise)."""
        ...

    async def lookup(self, request: RequestView) -> RequestContext: ...

    def result_summary(self, request: RequestView) -> str | None:
        """One line about what an executed request did, in the tool's own terms; None to use the plain summary."""
        ...


class NoContext:
    """For gateways with nothing to look up: every channel shows arguments only."""

    def applies(self, request: RequestView) -> bool:
        return False

    async def lookup(self, request: RequestView) -> RequestContext:
        raise LookupError("no context lookups are configured")

    def result_summary(self, request: RequestView) -> str | None:
        return None


@dataclass
class ReadFailed(Exception):
    """A context read that did not happen, with the reason an approver can read."""

    reason: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.reason


class GatewayReads:
    """Calls read tools for context: only tools the policy allows outright, bounded in time, each read audited."""

    def __init__(
        self, service: ApprovalService, policies: PolicyStore, upstreams: Upstreams, *, timeout: float = 3.0
    ) -> None:
        self.service = service
        self.policies = policies
        self.upstreams = upstreams
        self.timeout = timeout

    async def read(self, request: RequestView, upstream_tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        """Call `upstream_tool` on the request's own upstream; raises ReadFailed with the reason when it cannot."""
        name = self.upstreams.catalog_name(request.upstream, upstream_tool)
        upstream = self.upstreams.get(request.upstream)
        if name is None or upstream is None:
            raise ReadFailed(f"upstream '{request.upstream}' offers no {upstream_tool} tool right now")
        evaluation = self.policies.current.evaluate(name, arguments)
        event = Event(
            kind="call.lookup",
            outcome="allowed",
            message=f"looked up {name} for request {request.id}",
            agent=GATEWAY_IDENTITY,
            tool=name,
            upstream=request.upstream,
            request_id=request.id,
            actor=GATEWAY_IDENTITY,
            arguments=canonical_json(arguments),
            detail={"rule": evaluation.rule, "for_agent": request.agent},
        )
        if evaluation.action != "allow":
            await self._audit(event, "denied", f"lookup of {name} refused by policy: {evaluation.message}")
            raise ReadFailed(f"the policy does not allow the gateway to read {name} ({evaluation.message})")
        result: types.CallToolResult | None = None
        with anyio.move_on_after(self.timeout):
            result = await upstream.call(upstream_tool, arguments)
        if result is None:
            await self._audit(event, "failed", f"lookup of {name} timed out after {self.timeout:g}s")
            raise ReadFailed(f"upstream '{request.upstream}' did not answer within {self.timeout:g}s")
        if result.is_error:
            await self._audit(event, "failed", f"lookup of {name} failed: {text_of(result, 200)}")
            raise ReadFailed(text_of(result, 200))
        await self._audit(event, "allowed", event.message)
        return result

    async def _audit(self, event: Event, outcome: str, message: str) -> None:
        try:
            await self.service.record(replace(event, outcome=outcome, message=message))
        except Exception as exc:
            log.error("could not audit a context lookup for %s: %s", event.request_id, exc)


def number(value: Any) -> str:
    """A quantity or price as a trader writes it: 50, 1,250, 395.5 (never 50.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—" if value is None else str(value)
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.4f}".rstrip("0").rstrip(".")
    return f"{int(value):,}"
