"""What an approver needs beside the arguments: facts the policy says to look up when a request is made.

A tool's `approval.context` (gateway.policy_context) names read tools of the held call's upstream.
`ApprovalContext.gather` calls them when the request is made, before anything announces it, each
bounded by its own timeout and all at once, and renders the policy's `summary` over the arguments
and what was found. The outcomes are stored on the request, so every channel, the API, the CLI
and the audit show the same facts; a lookup that fails says why ("context unavailable: …") and
never keeps the request from being made.

Reads go through `GatewayReads`, which calls an upstream tool only when the current policy allows
that tool outright, under the gateway's own identity, and writes a `call.lookup` audit row for each.
Requests for the same agent made at once that ask the same question share one read
(`gateway.shared_lookups`); each still has its own audit row, naming the request whose read it shared.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import jmespath

from approvals.audit import Event, canonical_json
from approvals.service import ApprovalService
from approvals.views import ContextItem
from gateway.identity import GATEWAY_IDENTITY, AgentIdentity
from gateway.policy_context import ContextSpec, render_summary, resolve_arguments, select
from gateway.policy_model import ApprovalSettings
from gateway.policy_store import PolicyStore
from gateway.results import text_of
from gateway.shared_lookups import SharedLookups
from gateway.upstreams import Upstreams

log = logging.getLogger(__name__)

# The most a lookup's selected value may take on the request (canonical JSON), so a careless select stays readable.
VALUE_LIMIT = 8192


@dataclass(frozen=True)
class HeldCall:
    """The call a request is being made for, and the id the request will have."""

    request_id: str
    agent: str
    upstream: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class Shown:
    """What approvers are shown beside the arguments: the looked-up facts and the policy's sentence."""

    context: tuple[ContextItem, ...] = ()
    title: str | None = None


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
        self,
        service: ApprovalService,
        policies: PolicyStore,
        upstreams: Upstreams,
        lookups: SharedLookups | None = None,
    ) -> None:
        self.service = service
        self.policies = policies
        self.upstreams = upstreams
        self.lookups = lookups or SharedLookups()

    async def read(self, call: HeldCall, upstream_tool: str, arguments: dict[str, Any], *, bound: float) -> Any:
        """What `upstream_tool` of the held call's upstream answered, as a selection reads it (structured, else
        JSON text, else {"text": …}); raises ReadFailed with the reason when it cannot be read.

        Lookups asking the same agent's question at once share one read (`gateway.shared_lookups`); each is
        audited on its own, a shared one naming the request whose lookup sent the read."""
        name = self.upstreams.catalog_name(call.upstream, upstream_tool)
        upstream = self.upstreams.get(call.upstream)
        if name is None or upstream is None:
            raise ReadFailed(f"upstream '{call.upstream}' offers no {upstream_tool} tool right now")
        evaluation = self.policies.current.evaluate(name, arguments, agent=AgentIdentity(GATEWAY_IDENTITY))
        arguments_json = canonical_json(arguments)
        event = Event(
            kind="call.lookup",
            outcome="allowed",
            message=f"looked up {name} for request {call.request_id}",
            agent=GATEWAY_IDENTITY,
            tool=name,
            upstream=call.upstream,
            request_id=call.request_id,
            actor=GATEWAY_IDENTITY,
            arguments=arguments_json,
            detail={"rule": evaluation.rule, "for_agent": call.agent},
        )
        if evaluation.action != "allow":
            await self._audit(event, "denied", f"lookup of {name} refused by policy: {evaluation.message}")
            raise ReadFailed(f"the policy does not allow the gateway to read {name} ({evaluation.message})")
        question = (call.agent, call.upstream, upstream_tool, arguments_json, bound)
        flight, sent = await self.lookups.ask(
            question, call.request_id, lambda: upstream.call(upstream_tool, arguments)
        )
        if not sent:
            event = replace(event, detail={**event.detail, "shared_from": flight.asked_for})
        result = flight.result
        if flight.error is not None:  # a broken upstream is a failed lookup, never a failed request
            await self._audit(event, "failed", f"lookup of {name} failed: {flight.error}")
            raise ReadFailed(f"{name} could not be called: {flight.error}") from flight.error
        if result is None:
            await self._audit(event, "failed", f"lookup of {name} timed out after {bound:g}s")
            raise ReadFailed(f"{name} did not answer within {bound:g}s")
        if result.is_error:
            await self._audit(event, "failed", f"lookup of {name} failed: {text_of(result, 200)}")
            raise ReadFailed(f"{name} answered with an error: {text_of(result, 200)}")
        await self._audit(event, "allowed", event.message)
        return flight.content()

    async def _audit(self, event: Event, outcome: str, message: str) -> None:
        try:
            await self.service.record(replace(event, outcome=outcome, message=message))
        except Exception as exc:
            log.error("could not audit a context lookup for %s: %s", event.request_id, exc)


class ApprovalContext:
    """Runs a held tool's lookups and renders its summary, before the request is made."""

    def __init__(self, reads: GatewayReads | None) -> None:
        self.reads = reads

    async def gather(self, approval: ApprovalSettings, call: HeldCall) -> Shown:
        found: dict[str, ContextItem] = {}
        if approval.context:
            async with anyio.create_task_group() as group:
                for spec in approval.context:
                    group.start_soon(self._one, spec, call, found)
        items = tuple(found[spec.name] for spec in approval.context)
        title = None
        if approval.summary is not None:
            values = {item.name: item.value for item in items}
            title = render_summary(approval.summary, call.arguments, values)
        return Shown(items, title)

    async def _one(self, spec: ContextSpec, call: HeldCall, found: dict[str, ContextItem]) -> None:
        # Bounded here as well as in the read: the audit rows around it must not stretch the bound either.
        with anyio.move_on_after(spec.timeout + 1.0):
            found[spec.name] = await self._lookup(spec, call)
            return
        found[spec.name] = ContextItem(spec.name, spec.tool, problem=f"no answer within {spec.timeout:g}s")

    async def _lookup(self, spec: ContextSpec, call: HeldCall) -> ContextItem:
        if self.reads is None:
            return ContextItem(spec.name, spec.tool, problem="this gateway makes no lookups")
        try:
            arguments = resolve_arguments(spec.arguments, call.arguments)
            found = await self.reads.read(call, spec.tool, arguments, bound=spec.timeout)
            value = select(spec, found, call.arguments)
            size = len(canonical_json(value))
            if size > VALUE_LIMIT:
                problem = f"what the policy selects is {size} bytes, more than {VALUE_LIMIT}; select less"
                return ContextItem(spec.name, spec.tool, problem=problem)
            return ContextItem(spec.name, spec.tool, value=value)
        except ReadFailed as failed:
            return ContextItem(spec.name, spec.tool, problem=failed.reason)
        except jmespath.exceptions.JMESPathError as exc:
            return ContextItem(spec.name, spec.tool, problem=f"the policy's selection does not apply: {exc}")
