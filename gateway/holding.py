"""Holding a call: waiting for the decision, bounded holds, the agent leaving, and running it once.

One `Holder` serves every way an agent can be waiting for a request: the original held call, the
same call repeated (re-attach), the wait tool, and no agent at all (an unattended run). Whoever
starts the execution wins a compare-and-set, so an approved call runs at most once however many
of them are waiting, on however many replicas.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import mcp_types as types

from approvals.audit import canonical_json
from approvals.errors import AlreadyDecided, ApprovalError, StoreUnavailable
from approvals.service import ApprovalService, arguments_digest
from approvals.states import Status
from approvals.views import RequestView
from gateway.durations import format_duration
from gateway.results import error_result, pending_result, stored_result, text_of
from gateway.upstreams import UpstreamSet

log = logging.getLogger(__name__)

Progress = Callable[[float, float | None, str | None], Awaitable[None]]

# A client that gives up on its own read timeout cancels with a reason like "Request timed out" or
# "timed out after 60.0s"; that is the agent detaching, not withdrawing its request.
_TIMEOUT_REASON = re.compile(r"time[sd]?\s*out|timeout", re.IGNORECASE)


@dataclass(frozen=True)
class Caller:
    """Who is calling, and how to tell that they went away or withdrew."""

    agent: str
    session: str
    disconnected: anyio.Event | None = None
    # Returns the reason when the client explicitly cancelled this request (notifications/cancelled).
    cancel_reason: Callable[[], Awaitable[str | None]] | None = None

    @property
    def gone(self) -> bool:
        return self.disconnected is not None and self.disconnected.is_set()

    async def withdrew(self) -> bool:
        """True when the agent cancelled on purpose; False when it dropped or timed out (it may come back)."""
        if self.cancel_reason is None:
            return False
        reason = await self.cancel_reason()
        return reason is not None and not _TIMEOUT_REASON.search(reason)


class ProgressLine:
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


class _Stop(enum.Enum):
    GONE = "gone"  # the agent's connection dropped
    HOLD_LIMIT = "hold_limit"  # held as long as this agent can wait


_NOT_FORWARDED = (
    "[APPROVAL DETACHED] the agent went away before the approved call was forwarded; it was not executed "
    "and can still be picked up."
)


class Holder:
    def __init__(
        self, service: ApprovalService, upstreams: UpstreamSet, *, progress_interval: float, inbox_url: str
    ) -> None:
        self.service = service
        self.upstreams = upstreams
        self.progress_interval = progress_interval
        self.inbox_url = inbox_url

    async def hold(
        self,
        request: RequestView,
        caller: Caller,
        progress: ProgressLine,
        *,
        max_hold: float | None,
        keep_on_cancel: bool,
    ) -> types.CallToolResult:
        """Wait on `request` for `caller` and return what the agent should get."""
        try:
            outcome = await self._wait(request, caller, progress, max_hold)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._leave(request.id, caller, keep_on_cancel)
            raise
        if outcome is _Stop.GONE:
            await self._detach(request.id, "the agent's connection dropped")
            return error_result("[APPROVAL DETACHED] the connection closed; the request is still pending.")
        if outcome is _Stop.HOLD_LIMIT:
            view = await self._detach(request.id, "held as long as the agent can wait; it was told to check back")
            return pending_result(view or request, wait_seconds=max_hold)
        return await self.conclude(outcome, caller, progress, keep_on_cancel=keep_on_cancel, max_hold=max_hold)

    async def conclude(
        self,
        view: RequestView,
        caller: Caller | None,
        progress: ProgressLine,
        *,
        keep_on_cancel: bool = False,
        max_hold: float | None = None,
    ) -> types.CallToolResult:
        """The result for a request that is no longer pending (`caller` None: nobody is waiting)."""
        if view.status == Status.APPROVED:
            return await self._execute(view, caller, progress, keep_on_cancel=keep_on_cancel, max_hold=max_hold)
        if view.status == Status.EXECUTING:
            return await self._await_execution(view, progress)
        if view.status in (Status.EXECUTED, Status.FAILED):
            return stored_result(view)
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
            if view.decided_by and view.decided_by != "timeout":
                window = format_duration(view.pickup_seconds)
                why = f"it was approved by {view.decided_by} but not picked up within {window}"
            else:
                why = f"no decision within {format_duration(view.timeout_seconds)}"
            return error_result(
                f"[APPROVAL EXPIRED] {why}; the call was not executed.", {"status": "expired", "approval_id": view.id}
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

    # ---- waiting

    async def _wait(
        self, request: RequestView, caller: Caller, progress: ProgressLine, max_hold: float | None
    ) -> RequestView | _Stop:
        hold_until = None if max_hold is None else anyio.current_time() + max_hold
        outcome: RequestView | _Stop | None = None
        async with anyio.create_task_group() as tg:
            # Progress goes out on its own beat, so the wait below is one database read per wake-up.
            tg.start_soon(self._notices, request, progress)
            view = request
            while outcome is None:
                remaining = (request.expires_at - self.service.clock()).total_seconds()
                hold_left = None if hold_until is None else hold_until - anyio.current_time()
                if remaining <= 0:
                    await self._try_expire(request.id)
                    # Still pending here means the store could not record the expiry; conclude() fails closed.
                    outcome = await self._latest(request.id, view)
                elif hold_left is not None and hold_left <= 0:
                    outcome = _Stop.HOLD_LIMIT
                else:
                    budget = remaining if hold_left is None else min(remaining, hold_left)
                    if caller.disconnected is None:
                        view = await self._wait_step(request.id, view, budget)
                    else:
                        settled = await _race(self._wait_step(request.id, view, budget), caller.disconnected)
                        if settled is None:
                            outcome = _Stop.GONE
                            break
                        view = settled
                    if view.status != Status.PENDING:
                        outcome = view
            tg.cancel_scope.cancel()
        assert outcome is not None
        return outcome

    async def _notices(self, request: RequestView, progress: ProgressLine) -> None:
        who = _who(request)
        while True:
            remaining = max((request.expires_at - self.service.clock()).total_seconds(), 0.0)
            await progress.notice(
                f"Waiting for approval by {who} (request {request.id}); expires at "
                f"{request.expires_at:%H:%M:%S} UTC, in {format_duration(remaining)}. Inbox: {self.inbox_url}"
            )
            await anyio.sleep(self.progress_interval)

    async def _wait_step(self, request_id: str, view: RequestView, step: float) -> RequestView:
        try:
            return await self.service.wait_for_change(request_id, Status.PENDING, within=step)
        except StoreUnavailable as exc:
            log.warning("waiting on %s: %s", request_id, exc)
            await anyio.sleep(min(step, self.service.poll_interval))
            return view

    async def _await_execution(self, view: RequestView, progress: ProgressLine) -> types.CallToolResult:
        """Someone else is running the call right now: wait for its stored result."""
        await progress.notice(f"Request {view.id} is being executed; waiting for its result.")
        current = view
        while current.status == Status.EXECUTING:
            current = await self.service.wait_for_change(view.id, Status.EXECUTING, within=self.progress_interval)
        return await self.conclude(current, None, progress)

    # ---- leaving

    async def _leave(self, request_id: str, caller: Caller, keep_on_cancel: bool) -> None:
        """The agent's call ended early: withdraw on an explicit cancel (unless the policy keeps it), else detach."""
        if not keep_on_cancel and await caller.withdrew():
            await self._withdraw(request_id, "the agent cancelled the call")
        else:
            await self._detach(request_id, "the agent stopped waiting (connection closed or client timeout)")

    async def _detach(self, request_id: str, why: str) -> RequestView | None:
        try:
            return await self.service.detach(request_id, why)
        except ApprovalError as exc:
            log.error("could not record that the agent of %s stopped waiting: %s", request_id, exc)
            return None

    async def _withdraw(self, request_id: str, why: str) -> None:
        try:
            await self.service.cancel(request_id, why)
        except ApprovalError as exc:
            log.error("could not record withdrawal of %s: %s", request_id, exc)

    async def _try_expire(self, request_id: str) -> None:
        try:
            await self.service.expire(request_id)
        except ApprovalError as exc:
            log.warning("could not record expiry of %s: %s", request_id, exc)

    async def _latest(self, request_id: str, fallback: RequestView) -> RequestView:
        try:
            return await self.service.get(request_id)
        except StoreUnavailable:
            return fallback

    # ---- executing exactly once

    async def _execute(
        self,
        view: RequestView,
        caller: Caller | None,
        progress: ProgressLine,
        *,
        keep_on_cancel: bool,
        max_hold: float | None,
    ) -> types.CallToolResult:
        route = self.upstreams.route(view.tool)
        if route is None:
            return error_result(
                f"[UPSTREAM UNAVAILABLE] no upstream offers '{view.tool}' right now; the approved call was not "
                f"executed. It stays approved until {view.pickup_deadline:%H:%M:%S} UTC: call again to run it."
            )
        approved_arguments = view.arguments
        if caller is not None and caller.gone:
            await self._detach(view.id, "the agent went away before the approved call started")
            return error_result(_NOT_FORWARDED)
        started = False
        try:
            try:
                await self.service.begin_execution(view.id, arguments_digest(canonical_json(approved_arguments)))
                started = True
            except AlreadyDecided:
                # Another waiter (a re-attached call, the wait tool, another replica) started it first.
                latest = await self.service.get(view.id)
                if latest.status == Status.APPROVED:
                    return error_result(f"[APPROVAL ERROR] request {view.id} could not start; try again.")
                return await self.conclude(latest, caller, progress, keep_on_cancel=keep_on_cancel, max_hold=max_hold)
            except ApprovalError as exc:
                return error_result(f"[APPROVAL ERROR] the approved call could not start: {exc}; it was not executed.")
            if caller is not None and caller.gone:
                # The agent left while the start was being recorded: never forward for nobody.
                await self._abandon(view.id)
                return error_result(_NOT_FORWARDED)
            await progress.notice(f"Approved by {view.decided_by}; executing {view.tool}.")
        except BaseException:
            # Cancelled before anything was forwarded: the approval stands (or is withdrawn on an explicit cancel).
            with anyio.CancelScope(shield=True):
                if started:
                    await self._abandon(view.id)
                if caller is not None:
                    await self._leave(view.id, caller, keep_on_cancel)
            raise
        # Once forwarded, see the call through and record its outcome even if the agent cancels meanwhile,
        # so the request never stays `executing` with the upstream's answer lost. The call timeout bounds this.
        with anyio.CancelScope(shield=True):
            result = await route.upstream.call(route.upstream_tool, approved_arguments, progress.relay)
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

    async def _abandon(self, request_id: str) -> None:
        try:
            await self.service.abandon_start(request_id, "the agent went away before anything was forwarded")
        except ApprovalError as exc:
            log.error("could not record that %s was not forwarded: %s", request_id, exc)

    async def run_unattended(self, view: RequestView) -> None:
        """Run an approved call whose policy lets it run with no agent waiting; the result is stored for it."""
        try:
            await self.conclude(view, None, ProgressLine(None))
        except Exception:
            log.exception("unattended run of %s failed", view.id)


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


def _who(request: RequestView) -> str:
    people = ", ".join(request.approvers) if request.approvers else "any approver"
    return people if request.quorum <= 1 else f"{request.quorum} of {people}"
