"""Sending one event to one webhook: signed, retried with doubling backoff, each failure and a give-up audited.

A receiver that answers 2xx has the event. A timeout, a refused connection, 408, 429 or a 5xx is
worth another try (after `Retry-After`, when the receiver names one no longer than `retry_max`);
any other answer means the receiver will not take this event, so it is given up at once. The
next event is tried either way: a give-up costs one event, never the webhook.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import httpx2

from approvals.audit import Event
from approvals.durations import format_duration
from approvals.errors import ApprovalError
from gateway.config_channels import WebhookSettings
from gateway.webhooks.payload import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, signature

log = logging.getLogger(__name__)

CHANNEL = "webhook"
_RETRYABLE = {408, 425, 429}


@dataclass(frozen=True)
class Failure:
    error: str
    retryable: bool
    status: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Delivery:
    """One event for one webhook: the audit log's number of the transition, its kind, its request, the body."""

    seq: int
    kind: str
    request_id: str
    body: bytes


class WebhookSender:
    def __init__(
        self,
        settings: WebhookSettings,
        client: httpx2.AsyncClient,
        record: Callable[[Event], Awaitable[None]],
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.client = client
        self.record = record
        self.wall_clock = wall_clock

    async def send(self, delivery: Delivery) -> bool:
        """Deliver with retries; True once the receiver took it, False when it was given up."""
        s = self.settings
        failures = 0
        while True:
            failure = await self._post(delivery)
            if failure is None:
                return True
            failures += 1
            if not failure.retryable or failures >= s.max_attempts:
                log.error("webhook %s: gave up event %d of %s: %s", s.name, delivery.seq, delivery.request_id, failure)
                await self._audit(_gave_up(s, delivery, failure, failures))
                return False
            delay = min(s.retry_initial * 2 ** (failures - 1), s.retry_max) * random.uniform(0.8, 1.0)
            if failure.retry_after is not None and failure.retry_after <= s.retry_max:
                delay = max(delay, failure.retry_after)
            log.warning("webhook %s: event %d failed (%s); retry in %.1fs", s.name, delivery.seq, failure.error, delay)
            await self._audit(_failed(s, delivery, failure, failures, delay))
            await anyio.sleep(delay)

    async def _post(self, delivery: Delivery) -> Failure | None:
        # Signed afresh for each attempt, so a retry is not refused by a receiver that checks the time.
        stamp = int(self.wall_clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Countersign-Webhooks",
            SIGNATURE_HEADER: signature(self.settings.secret, stamp, delivery.body),
            EVENT_HEADER: delivery.kind,
            DELIVERY_HEADER: str(delivery.seq),
        }
        try:
            response = await self.client.post(
                self.settings.url, content=delivery.body, headers=headers, timeout=self.settings.request_timeout
            )
        except httpx2.HTTPError as exc:
            return Failure(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, retryable=True)
        if response.is_success:
            return None
        code = response.status_code
        retryable = code in _RETRYABLE or code >= 500
        return Failure(f"HTTP {code}", retryable, code, _seconds(response.headers.get("Retry-After")))

    async def _audit(self, event: Event) -> None:
        try:
            await self.record(event)
        except ApprovalError as exc:
            log.error("could not audit %s: %s", event.kind, exc)


def _seconds(header: str | None) -> float | None:
    try:
        return None if header is None else max(float(header), 0.0)
    except ValueError:
        return None  # an HTTP date: the doubling backoff stands


def _detail(settings: WebhookSettings, delivery: Delivery, failure: Failure, attempts: int) -> dict[str, object]:
    return {
        "webhook": settings.name,
        "event": delivery.seq,
        "event_type": delivery.kind,
        "error": failure.error,
        "status_code": failure.status,
        "attempts": attempts,
    }


def _failed(settings: WebhookSettings, delivery: Delivery, failure: Failure, attempts: int, delay: float) -> Event:
    return Event(
        kind="webhook.failed",
        outcome="retrying",
        message=f"webhook {settings.name}: {delivery.kind} (event #{delivery.seq}) failed ({failure.error}); "
        f"attempt {attempts} of {settings.max_attempts}, next in {format_duration(delay)}",
        request_id=delivery.request_id,
        channel=CHANNEL,
        detail=_detail(settings, delivery, failure, attempts),
    )


def _gave_up(settings: WebhookSettings, delivery: Delivery, failure: Failure, attempts: int) -> Event:
    why = f"{attempts} attempts" if failure.retryable else "an answer that retrying cannot change"
    return Event(
        kind="webhook.gave_up",
        outcome="failed",
        message=f"webhook {settings.name}: {delivery.kind} (event #{delivery.seq}) failed ({failure.error}); "
        f"gave up after {why}",
        request_id=delivery.request_id,
        channel=CHANNEL,
        detail=_detail(settings, delivery, failure, attempts),
    )
