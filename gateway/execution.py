"""Forwarding an approved call once, and seeing it through to its recorded outcome whoever is waiting.

Once `begin_execution` has been won, the call is forwarded and its outcome recorded in a task of
its own, not in the task of the agent that started it: an agent whose wait ends (its
`timeout_seconds`, its hold limit, a dropped connection, a cancel) stops waiting, and the
execution goes on, so the request never stays `executing` with the upstream's answer lost.
While the upstream works, the task renews the execution's lease (approvals.execution); if this
process dies, the lease runs out and any gateway ends the request as `outcome_unknown`.

A held call waiting in this process offers to start its request as part of the approval itself
(`EarlyStart`, approvals.execution.Starter): the approval's transaction then also records the
start, and the woken call forwards at once, with no second transaction to wait for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import mcp_types as types
from anyio.abc import TaskGroup

from approvals.errors import AlreadyDecided, ApprovalError, ArgumentsChanged
from approvals.execution import Start
from approvals.service import ApprovalService, arguments_digest
from approvals.states import Status
from approvals.views import RequestView
from gateway import faults, tracing
from gateway.caller import ProgressLine
from gateway.results import text_of
from gateway.upstreams import Forwarder

log = logging.getLogger(__name__)


def process_name() -> str:
    """This gateway process, as the audit log names the owner of an execution: host, pid and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class Run:
    """One execution in this process: who hears its progress now, and its outcome once recorded."""

    request: RequestView
    progress: ProgressLine | None
    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: tuple[RequestView, types.CallToolResult] | None = None

    async def result(self, within: float | None) -> tuple[RequestView, types.CallToolResult] | None:
        """The recorded request and the upstream's result; None if `within` seconds pass first."""
        with anyio.move_on_after(within if within is not None else float("inf")):
            await self.done.wait()
        return self.outcome

    async def relay(self, progress: float, total: float | None, message: str | None) -> None:
        line = self.progress
        if line is not None:
            await line.relay(progress, total, message)


class EarlyStart:
    """A held call's offer to have its request started by the transaction that approves it.

    `may_start` says, without waiting for anything, whether the call could be forwarded now (its
    agent still there, its upstream connected, the policy in force not refusing it).
    """

    __slots__ = ("claimed", "lease", "may_start", "owner", "view")  # one per held call: they wait by the thousand

    def __init__(self, owner: str, lease: float, may_start: Callable[[RequestView], bool]) -> None:
        self.owner, self.lease, self.may_start = owner, lease, may_start
        self.claimed: anyio.Event | None = None  # set once the start asked for is recorded, or not
        self.view: RequestView | None = None  # the request as started, once its start is recorded

    def claim(self, view: RequestView) -> Start | None:
        # A crash test stopping before the start needs the step in which a start is not yet recorded.
        if faults.armed("before_begin") or not self.may_start(view):
            return None
        self.claimed, self.view = anyio.Event(), None
        return Start(self.owner, self.lease, arguments_digest(view.arguments_json))

    def started(self, view: RequestView | None) -> None:
        self.view = view
        if self.claimed is not None:
            self.claimed.set()

    async def undo(self, service: ApprovalService) -> None:
        """The call will not forward (it stopped waiting): give back a start recorded for it, if any."""
        if self.claimed is None:
            return
        await self.claimed.wait()  # the approval's block is under way; it ends soon, either way
        if self.view is not None:
            why = "the agent went away before anything was forwarded"
            try:
                await service.abandon_start(self.view.id, why, start=self.view)
            except ApprovalError as exc:
                log.error("could not record that %s was not forwarded: %s", self.view.id, exc)

    def won(self, latest: RequestView) -> bool:
        """Whether `latest` is the request as this offer's start left it: this call is to forward it."""
        mine = self.view
        return (
            mine is not None
            and latest.status == Status.EXECUTING
            and latest.executing_by == self.owner
            and latest.status_changed_at == mine.status_changed_at
        )


