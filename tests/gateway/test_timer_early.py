"""Loop timers that run a little early (uvloop's are millisecond-grained) cost one wake-up, not a spin.

A timer that comes up to a millisecond before its time used to find nothing due yet and re-arm for the
same instant, again and again until the moment came: hundreds of wake-ups per slot, on every slot of
the keep-alive wheel, the notice timer and the deadline timer.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import uvloop

from approvals.deadlines import Deadlines
from gateway.frame_clock import KeepAliveWheel


class CountingLoop:
    """The running loop, counting the timers armed through it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.armed = 0

    def call_at(self, when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        self.armed += 1
        return self.loop.call_at(when, callback, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)


class Stream:
    def __init__(self) -> None:
        self.looked: list[float] = []

    def keepalive_due(self, now: float) -> float | None:
        self.looked.append(now)
        return None


def run_on_uvloop(main: Any) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def test_the_keepalive_wheel_arms_one_timer_per_slot_on_uvloop() -> None:
    async def main() -> None:
        loop = CountingLoop(asyncio.get_running_loop())
        wheel = KeepAliveWheel(loop, tick=0.01)  # type: ignore[arg-type]
        streams = [Stream() for _ in range(20)]
        start = loop.time()
        for index, stream in enumerate(streams):
            wheel.watch(stream, start + 0.05 + index * 0.013)
        await asyncio.sleep(0.05 + 20 * 0.013 + 0.1)
        assert all(len(stream.looked) == 1 for stream in streams)
        # One timer per slot that held a stream (and one re-arm per earlier stream), never a spin.
        assert loop.armed <= 2 * len(streams)

    run_on_uvloop(main)


def test_the_deadline_timer_runs_each_deadline_once_without_spinning_on_uvloop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        counting = CountingLoop(asyncio.get_running_loop())
        monkeypatch.setattr("approvals.deadlines.asyncio.get_running_loop", lambda: counting)
        due: list[str] = []
        deadlines = Deadlines(due.append)
        now = datetime.now(UTC)
        for index in range(20):
            deadlines.arm(f"r{index}", now + timedelta(milliseconds=50 + 13 * index))
        await asyncio.sleep(0.05 + 20 * 0.013 + 0.1)
        assert due == [f"r{index}" for index in range(20)]
        assert counting.armed <= 2 * 20

    run_on_uvloop(main)
