"""One tool call's path through the gateway: policy, quota, forward or park, audit.

Held calls are handed to `gateway.held.HeldCalls`, which owns them from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import mcp_types as types

from approvals.audit import Event, canonical_json
from approvals.durations import format_duration
from approvals.errors import AlreadyOpen, ApprovalError, TooManyPending
from approvals.service import ApprovalService, arguments_digest, new_request_id
from approvals.views import NewRequest, RequestView
from gateway import client_approval, tracing
from gateway.arguments import check_call
from gateway.caller import Caller, Progress, ProgressLine
from gateway.config import DEFAULT_REPEAT_WINDOW
from gateway.config_limits import AgentLimitSettings
from gateway.context import ApprovalContext, HeldCall
from gateway.errors import CallRefused, Tag
from gateway.fair_share import COUNTED, RefusalBudget
from gateway.granted import GrantedCalls
from gateway.held import HeldCalls
from gateway.identity import AgentDirectory, AgentIdentity
from gateway.policy_context import REASON_ARGUMENT, REASON_LIMIT, with_reason
from gateway.policy_store import PolicyStore
from gateway.policy_withdrawal import PolicyWithdrawals
from gateway.ratelimit import RateLimiter, Refusal, Reservation
from gateway.results import PENDING_SCHEMA, STATUS_TOOL, WAIT_TOOL, answer, gateway_tools, text_of
from gateway.schemas import admit_alternative
from gateway.shadow import ShadowCall, ShadowRun
from gateway.upstreams import Route, Upstreams

log = logging.getLogger(__name__)

__all__ = ["CallHandler", "Caller", "Progress"]


@dataclass(frozen=True, slots=True)
class _Parked:
    """A call parked for approval, and the wait that follows it (not started yet)."""

    wait: Coroutine[Any, Any, types.CallToolResult]


class CallHandler:
    def __init__(
        self,
        *,
        service: ApprovalService,
        policies: PolicyStore,
        upstreams: Upstreams,
        limiter: RateLimiter,
        held: HeldCalls,
        withdrawals: PolicyWithdrawals,
        context: ApprovalContext | None = None,
        shadow: ShadowRun | None = None,
        agent_limits: AgentLimitSettings | None = None,
        audit_unavailable: str = "refuse",
        repeat_window: float = DEFAULT_REPEAT_WINDOW,
        agents: AgentDirectory | None = None,
    ) -> None:
        self.service = service
        self.agents = agents or AgentDirectory()
        self.policies = policies
        self.upstreams = upstreams
        self.limiter = limiter
        self.held = held
        self.withdrawals = withdrawals
        self.context = context or ApprovalContext(None)
        self.shadow = shadow
        self.agent_limits = agent_limits or AgentLimitSettings()
        self.refusals = RefusalBudget(self.agent_limits.max_refusals_per_agent, self.agent_limits.refusal_window)
        self.audit_unavailable = audit_unavailable
        self.repeat_window = repeat_window
        self.granted = GrantedCalls(service.grants, self._audit)

    # ---- the catalog

    def visible_tools(self, agent: AgentIdentity | None = None) -> list[types.Tool]:
        """The catalog as `agent` sees it; with `list_only_callable`, without the tools refused to it outright."""
        policy = self.policies.current
        ours = gateway_tools()
        reserved = {t.name for t in ours}
        unlisted = policy.list_only_callable and agent is not None
        tools = []
        for tool in self.upstreams.tools():
            if tool.name in reserved or policy.is_hidden(tool.name):
                continue
            if unlisted and policy.refuses_outright(tool.name, agent):
                continue
            if self.may_hold(tool.name):
                # A call that may be held may become a task (gateway.tasks) for a client that asks for one.
                tool = tool.model_copy(update={"execution": types.ToolExecution(task_support="optional")})
                if tool.output_schema is not None:
                    # A held call may come back as a pending result; say so, or validating clients reject it.
                    widened = admit_alternative(tool.output_schema, PENDING_SCHEMA)
                    tool = tool.model_copy(update={"output_schema": widened})
            asks = policy.agent_reason(tool.name)
            if asks is not None:
                tool = tool.model_copy(update={"input_schema": with_reason(tool.input_schema, asks)})
            tools.append(tool)
        return [*tools, *ours]

    def may_hold(self, name: str) -> bool:
        policy = self.policies.current
        listed = policy.tool_policy(name)
        return bool(policy.all_tools.require_approval) or bool(listed and listed.require_approval)

    # ---- a call

    async def call(
        self, caller: Caller, tool: str, arguments: dict[str, Any], progress: Progress | None = None
    ) -> types.CallToolResult:
        """The result for the agent; a refusal raises CallRefused, which the MCP server turns into its result."""
        wait = self.refusals.wait(caller.agent)
        if wait is not None:
            # Past its refusal budget the agent is refused before anything is parsed or stored (gateway.fair_share).
            message = self.refusals.message(wait)
            if self.refusals.first_of_block(caller.agent, wait):
                detail = {"limit": "refusals", "retry_after": round(wait, 1)}
                await self._audit(
                    Event(kind="call.limited", outcome="limited", message=message, agent=caller.agent, detail=detail)
                )
            raise CallRefused(Tag.RATE_LIMITED, message)
        try:
            outcome = await self._call(caller, tool, arguments, ProgressLine(progress))
            # A parked call is followed here, once the frame that parked it (policy, context, closures) is gone:
            # thousands wait at once, each for minutes.
            return await outcome.wait if isinstance(outcome, _Parked) else outcome
        except CallRefused as refusal:
            if refusal.tag in COUNTED:
                self.refusals.note(caller.agent)
            raise

    async def _call(
        self, caller: Caller, tool: str, arguments: dict[str, Any], line: ProgressLine
    ) -> types.CallToolResult | _Parked:
        arguments, agent_reason = await self._take_reason(caller, tool, arguments)
        # Hidden tools are checked without their schema, so a refusal never shows that the tool exists.
        schema = None if self.policies.current.is_hidden(tool) else self.upstreams.input_schema(tool)
        invalid = check_call(tool, arguments, schema, max_bytes=self.agent_limits.max_argument_bytes)
        if invalid is not None:
            await self._audit(invalid.event(caller.agent, tool, arguments))
            raise CallRefused(Tag.INVALID_ARGUMENTS, invalid.message)
        if tool in (STATUS_TOOL, WAIT_TOOL):
            return await self.held.gateway_tool(caller, tool, arguments, line)
        policy = self.policies.current
        with tracing.step("policy") as span:
            evaluation = policy.evaluate(tool, arguments, schema, agent=caller.identity)
            span.set_attributes({"countersign.action": evaluation.action, "countersign.rule": evaluation.rule or ""})
        route = self.upstreams.route(tool)
        upstream_name = route.upstream.name if route else None
        arguments_json = canonical_json(arguments)

        def event(kind: str, outcome: str, message: str, **detail: Any) -> Event:
            return Event(
                kind=kind,
                outcome=outcome,
                message=message,
                agent=caller.agent,
                tool=tool,
                upstream=upstream_name,
                arguments=arguments_json,
                detail={"rule": evaluation.rule, "policy_version": policy.version, **detail},
            )

        async def audit(kind: str, outcome: str, message: str, **detail: Any) -> None:
            await self._audit(event(kind, outcome, message, **detail))

        async def shadow(limited: str | None = None) -> None:
            # The candidate policy judges the same call once the live decision is known; it changes nothing here.
            if self.shadow is not None and self.shadow.active:
                seen = ShadowCall(caller.agent, caller.session, tool, upstream_name, arguments, schema, caller.identity)
                await self.shadow.observe(seen, policy, evaluation, limited=limited)

        if evaluation.action in ("hidden", "deny"):
            await shadow()
            await audit(f"call.{'hidden' if evaluation.action == 'hidden' else 'denied'}", "denied", evaluation.message)
            raise CallRefused(Tag.POLICY_DENIED, evaluation.message)
        if route is None:
            connecting = self.upstreams.connecting_for(tool)
            if connecting:
                names = " and ".join(f"'{name}'" for name in connecting)
                message = (
                    f"no tool named '{tool}' is known yet: upstream {names} has not connected since the gateway "
                    "started; the call was not executed. Try again in a few seconds."
                )
                await audit("call.unavailable", "failed", message)
                raise CallRefused(Tag.UPSTREAM_UNAVAILABLE, message)
            message = f"no tool named '{tool}' is available through this gateway"
            await audit("call.unknown", "denied", message)
            raise CallRefused(Tag.UNKNOWN_TOOL, message)

        offer = evaluation.approval.grants if evaluation.action == "hold" and evaluation.approval else None
        if evaluation.action == "hold":
            since = self.service.clock() - timedelta(seconds=self.repeat_window)
            earlier = await self.service.find_repeat(
                caller.agent, tool, arguments_digest(arguments_json), ended_since=since
            )
            if earlier is not None and not (
                earlier.is_terminal and await self.granted.has_live(caller.agent, tool, arguments, offer)
            ):
                # The same call again: its open request, or the outcome of the one that just ended; never a second.
                # Under a live standing approval an ended call's repeat runs again: the approver allowed that.
                await shadow()
                return await self._repeat(earlier, caller, line)

        reservation = await self.limiter.reserve(tool, evaluation.limits, grant=caller.agent, session=caller.session)
        await shadow(reservation.message if isinstance(reservation, Refusal) else None)
        if isinstance(reservation, Refusal):
            await audit("call.limited", "limited", reservation.message, retry_after=round(reservation.retry_after, 1))
            raise CallRefused(Tag.RATE_LIMITED, reservation.message)

        if evaluation.action == "allow":
            await self._record_before_forwarding(event("call.allowed", "allowed", "forwarded"), route, reservation)
            call = route.upstream.call(route.upstream_tool, arguments, line.relay)
            result = await tracing.traced("upstream", call, upstream=route.upstream.name, tool=route.upstream_tool)
            if result.is_error:
                await reservation.release()
                await audit("call.failed", "failed", text_of(result, 200))
            return result

        if offer is not None:
            allowed = event("call.granted", "allowed", "forwarded under a standing approval")
            granted = await self.granted.run(caller, route, tool, arguments, offer, allowed, reservation, line)
            if granted is not None:
                return granted

        approval = evaluation.approval
        assert approval is not None
        if client_approval.only_client(approval.channels) and not client_approval.can_ask(caller):
            await reservation.release()
            message = client_approval.unreachable_message(tool)
            await audit("call.denied", "denied", message, channel=client_approval.CLIENT)
            raise CallRefused(Tag.POLICY_DENIED, message)
        request_id = new_request_id()
        # Before the request exists, so no channel announces it without what the approver needs (each bounded).
        shown = await self.context.gather(approval, HeldCall(request_id, caller.agent, route.upstream.name, arguments))
        try:
            request = await tracing.traced(
                "hold",
                self.service.create(
                    NewRequest(
                        id=request_id,
                        title=shown.title,
                        agent_reason=agent_reason,
                        context=shown.context,
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
                        grant_offer=approval.grants,
                        editable=approval.editable,
                        escalation=approval.escalate,
                        remind_before_seconds=approval.remind_before_seconds,
                    ),
                    max_pending=self.agent_limits.max_pending_per_agent,
                ),
            )
        except TooManyPending as exc:
            await reservation.release()
            message = (
                f"you already have {exc.limit} requests waiting for approval, the most one agent may have "
                "(agent_limits.max_pending_per_agent); this call was not executed or parked. Wait for those "
                "to be decided (countersign_approval_wait) before asking for more"
            )
            await audit("call.limited", "limited", message, limit="pending")
            raise CallRefused(Tag.RATE_LIMITED, message) from exc
        except AlreadyOpen as exc:
            # An identical call parked it a moment before this one (the database keeps one open request per call).
            await reservation.release()
            return await self._repeat(await self.service.get(exc.request_id), caller, line)
        except Exception as exc:
            # Whatever failed, the call is not parked, so it is refused: fail closed.
            await reservation.release()
            log.error(
                "cannot park %s for approval, refusing it: %s", tool, exc, exc_info=not isinstance(exc, ApprovalError)
            )
            raise CallRefused(
                Tag.APPROVAL_UNAVAILABLE,
                "this call needs human approval but the approval queue cannot be reached; the call was not "
                "executed. Try again later.",
            ) from exc
        if self.policies.current is not policy:
            # The policy changed while the call was being parked, perhaps after the reload's sweep had looked.
            try:
                if await self.withdrawals.withdraw_if_refused(request):
                    request = await self.service.get(request.id)
            except ApprovalError as exc:  # it is judged again before it could start
                log.error("could not judge %s by the new policy: %s", request.id, exc)
        tracing.annotate(approval_id=request.id)
        hold_limit = self.held.hold_limit(caller.agent, request)
        if not client_approval.asks(request, caller):
            return _Parked(self.held.follow(request, caller, line, hold_limit=hold_limit, reservation=reservation))
        return _Parked(
            client_approval.alongside(
                self.service,
                request,
                caller,
                lambda: self.held.follow(request, caller, line, hold_limit=hold_limit, reservation=reservation),
            )
        )

    async def _take_reason(
        self, caller: Caller, tool: str, arguments: dict[str, Any]
    ) -> tuple[dict[str, Any], str | None]:
        """The arguments without the agent's reason, and the reason; the upstream never sees it."""
        # The gateway's own tools are never held, so they never carry a reason, whatever all_tools says.
        asks = None if tool in (STATUS_TOOL, WAIT_TOOL) else self.policies.current.agent_reason(tool)
        if asks is None:
            return arguments, None
        rest = {key: value for key, value in arguments.items() if key != REASON_ARGUMENT}
        given = arguments.get(REASON_ARGUMENT)
        problem = None
        if given is None and asks == "required":
            problem = f'this tool needs your reason: add "{REASON_ARGUMENT}", a sentence for the human who approves it'
        elif given is not None and (not isinstance(given, str) or len(given) > REASON_LIMIT):
            problem = f'"{REASON_ARGUMENT}" must be a string of at most {REASON_LIMIT} characters'
        elif isinstance(given, str) and not given.strip() and asks == "required":
            problem = f'"{REASON_ARGUMENT}" is empty: say in a sentence why you are making this call'
        if problem is not None:
            message = f"{problem}; the call was not executed"
            event = Event(
                kind="call.invalid",
                outcome="denied",
                message=message,
                agent=caller.agent,
                tool=tool,
                arguments=canonical_json(rest),
            )
            await self._audit(event)
            raise CallRefused(Tag.INVALID_ARGUMENTS, message)
        return rest, (given.strip() or None) if isinstance(given, str) else None

    async def _record_before_forwarding(self, event: Event, route: Route, reservation: Reservation) -> None:
        """An allowed call is audited before it is forwarded: a call the gateway cannot record does not run."""
        try:
            await self.service.record(event)
        except Exception as exc:
            if self.audit_unavailable == "allow_read_only" and route.read_only:
                log.warning("audit log unavailable, forwarding read-only %s unrecorded: %s", event.tool, exc)
                return
            await reservation.release()
            log.error(
                "audit log unavailable, refusing %s: %s", event.tool, exc, exc_info=not isinstance(exc, ApprovalError)
            )
            raise CallRefused(
                Tag.AUDIT_UNAVAILABLE,
                "the gateway cannot write its audit log now, and it runs no call it cannot record; the call was "
                "not executed. Try again later",
            ) from exc

    async def _repeat(self, earlier: RequestView, caller: Caller, line: ProgressLine) -> types.CallToolResult:
        """A repeat of a call that has a request: wait on it while it is open, else get how it ended again."""
        if not earlier.is_terminal:
            return await self.held.reattach(earlier, caller, line, "repeated the call")
        until = earlier.status_changed_at + timedelta(seconds=self.repeat_window)
        note = (
            f" (This is request {earlier.id} again: an identical call gets its outcome until {until:%H:%M:%S} UTC"
            " instead of a new request.)"
        )
        message = f"repeated within {format_duration(self.repeat_window)} of its end: answered as {earlier.status}"
        event = Event(
            kind="call.repeated",
            outcome="repeated",
            message=message,
            agent=caller.agent,
            tool=earlier.tool,
            upstream=earlier.upstream,
            request_id=earlier.id,
            arguments=earlier.arguments_json,
        )
        await self._audit(event)
        return answer(earlier, note)

    async def _audit(self, event: Event) -> None:
        # Often runs after the call was forwarded: an audit failure must never turn a result the
        # upstream already produced into an error, or the agent would retry a call that ran.
        try:
            await self.service.record(event)
        except Exception as exc:
            log.error("audit event not written (%s): %s", event.kind, exc, exc_info=not isinstance(exc, ApprovalError))
