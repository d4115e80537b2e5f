"""Request deadlines on one loop timer: what falls due, once, in order; what was re-armed or disarmed does not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio

from approvals.deadlines import Deadlines
from tests.harness import wait_for


async def settle(fired: list[str], count: int) -> None:
    await wait_for(lambda: len(fired) >= count, within=10)
    await anyio.sleep(0.05)  # anything wrongly still to fire (at once) has fired by now


async def test_past_deadlines_fall_due_at_once_in_order_and_future_ones_wait() -> None:
    fired: list[str] = []
    deadlines = Deadlines(fired.append)
    now = datetime.now(UTC)
    deadlines.arm("later", now + timedelta(hours=1))
    deadlines.arm("b", now - timedelta(seconds=1))
    deadlines.arm("a", now - timedelta(seconds=2))
    await settle(fired, 2)
    assert fired == ["a", "b"]
    assert list(deadlines) == ["later"] and len(deadlines) == 1
    deadlines.close()


async def test_a_rearmed_key_falls_due_once_at_its_new_time_and_a_disarmed_one_never() -> None:
    fired: list[str] = []
    deadlines = Deadlines(fired.append)
    now = datetime.now(UTC)
    deadlines.arm("moved", now + timedelta(hours=1))
    deadlines.arm("moved", now - timedelta(seconds=1))  # brought forward: due now, and only once
    deadlines.arm("put off", now - timedelta(seconds=1))
    deadlines.arm("put off", now + timedelta(hours=1))
    deadlines.arm("gone", now - timedelta(seconds=1))
    deadlines.disarm("gone")
    deadlines.arm("same", now - timedelta(seconds=1))
    deadlines.arm("same", now - timedelta(seconds=1))  # the same deadline again changes nothing
    await settle(fired, 2)
    assert sorted(fired) == ["moved", "same"]
    assert list(deadlines) == ["put off"]
    deadlines.close()


async def test_many_rearms_keep_only_the_live_entries() -> None:
    fired: list[str] = []
    deadlines = Deadlines(fired.append)
    now = datetime.now(UTC)
    for minute in range(1, 500):
        deadlines.arm("one", now + timedelta(minutes=minute))
    assert len(deadlines) == 1
    assert len(deadlines._heap) <= 2 + 64 + 1  # replaced entries are dropped once they outnumber the live ones
    deadlines.arm("one", now - timedelta(seconds=1))
    await settle(fired, 1)
    assert fired == ["one"] and len(deadlines) == 0
    deadlines.close()
