"""Forwarding an approved call once, and seeing it through to its recorded outcome whoever is waiting.

Once `begin_execution` has been won, the call is forwarded and its outcome recorded in a task of
its own, not in the task of the agent that started it: an agent whose wait ends (its
`timeout_seconds`, its hold limit, a dropped connection, a cancel) stops waiting, and the
execution goes on, so the request never stays `executing` with the upstream's answer lost.
While the upstream works, the task renews the execution's lease (approvals.execution); if this
process dies, the lease runs out and any gateway ends the request as `outcome_unknown`.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass, field

import anyio
import mcp_types as types
from anyio.abc import TaskGroup

from approvals.errors import AlreadyDecided, ApprovalError, ArgumentsChanged
from approvals.service import ApprovalService
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
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_lease, view)
                call = upstream.call(view.upstream_tool, view.arguments, run.relay)
                result = await tracing.traced("upstream", call, upstream=view.upstream, tool=view.upstream_tool)
                tg.cancel_scope.cancel()
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
        while True:
            await anyio.sleep(self.lease / 3)
            try:
                held = await self.service.renew_lease(view.id, self.owner, self.lease)
            except ApprovalError as exc:
                log.warning("could not renew the execution lease of %s: %s", view.id, exc)
                continue
            if not held:
                log.error("request %s was ended while its call was still being executed here", view.id)
                return
