"""Timeouts: a deadline per waiting request on one loop timer, re-armed on start, plus a periodic sweep.

A pending request expires when nobody decides in time; an approved one whose agent never
came back for it expires when its pick-up window closes, unexecuted.

Every job ends in `ApprovalService.expire`, a compare-and-set, so a job that fires twice, late,
or on two replicas at once is harmless. The sweep catches what a replica that died had armed.

Escalation steps (approvals.escalation) are armed the same way, one job per pending request for its
next step; taking a step is a conditional UPDATE, so a step fires once however many replicas arm it.

The same scheduler ends executions whose process died: on start and every `lease_check_seconds`
it ends requests whose execution lease ran out as `outcome_unknown` (approvals.execution).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime

import anyio
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from approvals.deadlines import Deadlines
from approvals.errors import ApprovalError
from approvals.escalation import due_step
from approvals.feed import Change
from approvals.service import ApprovalService
from approvals.states import Status
from approvals.views import RequestView

log = logging.getLogger(__name__)

# What the scheduler posts to `run`: a request id (its deadline passed), None (sweep), this (check leases),
# or _ESCALATE + a request id (its next escalation step is due).
_LEASES = "\x00leases"
_ESCALATE = "\x00escalate:"


class TimeoutScheduler:
    def __init__(
        self, service: ApprovalService, *, sweep_seconds: float = 30.0, lease_check_seconds: float = 5.0
    ) -> None:
        self.service = service
        self.sweep_seconds = sweep_seconds
        self.lease_check_seconds = lease_check_seconds
        self._scheduler = AsyncIOScheduler(timezone="UTC", job_defaults={"misfire_grace_time": None, "coalesce": True})
        # APScheduler (the sweep, the lease check) runs each job as a task of its own, outside the gateway's task
        # group. Its jobs, like the requests' deadlines, only post what is due here; `run` does the database
        # work, so shutting down never leaves a write behind.
        self._due_in, self._due = anyio.create_memory_object_stream[str | None](max_buffer_size=math.inf)
        # Each waiting request's deadline and next escalation step, keyed as below, on one timer (not a job each).
        self._deadlines = Deadlines(self._fall_due)

    async def start(self) -> tuple[int, int]:
        """Start the scheduler; expire what is overdue and arm the rest. Returns (expired, armed)."""
        self._scheduler.start()
        self._scheduler.add_job(
            self._post, "interval", args=[None], seconds=self.sweep_seconds, id="sweep", replace_existing=True
        )
        self._scheduler.add_job(
            self._post,
            "interval",
            args=[_LEASES],
            seconds=self.lease_check_seconds,
            id="leases",
            replace_existing=True,
        )
        await self.end_lapsed()
        overdue, running = await self._split()
        for request in overdue:
            await self._expire(request.id)
        for request in running:
            self.arm(request.id, request.deadline)
            self.arm_escalation(request)
        if overdue or running:
            log.info("timeouts: expired %d overdue request(s), re-armed %d", len(overdue), len(running))
        return len(overdue), len(running)

    async def run(self) -> None:
        """Expire what the scheduler says is due (a request id), or sweep (None). Runs for the gateway's life."""
        async for request_id in self._due:
            if request_id is None:
                await self.sweep()
            elif request_id == _LEASES:
                await self.end_lapsed()
            elif request_id.startswith(_ESCALATE):
                await self._escalate(request_id[len(_ESCALATE) :])
            else:
                await self._expire(request_id)

    async def _post(self, request_id: str | None) -> None:
        self._due_in.send_nowait(request_id)

    def _fall_due(self, key: str) -> None:
        kind, _, request_id = key.partition(":")
        self._due_in.send_nowait(_ESCALATE + request_id if kind == "escalate" else request_id)

    def shutdown(self) -> None:
        self._deadlines.close()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def arm(self, request_id: str, at: datetime) -> None:
        self._deadlines.arm(f"expire:{request_id}", at)

    def disarm(self, request_id: str) -> None:
        self._deadlines.disarm(f"expire:{request_id}")

    def arm_escalation(self, request: RequestView) -> None:
        """Arm the request's next escalation step, if it has one left (or disarm it)."""
        due = due_step(request)
        if due is None:
            self._deadlines.disarm(f"escalate:{request.id}")
        else:
            self._deadlines.arm(f"escalate:{request.id}", due.at)

    def armed(self) -> int:
        return sum(1 for key in self._deadlines if key.startswith("expire:"))

    async def sweep(self) -> int:
        """Expire what is overdue and take the escalation steps that are due, whoever armed them.

        One indexed read of the rows that can be due (`sweepable`), not of every waiting request.
        """
        now = self.service.clock()
        try:
            candidates = await self.service.sweepable(now)
        except ApprovalError as exc:
            log.warning("could not sweep for overdue requests: %s", exc)
            return 0
        expired = 0
        for request in candidates:
            if request.deadline <= now:
                expired += await self._expire(request.id)
        await self._escalate_due([r for r in candidates if r.deadline > now], now)
        return expired

    async def escalate_due(self) -> int:
        """Take every escalation step that is due (a replica that armed it may have died). Returns how many."""
        now = self.service.clock()
        try:
            candidates = await self.service.sweepable(now)
        except ApprovalError as exc:
            log.warning("could not look for escalations that are due: %s", exc)
            return 0
        return await self._escalate_due(candidates, now)

    async def _escalate_due(self, candidates: list[RequestView], now: datetime) -> int:
        due = [r for r in candidates if (step := due_step(r)) is not None and step.at <= now]
        taken = 0
        for request in due:
            taken += await self._escalate(request.id)
        return taken

    async def end_lapsed(self) -> int:
        """End as outcome unknown every execution whose process stopped renewing its lease. Returns how many."""
        try:
            lapsed = await self.service.lapsed_executions()
        except ApprovalError as exc:
            log.warning("could not look for executions left behind: %s", exc)
            return 0
        ended = 0
        for request in lapsed:
            try:
                moved = await self.service.end_lapsed(request.id)
            except ApprovalError as exc:
                log.warning("could not end %s as outcome unknown yet: %s", request.id, exc)
                continue
            if moved is not None:
                ended += 1
                log.warning(
                    "request %s (%s) was left executing by %s; its outcome is unknown",
                    moved.id,
                    moved.tool,
                    moved.executing_by or "a gateway process that has stopped",
                )
        return ended

    async def request_changed(self, change: Change) -> None:
        request = change.request
        if request.status in (Status.PENDING, Status.APPROVED):
            # Pending: the decision deadline. Approved: the window for the agent to come back for it.
            # Every process arms it (each hears every change); whichever fires first expires it, once.
            self.arm(request.id, request.deadline)
        else:
            self.disarm(request.id)
        self.arm_escalation(request)

    async def _split(self) -> tuple[list[RequestView], list[RequestView]]:
        """Requests with a deadline, split into (past it, not yet)."""
        waiting = await self.service.waiting()
        now = self.service.clock()
        return [r for r in waiting if r.deadline <= now], [r for r in waiting if r.deadline > now]

    async def _escalate(self, request_id: str) -> bool:
        try:
            escalated = await self.service.escalate(request_id)
        except ApprovalError as exc:
            log.warning("could not escalate %s yet: %s", request_id, exc)
            return False
        if escalated is not None:
            log.info("request %s escalated: %s may decide it now", request_id, ", ".join(escalated.approvers))
        return escalated is not None

    async def _expire(self, request_id: str) -> bool:
        try:
            return await self.service.expire(request_id)
        except ApprovalError as exc:
            # The database may be down; the sweep tries again, and the held call fails closed meanwhile.
            log.warning("could not expire %s yet: %s", request_id, exc)
            return False