class Executions:
    def __init__(self, service: ApprovalService, *, lease: float, owner: str | None = None) -> None:
        self.service = service
        self.lease = lease
        self.owner = owner or process_name()
        self._tasks: TaskGroup | None = None

    async def run(self) -> None:
        """Own the executions' tasks for the life of the gateway."""
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            try:
                await anyio.sleep_forever()
            finally:
                self._tasks = None

    def early_start(self, may_start: Callable[[RequestView], bool]) -> EarlyStart:
        return EarlyStart(self.owner, self.lease, may_start)

    async def begin(self, view: RequestView, arguments_sha256: str) -> RequestView | None:
        """Win the right to forward `view` (approved -> executing); None when someone else moved it first."""
        try:
            started = await self.service.begin_execution(view.id, arguments_sha256, owner=self.owner, lease=self.lease)
        except (AlreadyDecided, ArgumentsChanged):
            # Someone else moved it first; or the stored request is not what the audit chain says was approved,
            # and it ended failed without being forwarded.
            return None
        faults.reached("after_begin")
        return started

    async def forward(self, started: RequestView, upstream: Forwarder, progress: ProgressLine) -> Run:
        """Forward the started call and record its outcome, in a task that outlives whoever waits for it."""
        run = Run(started, progress)
        if self._tasks is not None:
            self._tasks.start_soon(self._see_through, run, upstream)
        else:
            # Not running as a whole gateway (a component under test): see it through in the caller's task.
            await self._see_through(run, upstream)
        return run

    async def _see_through(self, run: Run, upstream: Forwarder) -> None:
        # Shielded: a gateway shutting down waits for the upstream's answer (bounded by its call timeout) and
        # records it, rather than leave the request to end as outcome unknown.
        with anyio.CancelScope(shield=True):
            await self._forward_and_record(run, upstream)

    async def _forward_and_record(self, run: Run, upstream: Forwarder) -> None:
        view = run.request
        try:
            keeper = _LeaseKeeper(self, view)
            try:
                call = upstream.call(view.upstream_tool, view.arguments, run.relay)
                result = await tracing.traced("upstream", call, upstream=view.upstream, tool=view.upstream_tool)
            finally:
                keeper.stop()
            faults.reached("after_forward")
            summary = text_of(result, 200)
            recorded = view
            try:
                recorded = await self.service.finish_execution(
                    view.id,
                    ok=not result.is_error,
                    result=result.model_dump(mode="json", by_alias=True, exclude_none=True),
                    error=summary if result.is_error else None,
                    summary=summary or "executed",
                )
                faults.reached("after_finish")
            except ApprovalError as exc:
                # The upstream ran it: the agent gets the result regardless, or it would retry a call that ran.
                # Unrecorded, the request's lease runs out and it ends as outcome unknown.
                log.error("executed %s but could not record its result: %s", view.id, exc)
            run.outcome = (recorded, result)
        except Exception:
            log.exception("executing %s failed unexpectedly; its lease will run out", view.id)
        finally:
            run.done.set()

    async def _keep_lease(self, view: RequestView) -> None:
        """Renew the lease now and every third of a lease after, until the call's answer stops this."""
        try:
            while True:
                try:
                    held = await self.service.renew_lease(view.id, self.owner, self.lease)
                except ApprovalError as exc:
                    log.warning("could not renew the execution lease of %s: %s", view.id, exc)
                else:
                    if not held:
                        log.error("request %s was ended while its call was still being executed here", view.id)
                        return
                await anyio.sleep(self.lease / 3)
        except Exception:
            log.exception("renewing the execution lease of %s failed unexpectedly; it will run out", view.id)


class _LeaseKeeper:
    """A forwarded call's lease renewals, from a third of the lease on, while the upstream has not answered.

    Nearly every call is answered long before its first renewal is due: such a call costs one loop timer,
    cancelled with the answer, and no task; the renewing task starts only when the timer fires.
    """

    __slots__ = ("_executions", "_task", "_timer", "_view")

    def __init__(self, executions: Executions, view: RequestView) -> None:
        self._executions, self._view = executions, view
        self._task: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = loop.call_later(executions.lease / 3, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._task = loop.create_task(self._executions._keep_lease(self._view))

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
