"""One tool call's path through the gateway: policy, quota, hold for approval, forward, audit."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types

from approvals.audit import Event, canonical_json
from approvals.errors import AlreadyDecided, ApprovalError, StoreUnavailable
from approvals.service import ApprovalService, arguments_digest
from approvals.states import Status
from approvals.views import NewRequest, RequestView
from gateway.durations import format_duration
from gateway.policy import Evaluation
from gateway.policy_store import PolicyStore
from gateway.ratelimit import RateLimiter, Refusal, Reservation
from gateway.results import error_result, text_of
from gateway.upstreams import Route, UpstreamSet

log = logging.getLogger(__name__)

Progress = Callable[[float, float | None, str | None], Awaitable[None]]


@dataclass(frozen=True)
class Caller:
    """Who is calling, and how to tell that they went away."""

    agent: str
    session: str
    disconnected: anyio.Event | None = None


class _Progress:
    """Keeps progress values increasing across our own notices and relayed upstream progress."""

    def __init__(self, send: Progress | None) -> None:
        self._send = send
        self.value = 0.0

    async def notice(self, message: str) -> None:
        self.value += 1
        await self._emit(self.value, None, message)

    async def relay(self, progress: float, total: float | None, message: str | None) -> None:
        base = self.value
        await self._emit(base + progress, None if total is None else base + total, message)

    async def _emit(self, value: float, total: float | None, message: str | None) -> None:
        if self._send is None:
            return
        try:
            await self._send(value, total, message)
        except Exception as exc:  # a client that cannot take progress still gets its result
            log.debug("progress not delivered: %s", exc)


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
    ) -> None:
        self.service = service
        self.policies = policies
        self.upstreams = upstreams
        self.limiter = limiter
        self.progress_interval = progress_interval
        self.inbox_url = inbox_url

    def visible_tools(self) -> list[types.Tool]:
        policy = self.policies.current
        return [t for t in self.upstreams.tools() if not policy.is_hidden(t.name)]

    async def call(
        self, caller: Caller, tool: str, arguments: dict[str, Any], progress: Progress | None = None
    ) -> types.CallToolResult:
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

        if evaluation.action == "hidden":
            await self._audit(event("call.hidden", "denied", evaluation.message))
            return error_result(f"[POLICY DENIED] {evaluation.message}")
        if evaluation.action == "deny":
            await self._audit(event("call.denied", "denied", evaluation.message))
            return error_result(f"[POLICY DENIED] {evaluation.message}")
        if route is None:
            message = f"no tool named '{tool}' is available through this gateway"
            await self._audit(event("call.unknown", "denied", message))
            return error_result(f"[UNKNOWN TOOL] {message}")

        reservation = self.limiter.reserve(tool, evaluation.limits, grant=caller.agent, session=caller.session)
        if isinstance(reservation, Refusal):
            await self._audit(
                event(
                    "call.limited",
                    "limited",
                    reservation.message,
                    retry_after=round(reservation.retry_after, 1),
                )
            )
            return error_result(f"[RATE LIMITED] {reservation.message}")

        if evaluation.action == "allow":
            result = await self._forward(route, arguments, _Progress(progress))
            if result.is_error:
                reservation.release()
            outcome = "failed" if result.is_error else "allowed"
            await self._audit(event("call.allowed", outcome, text_of(result, 200) if result.is_error else "forwarded"))
            return result

        return await self._hold(caller, tool, route, arguments, evaluation, reservation, _Progress(progress))

    # ---- holding

    async def _hold(
        self,
        caller: Caller,
        tool: str,
        route: Route,
        arguments: dict[str, Any],
        evaluation: Evaluation,
        reservation: Reservation,
        progress: _Progress,
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
                )
            )
        except ApprovalError as exc:
            reservation.release()
            log.error("cannot park %s for approval, refusing it: %s", tool, exc)
            return error_result(
                "[APPROVAL UNAVAILABLE] this call needs human approval but the approval queue cannot be "
                "reached; the call was not executed. Try again later."
            )
        try:
            final = await self._wait(request, caller, progress)
        except BaseException:
            # The client cancelled the call or its connection ended: withdraw the request for good.
            with anyio.CancelScope(shield=True):
                reservation.release()
                await self._withdraw(request.id, "the agent cancelled the call")
            raise
        if final is None:
            reservation.release()
            await self._withdraw(request.id, "the agent disconnected")
            return error_result("[APPROVAL CANCELLED] the agent went away; the call was not executed.")
        result = await self._conclude(final, route, progress, caller)
        if result.is_error:
            reservation.release()
        return result

    async def _wait(self, request: RequestView, caller: Caller, progress: _Progress) -> RequestView | None:
        """Wait for a decision. None means the agent went away first."""
        who = _who(request)
        view = request
        while True:
            remaining = (request.expires_at - self.service.clock()).total_seconds()
            if remaining <= 0:
                await self._try_expire(request.id)
                # Still pending here means the store could not record the expiry; _conclude fails closed.
                return await self._latest(request.id, view)
            await progress.notice(
                f"Waiting for approval by {who} (request {request.id}); expires at "
                f"{request.expires_at:%H:%M:%S} UTC, in {format_duration(remaining)}. Inbox: {self.inbox_url}"
            )
            step = min(self.progress_interval, remaining)
            gone = caller.disconnected
            with anyio.move_on_after(step):
                if gone is None:
                    view = await self._wait_step(request.id, view, step)
                else:
                    settled = await _race(self._wait_step(request.id, view, step), gone)
                    if settled is None:
                        return None
                    view = settled
            if view.status != Status.PENDING:
                return view

    async def _wait_step(self, request_id: str, view: RequestView, step: float) -> RequestView:
        try:
            return await self.service.wait_for_change(request_id, Status.PENDING, within=step)
        except StoreUnavailable as exc:
            log.warning("waiting on %s: %s", request_id, exc)
            await anyio.sleep(step)
            return view

    async def _latest(self, request_id: str, fallback: RequestView) -> RequestView:
        try:
            return await self.service.get(request_id)
        except StoreUnavailable:
            return fallback

    async def _try_expire(self, request_id: str) -> None:
        try:
            await self.service.expire(request_id)
        except ApprovalError as exc:
            log.warning("could not record expiry of %s: %s", request_id, exc)

    async def _withdraw(self, request_id: str, why: str) -> None:
        try:
            await self.service.cancel(request_id, why)
        except ApprovalError as exc:
            log.error("could not record withdrawal of %s: %s", request_id, exc)

    async def _conclude(
        self, view: RequestView, route: Route, progress: _Progress, caller: Caller
    ) -> types.CallToolResult:
        if view.status == Status.APPROVED:
            return await self._execute(view, route, progress, caller)
        if view.status == Status.REJECTED:
            reason = view.decision_reason or "no reason given"
            return error_result(
                f"[APPROVAL REJECTED] by {view.decided_by}: {reason}",
                {
                    "status": "rejected",
                    "approval_id": view.id,
                    "decided_by": view.decided_by,
                    "reason": view.decision_reason,
                },
            )
        if view.status == Status.EXPIRED:
            return error_result(
                f"[APPROVAL EXPIRED] no decision within {format_duration(view.timeout_seconds)}; "
                "the call was not executed.",
                {"status": "expired", "approval_id": view.id},
            )
        if view.status == Status.PENDING:
            return error_result(
                "[APPROVAL UNAVAILABLE] the approval store could not be reached to settle this request; "
                "the call was not executed.",
                {"status": "unknown", "approval_id": view.id},
            )
        why = f" ({view.decision_reason})" if view.decision_reason else ""
        return error_result(
            f"[APPROVAL {view.status.value.upper()}] request {view.id} is {view.status.value}{why}; "
            "the call was not executed.",
            {"status": view.status.value, "approval_id": view.id},
        )

    async def _execute(
        self, view: RequestView, route: Route, progress: _Progress, caller: Caller
    ) -> types.CallToolResult:
        approved_arguments = view.arguments
        if _gone(caller):
            await self._withdraw(view.id, "the agent disconnected before execution began")
            return error_result(_NOT_FORWARDED)
        try:
            try:
                await self.service.begin_execution(view.id, arguments_digest(canonical_json(approved_arguments)))
            except ApprovalError as exc:
                return error_result(f"[APPROVAL ERROR] the approved call could not start: {exc}; it was not executed.")
            if _gone(caller):
                # The agent left while the start was being recorded: never forward for nobody.
                await self._settle_unforwarded(view.id)
                return error_result(_NOT_FORWARDED)
            await progress.notice(f"Approved by {view.decided_by}; executing {view.tool}.")
        except BaseException:
            # Cancelled before forwarding: lapse the approval, or, if `executing` was just recorded, end it
            # there; the request must not stay `approved` or `executing` with nobody to run it.
            with anyio.CancelScope(shield=True):
                await self._withdraw(view.id, "the agent cancelled the call")
                await self._settle_unforwarded(view.id)
            raise
        # Once forwarded, see the call through and record its outcome even if the agent cancels meanwhile,
        # so the request never stays `executing` with the upstream's answer lost. The call timeout bounds this.
        with anyio.CancelScope(shield=True):
            result = await self._forward(route, approved_arguments, progress)
            summary = text_of(result, 200)
            try:
                await self.service.finish_execution(
                    view.id,
                    ok=not result.is_error,
                    result=result.model_dump(mode="json", by_alias=True, exclude_none=True),
                    error=summary if result.is_error else None,
                    summary=summary or "executed",
                )
            except ApprovalError as exc:
                log.error("executed %s but could not record its result: %s", view.id, exc)
        return result

    async def _settle_unforwarded(self, request_id: str) -> None:
        """`executing` was (perhaps) recorded but nothing was forwarded: record that it did not run."""
        try:
            await self.service.finish_execution(
                request_id, ok=False, result=None, error=_NOT_FORWARDED, summary=_NOT_FORWARDED
            )
        except AlreadyDecided:
            pass  # the start was never recorded, so there is nothing to settle
        except ApprovalError as exc:
            log.error("could not record that %s was not forwarded: %s", request_id, exc)

    async def _forward(self, route: Route, arguments: dict[str, Any], progress: _Progress) -> types.CallToolResult:
        return await route.upstream.call(route.upstream_tool, arguments, progress.relay)

    async def _audit(self, event: Event) -> None:
        try:
            await self.service.record(event)
        except ApprovalError as exc:
            log.error("audit event not written (%s): %s", event.kind, exc)


async def _race(step: Awaitable[RequestView], gone: anyio.Event) -> RequestView | None:
    """Run a wait step, but give up as soon as `gone` is set (then return None)."""
    result: list[RequestView] = []
    async with anyio.create_task_group() as tg:

        async def run_step() -> None:
            result.append(await step)
            tg.cancel_scope.cancel()

        async def watch() -> None:
            await gone.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(run_step)
        tg.start_soon(watch)
    return result[0] if result and not gone.is_set() else None


def _gone(caller: Caller) -> bool:
    return caller.disconnected is not None and caller.disconnected.is_set()


_NOT_FORWARDED = "[APPROVAL CANCELLED] the agent went away before the approved call was forwarded; it was not executed."


def _who(request: RequestView) -> str:
    people = ", ".join(request.approvers) if request.approvers else "any approver"
    return people if request.quorum <= 1 else f"{request.quorum} of {people}"
