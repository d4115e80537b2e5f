"""Crash points: the gateway process kills itself (SIGKILL) at a named step of an execution, when told to.

Crash tests set `COUNTERSIGN_KILL_AT` to one of `POINTS` to stop a real `countersign serve` at an
exact step, where killing it from outside could only hit a step by luck. Unset (always, outside
those tests) `reached` does nothing.
"""

from __future__ import annotations

import os
import signal

ENVIRONMENT = "COUNTERSIGN_KILL_AT"
POINTS = (
    "before_begin",  # approved; begin_execution not yet committed
    "after_begin",  # executing committed; nothing forwarded yet
    "after_forward",  # the upstream has answered; its answer is not recorded yet
    "after_finish",  # executed (or failed) is committed
)


def armed(point: str) -> bool:
    """Whether this process is to stop at `point`: a step that is only taken sometimes is then always taken."""
    return os.environ.get(ENVIRONMENT) == point


def reached(point: str) -> None:
    assert point in POINTS, point
    if os.environ.get(ENVIRONMENT) == point:
        os.kill(os.getpid(), signal.SIGKILL)
