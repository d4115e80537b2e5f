"""Frames on thousands of waiting streams from one loop timer: keep-alives on a wheel, writes without a task.

Ten thousand held calls each need a keep-alive comment whenever their stream has been silent for
`keepalive_interval`. With a loop timer per stream, re-armed after every frame, and a task per
frame, the timers and tasks cost more than the frames. Here every open stream sits in one slot of
a wheel (slots `tick` apart; a stream waits in the slot at or before the moment it falls due, so
it is never late for its bound), and one loop timer, armed at the earliest slot that holds
anything, goes through the whole slot in one pass. A stream written to since it was slotted just
moves on to the slot of its new due time; one that ended is taken out when it ends.

A frame is written in that same pass (`run_now`): the ASGI send of a small frame finishes at once
unless the client's socket is full, and only then does the rest of it become a task of its own,
so a slow client holds up nobody else's frames.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import math
import weakref
from collections.abc import Coroutine, Generator
from typing import Any, Protocol

# The wheel's resolution: a keep-alive goes out at most this much before its bound, never after it.
DEFAULT_TICK = 0.25
# A loop timer may run this much before its time (uvloop's are millisecond-grained); a slot that is
# due that soon is gone through now, or the wheel would re-arm for the same instant until it came.
EARLY = 0.002


class Watched(Protocol):
    def keepalive_due(self, now: float) -> float | None:
        """Send the keep-alive if it is due by `now` (or about to be); the next time to look, or None: stop."""
        ...


class FrameLock:
    """A stream's write lock, which a frame can take without a task (`acquire_nowait`) and hold across one.

    First come, first served; released from whichever task (or none) finished the write.
    """

    __slots__ = ("_locked", "_waiters")

    def __init__(self) -> None:
        self._locked = False
        self._waiters: collections.deque[asyncio.Future[None]] | None = None

    def locked(self) -> bool:
        return self._locked

    def free(self) -> bool:
        """Nobody holds or waits for the lock: a write that finishes without waiting may go now."""
        return not (self._locked or self._waiters)

    def acquire_nowait(self) -> bool:
        if self._locked or self._waiters:
            return False
        self._locked = True
        return True

    async def acquire(self) -> None:
        if self.acquire_nowait():
            return
        if self._waiters is None:
            self._waiters = collections.deque()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over just as we were cancelled: pass it on
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the lock passes straight to the next writer
                return
        self._locked = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def run_now(coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> asyncio.Task[None] | None:
    """Run `coro` at once, outside any task, up to its first wait; a coroutine that has to wait goes on in a task.

    None when it finished there and then (the usual case for a small frame); else the task it goes on in.
    """
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return None
    return loop.create_task(_go_on(coro, waiting_on))


async def _go_on(coro: Coroutine[Any, Any, None], waiting_on: object) -> None:
    await _GoOn(coro, waiting_on)


class _GoOn:
    """Hands a coroutine that already started (and is waiting on `waiting_on`) to the task awaiting this."""

    __slots__ = ("_coro", "_waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting_on: object) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancel reaches the coroutine where it waits
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting_on = coro.send(sent)
                except StopIteration:
                    return


class KeepAliveWheel:
    """Every open stream's next keep-alive, in slots `tick` apart, on one loop timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = DEFAULT_TICK) -> None:
        self.tick = tick
        self._loop = loop
        self._slots: dict[int, dict[Watched, None]] = {}
        self._where: dict[Watched, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = 0
        self._firing = False

    def __len__(self) -> int:
        return len(self._where)

    def watch(self, stream: Watched, due: float) -> None:
        """Look at `stream` again at `due` (in the slot at or just before it)."""
        slot = math.floor(due / self.tick)
        old = self._where.get(stream)
        if old == slot:
            return
        if old is not None:
            self._drop(stream, old)
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = {}
        bucket[stream] = None
        self._where[stream] = slot
        if not self._firing and (self._timer is None or slot < self._timer_slot):
            self._arm(slot)

    def unwatch(self, stream: Watched) -> None:
        slot = self._where.pop(stream, None)
        if slot is not None:
            bucket = self._slots.get(slot)
            if bucket is not None:
                bucket.pop(stream, None)
                if not bucket:
                    del self._slots[slot]

    def _drop(self, stream: Watched, slot: int) -> None:
        bucket = self._slots.get(slot)
        if bucket is not None:
            bucket.pop(stream, None)
            if not bucket:
                del self._slots[slot]

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_slot = slot
        # Its own empty context: the frames of every stream are written from it, not from whichever request armed it.
        self._timer = self._loop.call_at(slot * self.tick, self._fire, context=contextvars.Context())

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        current = math.floor((now + EARLY) / self.tick)
        soonest = (current + 1) * self.tick
        where = self._where
        self._firing = True
        try:
            for slot in sorted(s for s in self._slots if s <= current):
                for stream in self._slots.pop(slot, {}):
                    if where.get(stream) != slot:
                        continue
                    del where[stream]
                    try:
                        due = stream.keepalive_due(now)
                    except Exception:  # one stream's trouble must not stop everyone else's keep-alives
                        due = None
                    if due is not None and stream not in where:
                        self.watch(stream, due if due > soonest else soonest)
        finally:
            self._firing = False
        if self._slots:
            self._arm(min(self._slots))


_WHEELS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, KeepAliveWheel]] = weakref.WeakKeyDictionary()


def wheel_of(loop: asyncio.AbstractEventLoop, interval: float) -> KeepAliveWheel:
    """The loop's keep-alive wheel for streams kept alive every `interval` (a tick of a quarter of it at most)."""
    tick = min(DEFAULT_TICK, interval / 4)
    wheels = _WHEELS.setdefault(loop, {})
    wheel = wheels.get(tick)
    if wheel is None:
        wheel = wheels[tick] = KeepAliveWheel(loop, tick)
    return wheel
