"""Every waiting request's deadlines on one loop timer (`approvals.timeouts` posts what falls due).

A job per request in APScheduler cost most of a park's scheduling work: each `add_job` builds a
job and a trigger and inspects the callable's signature, and a thousand held calls are a thousand
such jobs. Here a deadline is an entry in a dictionary and a heap, and one loop timer is armed at
the earliest. Arming a key again replaces its deadline (the same deadline again changes nothing);
an entry that was replaced or cancelled stays in the heap until it comes up and is then dropped,
and the heap is rebuilt when such entries outnumber the live ones.

Deadlines are wall-clock times, as APScheduler's `date` trigger had them: one already past falls
due at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

# Dropped entries beyond this many (and beyond the live ones) make the heap be rebuilt.
_SLACK = 64
# A loop timer may run up to a millisecond before its time (uvloop): a deadline due that soon is
# handled now, or the timer would be re-armed for the same instant again and again until it came.
_EARLY = 0.002


class Deadlines:
    """Calls `due(key)` once each armed key's time has come, unless it was disarmed or armed again first."""

    def __init__(self, due: Callable[[str], None]) -> None:
        self._due = due
        # key -> (wall-clock deadline, loop time, tie-breaker): the live entry of each key.
        self._live: dict[str, tuple[datetime, float, int]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._live))

    def arm(self, key: str, at: datetime) -> None:
        live = self._live.get(key)
        if live is not None and live[0] == at:
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + (at - datetime.now(UTC)).total_seconds()
        entry = (at, when, next(self._order))
        self._live[key] = entry
        heapq.heappush(self._heap, (when, entry[2], key))
        if len(self._heap) > 2 * len(self._live) + _SLACK:
            self._heap = [(w, n, k) for k, (_, w, n) in self._live.items()]
            heapq.heapify(self._heap)
        if self._timer is None or when < self._timer_at:
            self._arm_timer(loop, when)

    def disarm(self, key: str) -> None:
        self._live.pop(key, None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._live.clear()
        self._heap.clear()

    def _arm_timer(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire, loop)
        self._timer_at = when

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        while self._heap:
            when, order, key = self._heap[0]
            live = self._live.get(key)
            if live is None or live[2] != order:
                heapq.heappop(self._heap)  # replaced or disarmed
                continue
            if when > now + _EARLY:
                self._arm_timer(loop, when)
                return
            heapq.heappop(self._heap)
            del self._live[key]
            self._due(key)
