"""Sliding-window quotas for policy ``limits``: reserved before a call, given back if it never runs.

A reservation takes one slot in every bucket a call's limits name, or none at all. The gateway releases
it when the call is not executed (rejected, expired, cancelled) or the upstream fails, so only calls
that actually ran count against an agent's quota. A held call whose agent stopped waiting parks its
reservation on the request, and whoever hears that the request ended unexecuted gives it back.

Where the slots live is the store's business: in this process (`MemoryQuotas`, a single gateway on
SQLite) or in PostgreSQL, shared by every replica (`gateway.shared_quotas`). Both refuse with
`full_window` once a window holds `max` slots, so a policy means the same quota whatever the number of replicas.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from approvals.durations import format_duration
from gateway.policy import Limit

GLOBAL_SCOPE_KEY: Final = "global"
# How often an idle limiter looks for buckets that nobody has touched since their window passed.
SWEEP_INTERVAL: Final = 60.0

BucketKey = tuple[str, str, str]  # (counter, scope, scope key)


@dataclass(frozen=True)
class Refusal:
    limit: Limit
    retry_after: float
    message: str


class QuotaStore(Protocol):
    """Where slots are kept. `take` is atomic: every bucket gets its slot, or none does."""

    async def take(self, tool: str, wanted: Sequence[tuple[Limit, BucketKey]]) -> str | Refusal:
        """A reservation id, or the refusal of the limit that is full."""
        ...

    async def give_back(self, reservation: str) -> None: ...

    async def park(self, reservation: str, request_id: str) -> None: ...

    async def give_back_parked(self, request_id: str) -> None: ...

    async def usage(self, counter: str, scope_key: str) -> int: ...


class Reservation:
    """Slots held for one call. ``release()`` gives them back; calling it again does nothing."""

    def __init__(self, store: QuotaStore, ident: str) -> None:
        self._store = store
        self.ident = ident
        self._released = False

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        await self._store.give_back(self.ident)

    async def park(self, request_id: str) -> None:
        """Leave the slots with request `request_id`: given back by whoever hears it ended unexecuted."""
        if not self._released:
            await self._store.park(self.ident, request_id)


class RateLimiter:
    """The quotas of every call; the slots are kept by `store` (this process's memory unless given one)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, store: QuotaStore | None = None) -> None:
        self.store: QuotaStore = store or MemoryQuotas(clock)

    async def reserve(self, tool: str, limits: Sequence[Limit], *, grant: str, session: str) -> Reservation | Refusal:
        """Take one slot per bucket for every limit, or none: a refusal names the limit that is full."""
        wanted = [(limit, bucket_key(limit, grant=grant, session=session)) for limit in limits]
        taken = await self.store.take(tool, wanted)
        if isinstance(taken, Refusal):
            return taken
        return Reservation(self.store, taken)

    async def release_parked(self, request_id: str) -> None:
        """Request `request_id` ended without running: give back the quota its call parked, if any."""
        await self.store.give_back_parked(request_id)

    async def usage(self, counter: str, scope_key: str) -> int:
        """Slots currently held for ``counter`` under ``scope_key`` (a grant, a session id or "global")."""
        return await self.store.usage(counter, scope_key)


def new_reservation_id() -> str:
    return secrets.token_hex(12)


def full_window(tool: str, limit: Limit, oldest_counted: float, now: float) -> Refusal:
    """The refusal of a window holding `limit.max` slots, the oldest of which was taken at `oldest_counted`."""
    # Enough of the oldest slots must leave the window to bring the count below max.
    frees_at = oldest_counted + limit.window_seconds
    retry_after = max(frees_at - now, 0.0)
    message = f"{tool}: {limit.describe()} (counter '{limit.counter}'); try again in {_format_wait(retry_after)}"
    return Refusal(limit, retry_after, message)


def longest_wait(refusals: Sequence[Refusal]) -> Refusal:
    # Every exhausted limit has to free up before the call can pass, so report the longest wait.
    return max(refusals, key=lambda refusal: refusal.retry_after)


def distinct_buckets(wanted: Sequence[tuple[Limit, BucketKey]]) -> list[BucketKey]:
    # A counter named by two limits of the same call (all_tools and the tool) is one slot, not two.
    return list(dict.fromkeys(key for _, key in wanted))


class _Bucket:
    __slots__ = ("retention", "stamps")

    def __init__(self) -> None:
        # (timestamp, reservation id), oldest first; the id lets a release remove exactly its own slot.
        self.stamps: deque[tuple[float, str]] = deque()
        self.retention = 0.0

    def prune(self, now: float) -> None:
        while self.stamps and now - self.stamps[0][0] >= self.retention:
            self.stamps.popleft()

    def nth_newest(self, now: float, window: float, n: int) -> float | None:
        """When the `n`-th newest slot taken within `window` of `now` was taken; None if the window holds fewer.

        The slots are oldest first (each is taken at the clock's reading then, and the clock does not go back),
        so those out of the window lead: a binary search finds the first in it, and the window's count and
        its `n`-th newest follow without walking the slots. A burst of held calls keeps thousands in a window.
        """
        stamps = self.stamps
        low, high = 0, len(stamps)
        while low < high:
            middle = (low + high) // 2
            if now - stamps[middle][0] >= window:
                low = middle + 1
            else:
                high = middle
        if len(stamps) - low < n:
            return None
        return stamps[len(stamps) - n][0]


class MemoryQuotas:
    """Slots in this process: right for one gateway, wrong for several (each would count its own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[BucketKey, _Bucket] = {}
        self._held: dict[str, list[BucketKey]] = {}
        self._parked: dict[str, str] = {}
        self._last_sweep = clock()

    async def take(self, tool: str, wanted: Sequence[tuple[Limit, BucketKey]]) -> str | Refusal:
        with self._lock:
            now = self._clock()
            # Widen retention before anything prunes, so a counter shared with a longer window keeps that history.
            for limit, key in wanted:
                if (existing := self._buckets.get(key)) is not None:
                    existing.retention = max(existing.retention, limit.window_seconds)
            self._sweep(now)
            refusals = [
                refusal
                for limit, key in wanted
                if (refusal := self._check(tool, limit, self._buckets.get(key), now)) is not None
            ]
            if refusals:
                return longest_wait(refusals)
            ident = new_reservation_id()
            for limit, key in wanted:
                bucket = self._buckets.setdefault(key, _Bucket())
                bucket.retention = max(bucket.retention, limit.window_seconds)
            distinct = distinct_buckets(wanted)
            for key in distinct:
                self._buckets[key].stamps.append((now, ident))
            if distinct:
                self._held[ident] = distinct
            return ident

    async def give_back(self, reservation: str) -> None:
        with self._lock:
            for key in self._held.pop(reservation, ()):
                bucket = self._buckets.get(key)
                if bucket is None:
                    continue
                for entry in bucket.stamps:
                    if entry[1] == reservation:
                        bucket.stamps.remove(entry)
                        break
                if not bucket.stamps:
                    del self._buckets[key]

    async def park(self, reservation: str, request_id: str) -> None:
        with self._lock:
            if reservation in self._held:
                self._parked[request_id] = reservation

    async def give_back_parked(self, request_id: str) -> None:
        with self._lock:
            reservation = self._parked.pop(request_id, None)
        if reservation is not None:
            await self.give_back(reservation)

    async def usage(self, counter: str, scope_key: str) -> int:
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

    @staticmethod
    def _check(tool: str, limit: Limit, bucket: _Bucket | None, now: float) -> Refusal | None:
        if bucket is None:
            return None
        bucket.prune(now)
        oldest_counted = bucket.nth_newest(now, limit.window_seconds, limit.max)
        return None if oldest_counted is None else full_window(tool, limit, oldest_counted, now)

    def _sweep(self, now: float) -> None:
        # Buckets of agents and sessions that went away would otherwise stay forever.
        if now - self._last_sweep < SWEEP_INTERVAL:
            return
        self._last_sweep = now
        for key in list(self._buckets):
            bucket = self._buckets[key]
            bucket.prune(now)
            if not bucket.stamps:
                del self._buckets[key]
        live = {ident for bucket in self._buckets.values() for _, ident in bucket.stamps}
        self._held = {ident: keys for ident, keys in self._held.items() if ident in live}
        self._parked = {rid: ident for rid, ident in self._parked.items() if ident in live}


def bucket_key(limit: Limit, *, grant: str, session: str) -> BucketKey:
    if limit.scope == "grant":
        return (limit.counter, "grant", grant)
    if limit.scope == "session":
        return (limit.counter, "session", session)
    return (limit.counter, "global", GLOBAL_SCOPE_KEY)


def _format_wait(seconds: float) -> str:
    # Whole seconds, rounded up: "try again in 0.3s" invites a retry that is still too early.
    return format_duration(max(1, math.ceil(seconds)))
