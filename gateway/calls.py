"""One tool call's path through the gateway: policy, quota, forward or park, audit.

Held calls are handed to `gateway.held.HeldCalls`, which owns them from then on.
"""

from __future__ import annotations

import logging
from typing import Any

import mcp_types as types

from approvals.audit import Event, canonical_json
from approvals.errors import ApprovalError
from approvals.service import ApprovalService, arguments_digest
from approvals.views import NewRequest
from gateway.arguments import check_call
from gateway.caller import Caller, Progress, ProgressLine
from gateway.errors import CallRefused, Tag
from gateway.held import HeldCalls
from gateway.policy_store import PolicyStore
from gateway.ratelimit import RateLimiter, Refusal
from gateway.results import PENDING_SCHEMA, STATUS_TOOL, WAIT_TOOL, gateway_tools, text_of
from gateway.schemas import admit_alternative
from gateway.upstreams import Upstreams

log = logging.getLogger(__name__)

__all__ = ["CallHandler", "Caller", "Progress"]


class CallHandler:
    def __init__(
        self,
        *,
        service: ApprovalService,
        policies: PolicyStore,
        upstreams: Upstreams,
        limiter: RateLimiter,
        held: HeldCalls,
    ) -> None:
        self.service = service
        self.policies = policies
        self.upstreams = upstreams
        self.limiter = limiter
        self.held = held

    # ---- the catalog

    def visible_tools(self) -> list[types.Tool]:
        policy = self.policies.current
        ours = gateway_tools()
        reserved = {t.name for t in ours}
        tools = []
        for tool in self.upstreams.tools():
            if tool.name in reserved or policy.is_hidden(tool.name):
                continue
            if tool.output_schema is not None and self._may_hold(tool.name):
                # A held call may come back as a pending result; say so, or validating clients reject it.
                widened = admit_alternative(tool.output_schema, PENDING_SCHEMA)
                tool = tool.model_copy(update={"output_schema": widened})
            tools.append(tool)
        return [*tools, *ours]

    def _may_hold(self, name: str) -> bool:
        policy = self.policies.current
        listed = policy.tool_policy(name)
        return bool(policy.all_tools.require_approval) or bool(listed and listed.require_approval)

    # ---- a call

    async def call(
        self, caller: Caller, tool: str, arguments: dict[str, Any], progress: Progress | None = None
    ) -> types.CallToolResult:
        """The result for the agent; a refusal raises CallRefused, which the MCP server turns into its result."""
        line = ProgressLine(progress)
        # Hidden tools are checked without their schema, so a refusal never shows that the tool exists.
        schema = None if self.policies.current.is_hidden(tool) else self.upstreams.input_schema(tool)
        invalid = check_call(tool, arguments, schema)
        if invalid is not None:
            await self._audit(invalid.event(caller.agent, tool, arguments))
            raise CallRefused(Tag.INVALID_ARGUMENTS, invalid.message)
        if tool in (STATUS_TOOL, WAIT_TOOL):
            return await self.held.gateway_tool(caller, tool, arguments, line)
        policy = self.policies.current
        evaluation = policy.evaluate(tool, arguments, schema)
        route = self.upstreams.route(tool)
        upstream_name = route.upstream.name if route else None
        arguments_json = canonical_json(arguments)

        async def audit(kind: str, outcome: str, message: str, **detail: Any) -> None:
            event = Event(
                kind=kind,
                outcome=outcome,
                message=message,
                agent=caller.agent,
                tool=tool,
                upstream=upstream_name,
                arguments=arguments_json,
                detail={"rule": evaluation.rule, "policy_version": policy.version, **detail},
            )
            await self._audit(event)

        if evaluation.action in ("hidden", "deny"):
            await audit(f"call.{'hidden' if evaluation.action == 'hidden' else 'denied'}", "denied", evaluation.message)
            raise CallRefused(Tag.POLICY_DENIED, evaluation.message)
        if route is None:
            message = f"no tool named '{tool}' is available through this gateway"
            await audit("call.unknown", "denied", message)
            raise CallRefused(Tag.UNKNOWN_TOOL, message)

        if evaluation.action == "hold":
            existing = await self.service.find_open(caller.agent, tool, arguments_digest(arguments_json))
            if existing is not None:
                # The same call again: wait for the request already made instead of asking twice.
                return await self.held.reattach(existing, caller, line, "repeated the call")

        reservation = self.limiter.reserve(tool, evaluation.limits, grant=caller.agent, session=caller.session)
        if isinstance(reservation, Refusal):
            await audit("call.limited", "limited", reservation.message, retry_after=round(reservation.retry_after, 1))
            raise CallRefused(Tag.RATE_LIMITED, reservation.message)

        if evaluation.action == "allow":
            result = await route.upstream.call(route.upstream_tool, arguments, line.relay)
            if result.is_error:
                reservation.release()
            outcome = "failed" if result.is_error else "allowed"
            await audit("call.allowed", outcome, text_of(result, 200) if result.is_error else "forwarded")
            return result

        approval = evaluation.approval
        assert approval is not None
        try:
            request = await self.service.create(
                NewRequest(
                    upstream=route.upstream.name,
                    tool=tool,
                    upstream_tool=route.upstream_tool,
                    arguments=arguments,
                    agent=caller.agent,
                    session_id=caller.session,
                    rule=evaluation.rule,
                    reason=evaluation.message,
                    timeout_seconds=approval.timeout_seconds,
                    approvers=approval.approvers,
                    quorum=approval.quorum,
                    channels=approval.channels,
                    reject_reason_required=approval.reject_reason_required,
                    slack_channel=approval.slack_channel,
                    pickup_seconds=approval.pickup_seconds,
                    run_unattended=approval.run_unattended,
                    max_hold_seconds=self.held.request_bound(caller.agent, approval.max_hold_seconds),
                    keep_on_cancel=approval.keep_on_cancel,
                    policy_version=policy.version,
                )
            )
        except Exception as exc:
            # Whatever failed, the call is not parked, so it is refused: fail closed.
            reservation.release()
            log.error(
                "cannot park %s for approval, refusing it: %s", tool, exc, exc_info=not isinstance(exc, ApprovalError)
            )
            raise CallRefused(
                Tag.APPROVAL_UNAVAILABLE,
                "this call needs human approval but the approval queue cannot be reached; the call was not "
                "executed. Try again later.",
            ) from exc
        hold_limit = self.held.hold_limit(caller.agent, request)
        return await self.held.follow(request, caller, line, hold_limit=hold_limit, reservation=reservation)

    async def _audit(self, event: Event) -> None:
        # Often runs after the call was forwarded: an audit failure must never turn a result the
        # upstream already produced into an error, or the agent would retry a call that ran.
        try:
            await self.service.record(event)
        except Exception as exc:
            log.error("audit event not written (%s): %s", event.kind, exc, exc_info=not isinstance(exc, ApprovalError))
