"""Timeouts: one APScheduler job per waiting request, re-armed on start, plus a periodic sweep.

A pending request expires when nobody decides in time; an approved one whose agent never
came back for it expires when its pick-up window closes, unexecuted.

Every job ends in `ApprovalService.expire`, a compare-and-set, so a job that fires twice, late,
or on two replicas at once is harmless. The sweep catches what a replica that died had armed.
"""

from __future__ import annotations

import logging
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from approvals.errors import ApprovalError
from approvals.service import ApprovalService, deadline_of
from approvals.states import Status
from approvals.views import RequestView

log = logging.getLogger(__name__)


class TimeoutScheduler:
    def __init__(self, service: ApprovalService, *, sweep_seconds: float = 30.0) -> None:
        self.service = service
        self.sweep_seconds = sweep_seconds
        self._scheduler = AsyncIOScheduler(timezone="UTC", job_defaults={"misfire_grace_time": None, "coalesce": True})
        service.add_listener(self)

    async def start(self) -> tuple[int, int]:
        """Start the scheduler; expire what is overdue and arm the rest. Returns (expired, armed)."""
        self._scheduler.start()
        self._scheduler.add_job(self.sweep, "interval", seconds=self.sweep_seconds, id="sweep", replace_existing=True)
        overdue, running = await self.service.overdue_and_pending()
        for request in overdue:
            await self._expire(request.id)
        for request in running:
            self.arm(request.id, deadline_of(request))
        if overdue or running:
            log.info("timeouts: expired %d overdue request(s), re-armed %d", len(overdue), len(running))
        return len(overdue), len(running)

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def arm(self, request_id: str, at: datetime) -> None:
        self._scheduler.add_job(
            self._expire,
            "date",
            run_date=at,
            args=[request_id],
            id=f"expire:{request_id}",
            replace_existing=True,
        )

    def disarm(self, request_id: str) -> None:
        job = self._scheduler.get_job(f"expire:{request_id}")
        if job is not None:
            job.remove()

    def armed(self) -> int:
        return sum(1 for job in self._scheduler.get_jobs() if job.id.startswith("expire:"))

    async def sweep(self) -> int:
        overdue, _ = await self.service.overdue_and_pending()
        expired = 0
        for request in overdue:
            expired += await self._expire(request.id)
        return expired

    async def request_changed(self, request: RequestView, change: str) -> None:
        if change == "created" or request.status == Status.APPROVED:
            # Pending: the decision deadline. Approved: the window for the agent to come back for it.
            self.arm(request.id, deadline_of(request))
        elif request.status != Status.PENDING:
            self.disarm(request.id)

    async def _expire(self, request_id: str) -> bool:
        try:
            return await self.service.expire(request_id)
        except ApprovalError as exc:
            # The database may be down; the sweep tries again, and the held call fails closed meanwhile.
            log.warning("could not expire %s yet: %s", request_id, exc)
            return False
