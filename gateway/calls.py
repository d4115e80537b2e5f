"""One tool call's path through the gateway: policy, quota, hold for approval (or re-attach), forward, audit."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import mcp_types as types
from anyio.abc import TaskGroup

from approvals.audit import Event, canonical_json
from approvals.errors import ApprovalError, RequestNotFound
from approvals.service import ApprovalService, arguments_digest
from approvals.states import Status
from approvals.views import NewRequest, RequestView
from gateway.holding import Caller, Holder, Progress, ProgressLine
from gateway.policy import ApprovalSettings, Evaluation
from gateway.policy_store import PolicyStore
from gateway.ratelimit import RateLimiter, Refusal, Reservation
from gateway.results import (
    PENDING_SCHEMA,
    STATUS_TOOL,
    WAIT_TOOL,
    error_result,
    gateway_tools,
    pending_result,
    status_result,
    text_of,
)
from gateway.schemas import admit_alternative
from gateway.upstreams import Route, UpstreamSet

log = logging.getLogger(__name__)

__all__ = ["CallHandler", "Caller", "Progress"]

_NOT_RUN = frozenset({Status.REJECTED, Status.EXPIRED, Status.CANCELLED, Status.FAILED})


class CallHandler:
    def __init__(
        self,
        *,
        service: ApprovalService,
        policies: PolicyStore,
        upstreams: UpstreamSet,
        limiter: RateLimiter,
        progress_interval: float,
        inbox_url: str,
        agent_max_hold: dict[str, float] | None = None,
    ) -> None:
        self.service = service
        self.policies = policies
        self.upstreams = upstreams
        self.limiter = limiter
        self.agent_max_hold = dict(agent_max_hold or {})
        self.holder = Holder(service, upstreams, progress_interval=progress_interval, inbox_url=inbox_url)
        # Quota taken by held calls, given back when their request ends without running.
        self._reservations: dict[str, Reservation] = {}
        self._tasks: TaskGroup | None = None
        service.add_listener(self)

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
        if tool in (STATUS_TOOL, WAIT_TOOL):
            return await self._gateway_tool(caller, tool, arguments, ProgressLine(progress))
        evaluation = self.policies.current.evaluate(tool, arguments)
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
                detail={"rule": evaluation.rule, **detail},
            )

        if evaluation.action in ("hidden", "deny"):
            await self._audit(
                event(f"call.{'hidden' if evaluation.action == 'hidden' else 'denied'}", "denied", evaluation.message)
            )
            return error_result(f"[POLICY DENIED] {evaluation.message}")
        if route is None:
            message = f"no tool named '{tool}' is available through this gateway"
            await self._audit(event("call.unknown", "denied", message))
            return error_result(f"[UNKNOWN TOOL] {message}")

        if evaluation.action == "hold":
            existing = await self._open_request(caller, tool, arguments_json)
            if existing is not None:
                # The same call again: wait for the request already made instead of asking twice.
                return await self._reattach(existing, caller, evaluation, ProgressLine(progress))

        reservation = self.limiter.reserve(tool, evaluation.limits, grant=caller.agent, session=caller.session)
        if isinstance(reservation, Refusal):
            retry = round(reservation.retry_after, 1)
            await self._audit(event("call.limited", "limited", reservation.message, retry_after=retry))
            return error_result(f"[RATE LIMITED] {reservation.message}")

        if evaluation.action == "allow":
            result = await route.upstream.call(route.upstream_tool, arguments, ProgressLine(progress).relay)
            if result.is_error:
                reservation.release()
            outcome = "failed" if result.is_error else "allowed"
            await self._audit(event("call.allowed", outcome, text_of(result, 200) if result.is_error else "forwarded"))
            return result

        return await self._hold(caller, tool, route, arguments, evaluation, reservation, ProgressLine(progress))

    # ---- holding

    async def _hold(
        self,
        caller: Caller,
        tool: str,
        route: Route,
        arguments: dict[str, Any],
        evaluation: Evaluation,
        reservation: Reservation,
        progress: ProgressLine,
    ) -> types.CallToolResult:
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
                )
            )
        except Exception as exc:
            # Whatever failed, the call is not parked, so it is refused: fail closed.
            reservation.release()
            log.error(
                "cannot park %s for approval, refusing it: %s", tool, exc, exc_info=not isinstance(exc, ApprovalError)
            )
            return error_result(
                "[APPROVAL UNAVAILABLE] this call needs human approval but the approval queue cannot be "
                "reached; the call was not executed. Try again later."
            )
        self._reservations[request.id] = reservation
        return await self.holder.hold(
            request, caller, progress, max_hold=self._max_hold(caller, approval), keep_on_cancel=approval.keep_on_cancel
        )

    async def _open_request(self, caller: Caller, tool: str, arguments_json: str) -> RequestView | None:
        try:
            return await self.service.find_open(caller.agent, tool, arguments_digest(arguments_json))
        except ApprovalError as exc:
            log.warning("could not look for an open request to re-attach to: %s", exc)
            return None

    async def _reattach(
        self, request: RequestView, caller: Caller, evaluation: Evaluation, progress: ProgressLine
    ) -> types.CallToolResult:
        approval = evaluation.approval or ApprovalSettings()
        return await self._wait_for(
            request, caller, progress, self._max_hold(caller, approval), approval, "repeated the call"
        )

    async def _wait_for(
        self,
        request: RequestView,
        caller: Caller,
        progress: ProgressLine,
        max_hold: float | None,
        approval: ApprovalSettings,
        how: str,
    ) -> types.CallToolResult:
        if request.status in (Status.PENDING, Status.APPROVED):
            try:
                request = await self.service.attach(request.id, caller.agent, how)
            except ApprovalError as exc:
                log.warning("could not mark %s as waited for: %s", request.id, exc)
        if request.status == Status.PENDING:
            return await self.holder.hold(
                request, caller, progress, max_hold=max_hold, keep_on_cancel=approval.keep_on_cancel
            )
        return await self.holder.conclude(request, caller, progress, keep_on_cancel=approval.keep_on_cancel)

    def _max_hold(self, caller: Caller, approval: ApprovalSettings) -> float | None:
        limits = [v for v in (self.agent_max_hold.get(caller.agent), approval.max_hold_seconds) if v is not None]
        return min(limits) if limits else None

    # ---- the gateway's own tools

    async def _gateway_tool(
        self, caller: Caller, tool: str, arguments: dict[str, Any], progress: ProgressLine
    ) -> types.CallToolResult:
        approval_id = arguments.get("approval_id")
        if not isinstance(approval_id, str) or not approval_id:
            return error_result(f"[INVALID ARGUMENTS] {tool} needs approval_id, the id a held call returned")
        try:
            request = await self.service.get(approval_id)
        except RequestNotFound:
            request = None
        except ApprovalError as exc:
            return error_result(f"[APPROVAL UNAVAILABLE] cannot read approval requests right now: {exc}")
        if request is None or request.agent != caller.agent:
            # Another agent's request is as invisible as one that does not exist.
            return error_result(f"[NOT FOUND] you have no approval request {approval_id!r}")
        await self._audit(
            Event(
                kind="call.gateway",
                outcome="allowed",
                message=f"{tool} for {approval_id}",
                agent=caller.agent,
                tool=tool,
                request_id=approval_id,
                arguments=canonical_json(arguments),
            )
        )
        if tool == STATUS_TOOL:
            return status_result(request)
        timeout = arguments.get("timeout_seconds")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0):
            return error_result("[INVALID ARGUMENTS] timeout_seconds must be a number of seconds, 0 or more")
        evaluation = self.policies.current.evaluate(request.tool, request.arguments)
        approval = evaluation.approval or ApprovalSettings()
        limits = [v for v in (self._max_hold(caller, approval), timeout) if v is not None]
        max_hold = float(min(limits)) if limits else None
        if request.status == Status.PENDING and max_hold == 0:
            return pending_result(request, wait_seconds=self._max_hold(caller, approval))
        return await self._wait_for(request, caller, progress, max_hold, approval, f"called {WAIT_TOOL}")

    # ---- background work: unattended runs, and quota for requests that end without running

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            try:
                await anyio.sleep_forever()
            finally:
                self._tasks = None

    async def request_changed(self, request: RequestView, change: str) -> None:
        if request.status in _NOT_RUN or request.status == Status.EXECUTED:
            reservation = self._reservations.pop(request.id, None)
            if reservation is not None and request.status in _NOT_RUN:
                reservation.release()
        if (
            request.status == Status.APPROVED
            and request.run_unattended
            and not request.agent_waiting
            and self._tasks is not None
        ):
            self._tasks.start_soon(self.holder.run_unattended, request)

    async def _audit(self, event: Event) -> None:
        # Often runs after the call was forwarded: an audit failure must never turn a result the
        # upstream already produced into an error, or the agent would retry a call that ran.
        try:
            await self.service.record(event)
        except Exception as exc:
            log.error("audit event not written (%s): %s", event.kind, exc, exc_info=not isinstance(exc, ApprovalError))
