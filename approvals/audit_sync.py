"""Group flush of committed audit appends: one flush to disk for every caller waiting meanwhile.

An allowed call's audit event can be committed without waiting for the disk (`approvals.sqlite_append`),
the call forwarded, and the event made durable while the upstream works on it. Each caller then waits
here for a flush that started after its own commit: the caller that finds no flush in flight starts
one at once; callers arriving during a flush share the next one, started by the first of them as soon
as the running one ends, so a flush is never waited for by more than one that it does not cover.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio


@dataclass(eq=False)
class _Waiting:
    woken: anyio.Event = field(default_factory=anyio.Event)
    flushes: bool = False  # woken to run the next flush, rather than because its flush has ended
    error: Exception | None = None


class GroupSync:
    """`await sync()` returns once a flush that started after the call has ended; raises what made it fail."""

    def __init__(self, flush: Callable[[], Awaitable[None]]) -> None:
        self.flush = flush
        self._queue: deque[_Waiting] = deque()
        self._flushing = False
        self.flushes = 0

    async def __call__(self) -> None:
        me = _Waiting()
        # Shielded as the writes are: a cancelled caller still takes its turn, or the queue behind it would stall.
        with anyio.CancelScope(shield=True):
            self._queue.append(me)
            if self._flushing:
                await me.woken.wait()
            else:
                self._flushing = me.flushes = True
            if me.flushes:
                await self._run()
        if me.error is not None:
            raise me.error

    async def _run(self) -> None:
        covered = list(self._queue)
        self._queue.clear()
        error: Exception | None = None
        try:
            await self.flush()
            self.flushes += 1
        except Exception as exc:
            error = exc
        finally:
            for waiting in covered:
                waiting.error = error
                waiting.woken.set()
            if self._queue:
                following = self._queue[0]
                following.flushes = True
                following.woken.set()
            else:
                self._flushing = False
