"""The "still waiting" progress notices of held calls: one loop timer for all of them.

A held call sends a notice every `progress_interval` so its client (and any proxy between) sees
that it is alive. With a task per held call sleeping between notices, ten thousand held calls were
ten thousand tasks and stacks doing nothing; here every held call is a small entry in one heap,
and one loop timer wakes when notices are due, a tick at a time (so ten thousand notices spread
over the interval wake it a few times a second, not two thousand), and writes every due notice
in that one pass where it can go straight onto its stream (`ProgressLine.notice_now`). A task
exists only for a notice that has to wait (a slow client's stream, or one that goes the SDK's
way), so a slow client delays its own notices and nobody else's.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections.abc import Callable

from gateway.caller import ProgressLine

_EARLY = 0.002

log = logging.getLogger(__name__)

# Notices due within one tick go out together, at its end: a notice is at most this late.
NOTICE_TICK = 0.25


class Beat:
    """One held call's notices: what to say, where to say it, and whether it still waits."""

    __slots__ = ("progress", "sending", "stopped", "text")

    def __init__(self, progress: ProgressLine, text: Callable[[], str]) -> None:
        self.progress = progress
        self.text = text
        self.stopped = False
        self.sending: asyncio.Task[None] | None = None


class Notices:
    """Every held call's notice beat on one timer: `start` when the call begins to wait, `stop` when it ends."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.tick = min(NOTICE_TICK, interval / 4)
        # (due, tie-breaker, beat); a stopped beat stays until it comes up and is then dropped.
        self._due: list[tuple[float, int, Beat]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def __len__(self) -> int:
        return sum(1 for _, _, beat in self._due if not beat.stopped)

    def start(self, progress: ProgressLine, text: Callable[[], str]) -> Beat:
        """Notices every `interval` from now on (the caller sends the first one itself, at once)."""
        beat = Beat(progress, text)
        self._schedule(beat, asyncio.get_running_loop())
        return beat

    async def stop(self, beat: Beat) -> None:
        """No more notices for this call; one being sent right now is cancelled and waited for."""
        beat.stopped = True
        sending = beat.sending
        if sending is not None and not sending.done():
            sending.cancel()
            await asyncio.wait([sending])

    def _schedule(self, beat: Beat, loop: asyncio.AbstractEventLoop) -> None:
        due = loop.time() + self.interval
        heapq.heappush(self._due, (due, next(self._order), beat))
        if self._timer is None or due < self._timer_at:
            self._arm(loop, due)

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        at = math.ceil(due / self.tick) * self.tick
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer = loop.call_at(at, self._fire, loop)
        self._timer_at = at

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        due: list[Beat] = []
        # A loop timer may run up to a millisecond early (uvloop): what falls due that soon goes now,
        # or the timer would be re-armed for the same instant again and again until it came.
        while self._due and self._due[0][0] <= now + _EARLY:
            _, _, beat = heapq.heappop(self._due)
            if not beat.stopped and beat.sending is None:
                due.append(beat)
        for beat in due:
            if not self._now(beat, loop):
                beat.sending = loop.create_task(self._send(beat, loop))
        while self._due and self._due[0][2].stopped:
            heapq.heappop(self._due)
        if self._due:
            self._arm(loop, self._due[0][0])

    def _now(self, beat: Beat, loop: asyncio.AbstractEventLoop) -> bool:
        """The notice written in this pass (True, and the next one scheduled), or False: it goes in a task."""
        try:
            if not beat.progress.notice_now(beat.text()):
                return False
        except Exception:  # a notice that cannot be sent must not end the wait; the next one may go through
            log.debug("progress notice not sent", exc_info=True)
        self._schedule(beat, loop)
        return True

    async def _send(self, beat: Beat, loop: asyncio.AbstractEventLoop) -> None:
        try:
            await beat.progress.notice(beat.text())
        except Exception:  # a notice that cannot be sent must not end the wait; the next one may go through
            log.debug("progress notice not sent", exc_info=True)
        finally:
            beat.sending = None
        if not beat.stopped:
            # The next notice counts from when this one went out, as a sleeping loop would.
            self._schedule(beat, loop)
