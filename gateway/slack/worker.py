"""Outbound Slack work, off the decision path: listeners hand jobs over and return at once.

A job is an async callable that raises `SlackCallFailed` when Slack did not do it. The outbox
runs it with retries (doubling backoff, `Retry-After` honoured for everyone after a 429), records
the first failure, a give-up and a recovery in the audit history, and never raises to the caller.
Which replica does a request's message work, and when, is the database's business
(`approvals.outbox`, driven by `notifier.MessageKeeper`); this runs the Slack calls themselves.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup

from approvals.audit import Event
from approvals.durations import format_duration
from approvals.errors import ApprovalError
from approvals.service import ApprovalService
from gateway.config_channels import SlackSettings
from gateway.slack.client import SlackCallFailed

log = logging.getLogger(__name__)

Job = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = 1.0
    maximum: float = 60.0
    attempts: int = 8

    @classmethod
    def from_settings(cls, settings: SlackSettings) -> RetryPolicy:
        return cls(settings.retry_initial, settings.retry_max, settings.max_attempts)

    def delay(self, failures: int) -> float:
        base = min(self.initial * 2 ** (failures - 1), self.maximum)
        # Jitter keeps replicas that failed together from retrying together.
        return float(base * random.uniform(0.8, 1.0))


class Outbox:
    def __init__(self, service: ApprovalService, retry: RetryPolicy, *, concurrency: int = 8) -> None:
        self.service = service
        self.retry = retry
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._group: TaskGroup | None = None
        self._backlog: list[Job] = []
        self._not_before = 0.0

    async def run(self) -> None:
        """Run jobs until cancelled (for the gateway's lifetime)."""
        async with anyio.create_task_group() as group:
            self._group = group
            backlog, self._backlog = self._backlog, []
            for job in backlog:
                group.start_soon(job)
            try:
                await anyio.sleep_forever()
            finally:
                self._group = None

    def spawn(self, job: Job) -> None:
        """Run `job` once in the background, without retries (work that must happen now or not at all)."""

        async def guarded() -> None:
            try:
                await job()
            except Exception:
                log.exception("Slack background work crashed")

        self._start(guarded)

    def once(self, what: str, request_id: str | None, job: Job) -> None:
        self._start(lambda: self._attempts(what, request_id, job))

    def _start(self, job: Job) -> None:
        if self._group is None:
            self._backlog.append(job)
        else:
            self._group.start_soon(job)

    async def attempt(self, what: str, request_id: str | None, job: Job) -> bool:
        """Run `job` here and now with retries; True once it succeeded, False when it failed for good."""
        try:
            return await self._with_retries(what, request_id, job)
        except Exception:
            # A bug in one job must not take the outbox (and with it every other message) down.
            log.exception("Slack job %s for %s crashed", what, request_id)
            return False

    async def _attempts(self, what: str, request_id: str | None, job: Job) -> None:
        await self.attempt(what, request_id, job)

    async def _with_retries(self, what: str, request_id: str | None, job: Job) -> bool:
        failures = 0
        while True:
            wait = self._not_before - anyio.current_time()
            if wait > 0:
                await anyio.sleep(wait)
            try:
                async with self._limiter:
                    await job()
            except SlackCallFailed as exc:
                failures += 1
                if not exc.retryable or failures >= self.retry.attempts:
                    log.error("Slack %s for %s failed for good: %s", what, request_id, exc)
                    await self._audit(_gave_up(what, request_id, exc, failures))
                    return False
                delay = self.retry.delay(failures)
                if exc.retry_after is not None:
                    # Slack rate-limits per app and method: everyone waits, not just this job.
                    delay = max(delay, exc.retry_after)
                    self._not_before = max(self._not_before, anyio.current_time() + exc.retry_after)
                log.warning("Slack %s for %s failed (%s); retry %d in %.1fs", what, request_id, exc, failures, delay)
                if failures == 1:
                    await self._audit(_failed(what, request_id, exc, delay, self.retry.attempts))
                await anyio.sleep(delay)
                continue
            if failures:
                await self._audit(
                    Event(
                        kind="slack.recovered",
                        outcome="ok",
                        message=f"Slack {what} succeeded after {failures} failed attempt(s)",
                        request_id=request_id,
                        channel="slack",
                        detail={"operation": what, "attempts": failures + 1},
                    )
                )
            return True

    async def _audit(self, event: Event) -> None:
        try:
            await self.service.record(event)
        except ApprovalError as exc:
            log.error("could not audit %s: %s", event.kind, exc)


def _failed(what: str, request_id: str | None, exc: SlackCallFailed, delay: float, attempts: int) -> Event:
    return Event(
        kind="slack.failed",
        outcome="retrying",
        message=f"Slack {what} failed ({exc.error}); retrying in {format_duration(delay)}, up to {attempts} attempts. "
        "The request stays decidable in the web inbox and the API.",
        request_id=request_id,
        channel="slack",
        detail={
            "operation": what,
            "method": exc.method,
            "error": exc.error,
            "retry_after": exc.retry_after,
        },
    )


def _gave_up(what: str, request_id: str | None, exc: SlackCallFailed, failures: int) -> Event:
    why = "a permanent error" if not exc.retryable else f"{failures} attempts"
    return Event(
        kind="slack.gave_up",
        outcome="failed",
        message=f"Slack {what} failed ({exc.error}); gave up after {why}. "
        "The request stays decidable in the web inbox and the API.",
        request_id=request_id,
        channel="slack",
        detail={"operation": what, "method": exc.method, "error": exc.error, "attempts": failures},
    )
