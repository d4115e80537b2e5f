"""The "still waiting" progress notices of held calls: one loop timer for all of them.

A held call sends a notice every `progress_interval` so its client (and any proxy between) sees
that it is alive. With a task per held call sleeping between notices, ten thousand held calls were
ten thousand tasks and stacks doing nothing; here every held call is a small entry in the list of
the tick its next notice falls in, and one loop timer wakes when notices are due, a tick at a time
(so ten thousand notices spread over the interval wake it a few times a second, not two thousand),
and writes every due notice in that one pass where it can go straight onto its stream
(`ProgressLine.notice_now`). A task exists only for a notice that has to wait (a slow client's
stream, or one that goes the SDK's way), so a slow client delays its own notices and nobody else's.

Only the time left changes from one notice of a call to the next, and ten thousand calls say the
same few hundred durations: each is formatted once (`time_left`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime

from approvals.durations import format_duration
from approvals.service import utcnow
from gateway.caller import ProgressLine

_EARLY = 0.002

log = logging.getLogger(__name__)

# Notices due within one tick go out together, at its end: a notice is at most this late.
NOTICE_TICK = 0.25


_LEFT: dict[int, str] = {}
_LEFT_MOST = 8192  # distinct texts kept (a day in seconds would be 86,400): cleared when full


def time_left(seconds: float) -> str:
    """`format_duration(max(seconds, 0))`, each distinct text built once: every notice says how long is left."""
    # format_duration's own rounding: tenths of a second below a minute, whole seconds from there.
    key = int(seconds * 10 + 0.5) if seconds > 0 else 0
    if key >= 600:
        key = 600 + int(seconds + 0.5)
    text = _LEFT.get(key)
    if text is None:
        if len(_LEFT) >= _LEFT_MOST:
            _LEFT.clear()
        text = _LEFT[key] = format_duration(key / 10 if key < 600 else float(key - 600))
    return text


def waiting_text(head: str, expires: datetime, tail: str, clock: Callable[[], datetime]) -> Callable[[], str]:
    """A held call's notice text: `head`, the time left until `expires` by `clock`, `tail`."""
    if clock is utcnow:
        # The same reading as `utcnow` gives, without an aware datetime built and subtracted every time.
        at = expires.timestamp()
        return lambda: head + time_left(at - time.time()) + tail
    return lambda: head + time_left((expires - clock()).total_seconds()) + tail


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
        # The beats due in each tick (numbered by its end, `slot * tick`), in the order they were scheduled;
        # a stopped beat stays until its tick comes up and is then dropped.
        self._slots: dict[int, list[Beat]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = 0
        self._firing = False

    def __len__(self) -> int:
        return sum(1 for beats in self._slots.values() for beat in beats if not beat.stopped)

    def start(self, progress: ProgressLine, text: Callable[[], str]) -> Beat:
        """Notices every `interval` from now on (the caller sends the first one itself, at once)."""
        beat = Beat(progress, text)
        loop = asyncio.get_running_loop()
        self._schedule(beat, loop, loop.time())
        return beat

    async def stop(self, beat: Beat) -> None:
        """No more notices for this call; one being sent right now is cancelled and waited for."""
        beat.stopped = True
        sending = beat.sending
        if sending is not None and not sending.done():
            sending.cancel()
            await asyncio.wait([sending])

    def _schedule(self, beat: Beat, loop: asyncio.AbstractEventLoop, now: float) -> None:
        """The next notice `interval` after `now`, in the tick that ends at or after that moment."""
        slot = math.ceil((now + self.interval) / self.tick)
        beats = self._slots.get(slot)
        if beats is not None:
            beats.append(beat)
            return
        self._slots[slot] = [beat]
        if not self._firing and (self._timer is None or slot < self._timer_slot):
            self._arm(loop, slot)

    def _arm(self, loop: asyncio.AbstractEventLoop, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(slot * self.tick, self._fire, loop)
        self._timer_slot = slot

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        # A loop timer may run up to a millisecond early (uvloop): a tick that ends that soon goes now,
        # or the timer would be re-armed for the same instant again and again until it came.
        current = math.floor((now + _EARLY) / self.tick)
        self._firing = True
        try:
            for slot in sorted(s for s in self._slots if s <= current):
                for beat in self._slots.pop(slot):
                    if not beat.stopped and beat.sending is None and not self._now(beat, loop, now):
                        beat.sending = loop.create_task(self._send(beat, loop))
        finally:
            self._firing = False
        if self._slots:
            self._arm(loop, min(self._slots))

    def _now(self, beat: Beat, loop: asyncio.AbstractEventLoop, now: float) -> bool:
        """The notice written in this pass (True, and the next one scheduled), or False: it goes in a task."""
        try:
            if not beat.progress.notice_now(beat.text()):
                return False
        except Exception:  # a notice that cannot be sent must not end the wait; the next one may go through
            log.debug("progress notice not sent", exc_info=True)
        self._schedule(beat, loop, now)
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
            self._schedule(beat, loop, loop.time())
