"""Refused calls per agent: an agent whose calls keep being refused is stopped before they cost anything.

A denied, hidden, unknown, malformed or over-quota call is refused at once, but each refusal is
still work and an audit row: a flood of them from one token grows the database and the audit
pages for everyone. So each agent has a budget of refusals per window (`[agent_limits]`); past it,
every call of that agent is refused `[RATE LIMITED]` before anything is parsed, evaluated or
written, until the window has room again. The first call refused that way in a window is audited
(`call.limited`, `detail.limit = "refusals"`); the rest are only counted in the log.

Kept in the process's memory: with several replicas, each counts its own share.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Final

from approvals.durations import format_duration
from gateway.errors import Tag

# The refusals that count: decisions the gateway made against the call itself, not outcomes of
# approval (rejected, expired) or of the gateway's own health (unavailable).
COUNTED: Final = frozenset(
    {Tag.INVALID_ARGUMENTS, Tag.POLICY_DENIED, Tag.UNKNOWN_TOOL, Tag.RATE_LIMITED, Tag.NOT_FOUND}
)


class RefusalBudget:
    def __init__(self, max_refusals: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_refusals = max_refusals
        self.window = window
        self._clock = clock
        self._stamps: dict[str, deque[float]] = {}
        self._reported_until: dict[str, float] = {}

    def wait(self, agent: str) -> float | None:
        """Seconds until the agent's calls are taken again, or None when they are now."""
        stamps = self._stamps.get(agent)
        if stamps is None:
            return None
        now = self._clock()
        while stamps and now - stamps[0] >= self.window:
            stamps.popleft()
        if len(stamps) < self.max_refusals:
            if not stamps:
                del self._stamps[agent]
            return None
        return stamps[0] + self.window - now

    def note(self, agent: str) -> None:
        """One more of the agent's calls was refused."""
        stamps = self._stamps.setdefault(agent, deque(maxlen=self.max_refusals))
        stamps.append(self._clock())

    def first_of_block(self, agent: str, wait: float) -> bool:
        """Whether this is the first call refused in the agent's current block (the one to audit)."""
        now = self._clock()
        if now < self._reported_until.get(agent, 0.0):
            return False
        self._reported_until[agent] = now + wait
        return True

    def message(self, wait: float) -> str:
        return (
            f"{self.max_refusals} of your calls were refused within {format_duration(self.window)} "
            f"(agent_limits.max_refusals_per_agent); every call you make is refused until "
            f"{format_duration(max(1, int(wait + 0.999)))} from now. Stop repeating calls that are refused: read "
            "each refusal and change the call"
        )
