"""Held calls: one owner that drives a request from its state to the waiting agent's answer.

Every way an agent can be waiting for a request enters the same loop (`HeldCalls.follow`): the
original held call, the same call repeated (re-attach), the wait tool, and no agent at all (an
unattended run). The loop looks at the request's state and does the one thing that state calls
for — wait for a decision, start the execution, wait for someone else's execution, or answer —
calling down into the approval service and the upstream, never back up. Whoever starts the
execution wins a compare-and-set, so an approved call runs at most once however many agents
wait for it, on however many replicas.

A request carries everything needed to carry it out (upstream, upstream tool, arguments, hold
settings): the current policy and catalog are never consulted for a request that exists.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Awaitable, Callable

import anyio
import mcp_types as types
from anyio.abc import TaskGroup

from approvals.errors import ApprovalError, StoreUnavailable
from approvals.feed import Change
from approvals.service import ApprovalService, arguments_digest
from approvals.states import Status
from approvals.story import clock_time, who_decides
from approvals.views import RequestView
from gateway import faults, tracing
from gateway.caller import CONNECTION_CLOSED, Caller, Departure, ProgressLine, race_gone
from gateway.config import DEFAULT_EXECUTION_LEASE
from gateway.errors import CallRefused, Tag
from gateway.execution import EarlyStart, Executions
from gateway.held_notices import Notices, waiting_text
from gateway.held_tools import GatewayTools
from gateway.ratelimit import RateLimiter, Reservation
from gateway.results import answer, pending_result, with_changes
from gateway.upstreams import Upstreams

log = logging.getLogger(__name__)

_NOT_RUN = frozenset({Status.REJECTED, Status.EXPIRED, Status.CANCELLED, Status.FAILED})
_NOT_FORWARDED = (
    "the agent went away before the approved call was forwarded; it was not executed and can still be picked up."
)


class _Stop(enum.Enum):
    GONE = "gone"  # the agent's connection dropped
    HOLD_LIMIT = "hold_limit"  # held as long as this agent can wait


class HeldCalls(GatewayTools):
    def __init__(
        self,
        service: ApprovalService,
        upstreams: Upstreams,
        *,
        limiter: RateLimiter,
        progress_interval: float,
        inbox_url: str,
        agent_max_hold: dict[str, float] | None = None,
        default_max_hold: float = math.inf,
        vet: Callable[[RequestView], Awaitable[bool]] | None = None,
        refuses: Callable[[RequestView], bool] | None = None,
        execution_lease: float = DEFAULT_EXECUTION_LEASE,
    ) -> None:
        self.service = service
        # Withdraws an approved request the policy in force refuses (True if it did), just before it would start;
        # `refuses` says the same without acting. Without it, a call is never started by its approval (EarlyStart).
        self.vet, self.refuses = vet, refuses
        self.start_with_approval = True  # False: every call starts with begin_execution, as if decided elsewhere
        self.upstreams = upstreams
        self.limiter = limiter
        self.executions = Executions(service, lease=execution_lease)

        self.progress_interval = progress_interval
        self.notices = Notices(progress_interval)
        self.inbox_url = inbox_url
        # Each agent's own bound (math.inf: "none", its client waits), and the bound of everyone else.
        self.agent_max_hold = dict(agent_max_hold or {})
        self.default_max_hold = default_max_hold
        self._tasks: TaskGroup | None = None

    def request_bound(self, agent: str, tool_bound: float | None) -> float | None:
        """The hold bound a new request stores (None: no bound), fixed when it is made.

        The tool's `approval.max_hold` and the agent's `max_hold` each override the server's
        `default_max_hold`; when both are set the shorter wins ("none", math.inf, never wins).
        """
        explicit = [v for v in (tool_bound, self.agent_max_hold.get(agent)) if v is not None]
        bound = min(explicit) if explicit else self.default_max_hold
        return None if math.isinf(bound) else bound

    def hold_limit(self, agent: str, view: RequestView, asked: float | None = None) -> float | None:
        """How long this agent may be held on this request: the agent's cap, the request's own, and what it asked."""
        limits = [
            v
            for v in (self.agent_max_hold.get(agent), view.max_hold_seconds, asked)
            if v is not None and not math.isinf(v)
        ]
        return min(limits) if limits else None

    # ---- the loop

    async def follow(
        self,
        view: RequestView,
        caller: Caller | None,
        progress: ProgressLine,
        *,
        hold_limit: float | None,
        reservation: Reservation | None = None,
    ) -> types.CallToolResult:
        """Drive `view` until `caller` has its answer (`caller` None: nobody is waiting, run it unattended)."""
        deadline = None if hold_limit is None else anyio.current_time() + hold_limit
        started: RequestView | None = None  # started by its approval, for this call to forward (EarlyStart)
        try:
            while True:
                if caller is not None and caller.task is not None and not view.is_terminal:
                    # The request is the agent's task: it polls instead of being held.
                    return pending_result(caller.task.took(await self._detach(view.id, "answered with a task") or view))
                if view.status == Status.PENDING:
                    waiting = self._wait_for_decision(view, caller, progress, deadline)
                    # Untraced, the wait is awaited as it is: one frame less kept for each held call.
                    step = await (waiting if tracing.untraced(None, None) else tracing.traced("decision_wait", waiting))
                    if step is _Stop.GONE:
                        await self._detach(view.id, CONNECTION_CLOSED)
                        raise CallRefused(Tag.APPROVAL_DETACHED, "the connection closed; the request is still pending.")
                    if step is _Stop.HOLD_LIMIT:
                        why = "held as long as the agent can wait; it was told to check back"
                        view = await self._detach(view.id, why) or view
                        return pending_result(view, wait_seconds=hold_limit)
                    if isinstance(step, EarlyStart):
                        started = step.view
                        view = started or view
                    else:
                        assert isinstance(step, RequestView)
                        view = step
                elif view.status == Status.APPROVED or started is not None:
                    ran, started = await self._execute(view, caller, progress, deadline, started), None
                    if isinstance(ran, tuple):
                        view, result = ran
                        return with_changes(view, result)
                    view = ran
                elif view.status == Status.EXECUTING:
                    settled = await self._wait_for_execution(view, progress, deadline)
                    if settled is None:
                        return pending_result(view, wait_seconds=hold_limit)
                    view = settled
                else:
                    return answer(view)
        finally:
            with anyio.CancelScope(shield=True):
                await self._settle(view, reservation)

    # ---- waiting for a decision

    async def _wait_for_decision(
        self, view: RequestView, caller: Caller | None, progress: ProgressLine, deadline: float | None
    ) -> RequestView | _Stop | EarlyStart:
        who = who_decides(view)
        beat = None
        early = self._early_start(caller)
        step: RequestView | _Stop | EarlyStart | None = None
        try:
            try:
                waiting = self._waiting(view, who)
                await progress.notice(waiting())
                # Later notices go out on the shared beat, so the wait below is one database read per wake-up.
                beat = self.notices.start(progress, waiting)
                if early is not None:
                    self.service.starts.add(view.id, early)
                step = await self._decision_or_stop(view, caller, deadline)
                if early is not None and isinstance(step, RequestView) and early.won(step):
                    step = early  # its approval started it: this call forwards it
                return step
            finally:
                with anyio.CancelScope(shield=True):
                    if beat is not None:
                        await self.notices.stop(beat)
                    if early is not None:
                        self.service.starts.discard(view.id, early)
                        if step is not early:
                            await early.undo(self.service)
        except BaseException:
            if caller is not None:
                with anyio.CancelScope(shield=True):
                    await self._leave(view, caller)
            raise

    def _early_start(self, caller: Caller | None) -> EarlyStart | None:
        """The offer to have this call's request started by its approval; None where it must start on its own."""
        if caller is None or not self.start_with_approval or (self.vet is not None and self.refuses is None):
            return None
        refuses = self.refuses

        def may_start(view: RequestView) -> bool:
            upstream = self.upstreams.get(view.upstream)
            ready = upstream is not None and upstream.ready and not caller.gone
            return ready and not (refuses is not None and refuses(view))

        return self.executions.early_start(may_start)

    async def _decision_or_stop(
        self, view: RequestView, caller: Caller | None, deadline: float | None
    ) -> RequestView | _Stop:
        while True:
            remaining = (view.expires_at - self.service.clock()).total_seconds()
            hold_left = None if deadline is None else deadline - anyio.current_time()
            if remaining <= 0:
                return await self._expired(view)
            if hold_left is not None and hold_left <= 0:
                return _Stop.HOLD_LIMIT
            budget = remaining if hold_left is None else min(remaining, hold_left)
            gone = None if caller is None else caller.disconnected
            try:
                # The wait is the feed's own, given up from the connection's end by a callback: no cancel scope,
                # event or task of its own, and no frames between this one and the feed's.
                latest = await self.service.wait_for_change(view.id, Status.PENDING, budget, gone)
            except StoreUnavailable as exc:
                # Keep trying until the request's own deadline; then `_expired` fails closed.
                log.warning("waiting on %s: %s", view.id, exc)
                pause = min(budget, self.service.feed.poll_interval)
                if gone is None:
                    await anyio.sleep(pause)
                    continue
                await race_gone(anyio.sleep(pause), gone)
                if gone.is_set():
                    return _Stop.GONE
                continue
            if latest is None:
                return _Stop.GONE
            if latest.status != Status.PENDING:
                return latest

    async def _expired(self, view: RequestView) -> RequestView:
        try:
            await self.service.expire(view.id)
            latest = await self.service.get(view.id)
        except ApprovalError as exc:
            raise CallRefused(
                Tag.APPROVAL_UNAVAILABLE,
                f"the approval store could not be reached to settle request {view.id} ({exc}); "
                "the call was not executed.",
                {"status": "unknown", "approval_id": view.id},
            ) from exc
        if latest.status == Status.PENDING:  # the expiry was not recorded: never run it
            raise CallRefused(
                Tag.APPROVAL_UNAVAILABLE,
                f"request {view.id} could not be settled; the call was not executed.",
                {"status": "unknown", "approval_id": view.id},
            )
        return latest

    def _waiting(self, view: RequestView, who: str) -> Callable[[], str]:
        # The text of this request's "still waiting" notices: only the time left changes between them.
        head = f"Waiting for approval by {who} (request {view.id}); expires at {clock_time(view, 'expires')}, in "
        return waiting_text(head, view.expires_at, f". Inbox: {self.inbox_url}", self.service.clock)

    async def _wait_for_execution(
        self, view: RequestView, progress: ProgressLine, deadline: float | None
    ) -> RequestView | None:
        """Someone else is running the call right now: wait for its stored result (None: the hold ran out)."""
        await progress.notice(f"Request {view.id} is being executed; waiting for its result.")
        while view.status == Status.EXECUTING:
            step = self.progress_interval
            if deadline is not None:
                step = min(step, deadline - anyio.current_time())
                if step <= 0:
                    return None
            view = await self.service.wait_for_change(view.id, Status.EXECUTING, within=step)
        return view

    # ---- executing exactly once

    async def _execute(
        self,
        view: RequestView,
        caller: Caller | None,
        progress: ProgressLine,
        deadline: float | None,
        started: RequestView | None = None,
    ) -> tuple[RequestView, types.CallToolResult] | RequestView:
        """Start and forward the approved call; or, when someone else started it first, the request as it is now.
        `started`: its approval started it already, for this call.

        The execution is seen through in a task of its own: when the agent's wait ends first (its hold
        limit), it gets the request as it is now (executing) and can wait again for the result.
        """
        upstream = self.upstreams.get(view.upstream)
        if upstream is None or not upstream.ready:
            if started is not None:
                with anyio.CancelScope(shield=True):
                    await self._abandon(view.id)
            state = "is not configured any more" if upstream is None else "is not connected right now"
            raise CallRefused(
                Tag.UPSTREAM_UNAVAILABLE,
                f"upstream '{view.upstream}', which request {view.id} was approved for, {state}; the approved call "
                f"was not executed and was not sent anywhere else. It stays approved until "
                f"{clock_time(view, 'pickup')}: call again to run it.",
            )
        if started is None and self.vet is not None and await self.vet(view):
            return await self.service.get(view.id)
        if started is None and caller is not None and caller.gone:
            await self._detach(view.id, "the agent went away before the approved call started")
            raise CallRefused(Tag.APPROVAL_DETACHED, _NOT_FORWARDED)
        try:
            if started is not None:
                faults.reached("after_begin")
            else:
                faults.reached("before_begin")
                started = await self.executions.begin(view, arguments_digest(view.arguments_json))
            if started is None:
                # Another waiter (a re-attached call, the wait tool, another replica) started or ended it first.
                return await self.service.get(view.id)
            if caller is not None and caller.gone:
                raise _LeftBeforeForwarding()
            await progress.notice(f"Approved by {view.decided_by}; executing {view.tool}.")
        except BaseException as exc:
            # Nothing was forwarded: the approval stands (or is withdrawn on an explicit cancel).
            with anyio.CancelScope(shield=True):
                if started is not None:
                    await self._abandon(view.id)
                if isinstance(exc, _LeftBeforeForwarding):
                    raise CallRefused(Tag.APPROVAL_DETACHED, _NOT_FORWARDED) from None
                if caller is not None:
                    await self._leave(view, caller)
            raise
        run = await self.executions.forward(started, upstream, progress)
        try:
            within = None if deadline is None else max(deadline - anyio.current_time(), 0.0)
            outcome = await run.result(within)
        finally:
            run.progress = None  # whatever happens next, this agent is no longer listening
        if outcome is not None:
            return outcome
        return started if not run.done.is_set() else await self.service.get(view.id)

    # ---- the agent leaving, and quota

    async def _leave(self, view: RequestView, caller: Caller) -> None:
        """The agent's call ended early: withdraw on an explicit cancel (unless the request keeps), else detach.

        The audit message says which it was: a client that gave up on its own timeout, a connection
        that closed, or a cancel (kept pending when the policy says `on_cancel = "keep"`).
        """
        try:
            left = await caller.how_it_left()
            if left.kind is Departure.CANCELLED and not view.keep_on_cancel:
                await self.service.withdraw(view.id, left.describe())
            else:
                why = left.describe()
                if left.kind is Departure.CANCELLED:
                    why += "; the policy keeps the request pending"
                await self.service.detach(view.id, why)
        except ApprovalError as exc:
            log.error("could not record that the agent of %s stopped waiting: %s", view.id, exc)

    async def _detach(self, request_id: str, why: str) -> RequestView | None:
        try:
            return await self.service.detach(request_id, why)
        except ApprovalError as exc:
            log.error("could not record that the agent of %s stopped waiting: %s", request_id, exc)
            return None

    async def _abandon(self, request_id: str) -> None:
        try:
            await self.service.abandon_start(request_id, "the agent went away before anything was forwarded")
        except ApprovalError as exc:
            log.error("could not record that %s was not forwarded: %s", request_id, exc)

    async def _settle(self, view: RequestView, reservation: Reservation | None) -> None:
        """The quota a held call took: returned if it ended unexecuted, kept if it ran, parked while undecided
        (left with the request: whichever replica hears that it ended unexecuted gives it back)."""
        if reservation is None:
            return
        try:
            if view.status in (Status.PENDING, Status.APPROVED):
                await reservation.park(view.id)
                # It may have ended while we parked, and every listener heard that before the park: look again.
                if (await self.service.get(view.id)).status in _NOT_RUN:
                    await reservation.release()
            elif view.status in _NOT_RUN:
                await reservation.release()
        except Exception as exc:
            # The slots then stay counted until their window passes: fewer calls, never more.
            log.error("could not settle the quota of %s: %s", view.id, exc, exc_info=not isinstance(exc, ApprovalError))

    # ---- the change feed: parked quota, unattended runs

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            tg.start_soon(self.executions.run)
            try:
                for view in await self.service.list_requests(statuses={Status.APPROVED}, limit=10_000):
                    self.run_approved(view)
            except ApprovalError as exc:
                log.warning("could not look for approved unattended runs: %s", exc)
            try:
                await anyio.sleep_forever()
            finally:
                self._tasks = None

    async def request_changed(self, change: Change) -> None:
        view = change.request
        if view.status in _NOT_RUN:
            try:
                await self.limiter.release_parked(view.id)
            except Exception as exc:
                log.error("could not give back the quota parked on %s: %s", view.id, exc)
        self.run_approved(view)

    def run_approved(self, view: RequestView, *, asked: bool = False) -> bool:
        # Every process hears the approval; begin_execution's compare-and-set lets one run it. `asked`: by its task.
        start = view.status == Status.APPROVED and (asked or (view.run_unattended and not view.agent_waiting))
        if start and self._tasks:
            self._tasks.start_soon(self._run_unattended, view)
        return bool(start and self._tasks)

    async def _run_unattended(self, view: RequestView) -> None:
        try:
            await self.follow(view, None, ProgressLine(None), hold_limit=None)
        except CallRefused as exc:
            log.info("unattended run of %s did not happen: %s", view.id, exc)
        except Exception:
            log.exception("unattended run of %s failed", view.id)


class _LeftBeforeForwarding(Exception):
    """The agent left while the start was being recorded: never forward for nobody."""
