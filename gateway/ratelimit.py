"""In-memory sliding-window quotas for policy ``limits``: reserved before a call, given back if it never runs.

A reservation takes one slot in every bucket a call's limits name, or none at all. The gateway releases
it when the call is not executed (rejected, expired, cancelled) or the upstream fails, so only calls
that actually ran count against an agent's quota.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import count
from typing import Final

from approvals.durations import format_duration
from gateway.policy import Limit

GLOBAL_SCOPE_KEY: Final = "global"
# How often an idle limiter looks for buckets that nobody has touched since their window passed.
_SWEEP_INTERVAL: Final = 60.0

_BucketKey = tuple[str, str, str]  # (counter, scope, scope key)


@dataclass(frozen=True)
class Refusal:
    limit: Limit
    retry_after: float
    message: str


class _Bucket:
    __slots__ = ("retention", "stamps")

    def __init__(self) -> None:
        # (timestamp, reservation id), oldest first; the id lets a release remove exactly its own slot.
        self.stamps: deque[tuple[float, int]] = deque()
        self.retention = 0.0

    def prune(self, now: float) -> None:
        while self.stamps and now - self.stamps[0][0] >= self.retention:
            self.stamps.popleft()

    def in_window(self, now: float, window: float) -> list[float]:
        return [stamp for stamp, _ in self.stamps if now - stamp < window]


class Reservation:
    """Slots held for one call. ``release()`` gives them back; calling it again does nothing."""

    def __init__(self, limiter: RateLimiter, ident: int, buckets: Sequence[_BucketKey]) -> None:
        self._limiter = limiter
        self._ident = ident
        self._buckets = tuple(buckets)
        self._released = False

    def release(self) -> None:
        self._limiter._give_back(self)


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[_BucketKey, _Bucket] = {}
        self._ids = count(1)
        self._last_sweep = clock()

    def reserve(self, tool: str, limits: Sequence[Limit], *, grant: str, session: str) -> Reservation | Refusal:
        """Take one slot per bucket for every limit, or none: a refusal names the limit that is full."""
        with self._lock:
            now = self._clock()
            keyed = [(limit, _bucket_key(limit, grant=grant, session=session)) for limit in limits]
            # Widen retention before anything prunes, so a counter shared with a longer window keeps that history.
            for limit, key in keyed:
                if (existing := self._buckets.get(key)) is not None:
                    existing.retention = max(existing.retention, limit.window_seconds)
            self._sweep(now)
            refusals = [
                refusal
                for limit, key in keyed
                if (refusal := self._check(tool, limit, self._buckets.get(key), now)) is not None
            ]
            if refusals:
                # Every exhausted limit has to free up before the call can pass, so report the longest wait.
                return max(refusals, key=lambda refusal: refusal.retry_after)

            ident = next(self._ids)
            # A counter named by two limits of the same call (all_tools and the tool) is one slot, not two.
            distinct = list(dict.fromkeys(key for _, key in keyed))
            for limit, key in keyed:
                bucket = self._buckets.setdefault(key, _Bucket())
                bucket.retention = max(bucket.retention, limit.window_seconds)
            for key in distinct:
                self._buckets[key].stamps.append((now, ident))
            return Reservation(self, ident, distinct)

    def usage(self, counter: str, scope_key: str) -> int:
        """Slots currently held for ``counter`` under ``scope_key`` (a grant, a session id or "global")."""
        with self._lock:
            now = self._clock()
            total = 0
            for (name, _, key), bucket in self._buckets.items():
                if name == counter and key == scope_key:
                    bucket.prune(now)
                    total += len(bucket.stamps)
            return total

    @property
    def bucket_count(self) -> int:
        """How many (counter, scope key) buckets are held; empty ones are dropped, so this stays bounded."""
        with self._lock:
            return len(self._buckets)

    def _check(self, tool: str, limit: Limit, bucket: _Bucket | None, now: float) -> Refusal | None:
        if bucket is None:
            return None
        bucket.prune(now)
        recent = bucket.in_window(now, limit.window_seconds)
        if len(recent) < limit.max:
            return None
        # Enough of the oldest slots must leave the window to bring the count below max.
        frees_at = recent[len(recent) - limit.max] + limit.window_seconds
        retry_after = max(frees_at - now, 0.0)
        message = f"{tool}: {limit.describe()} (counter '{limit.counter}'); try again in {_format_wait(retry_after)}"
        return Refusal(limit, retry_after, message)

    def _give_back(self, reservation: Reservation) -> None:
        with self._lock:
            if reservation._released:
                return
            reservation._released = True
            for key in reservation._buckets:
                bucket = self._buckets.get(key)
                if bucket is None:
                    continue
                for entry in bucket.stamps:
                    if entry[1] == reservation._ident:
                        bucket.stamps.remove(entry)
                        break
                if not bucket.stamps:
                    del self._buckets[key]

    def _sweep(self, now: float) -> None:
        # Buckets of agents and sessions that went away would otherwise stay forever.
        if now - self._last_sweep < _SWEEP_INTERVAL:
            return
        self._last_sweep = now
        for key in list(self._buckets):
            bucket = self._buckets[key]
            bucket.prune(now)
            if not bucket.stamps:
                del self._buckets[key]


def _bucket_key(limit: Limit, *, grant: str, session: str) -> _BucketKey:
    if limit.scope == "grant":
        return (limit.counter, "grant", grant)
    if limit.scope == "session":
        return (limit.counter, "session", session)
    return (limit.counter, "global", GLOBAL_SCOPE_KEY)


def _format_wait(seconds: float) -> str:
    # Whole seconds, rounded up: "try again in 0.3s" invites a retry that is still too early.
    return format_duration(max(1, math.ceil(seconds)))
