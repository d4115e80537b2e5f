"""Who is calling a tool, how to tell that they left or withdrew, and the progress line back to them."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

log = logging.getLogger(__name__)

T = TypeVar("T")

Progress = Callable[[float, float | None, str | None], Awaitable[None]]

# A client that gives up on its own read timeout cancels with a reason like "Request timed out" or
# "timed out after 60.0s"; that is the agent detaching, not withdrawing its request.
_TIMEOUT_REASON = re.compile(r"time[sd]?\s*out|timeout", re.IGNORECASE)


@dataclass(frozen=True)
class Caller:
    """Who is calling, and how to tell that they went away or withdrew."""

    agent: str
    session: str
    disconnected: anyio.Event | None = None
    # Returns the reason when the client explicitly cancelled this request (notifications/cancelled).
    cancel_reason: Callable[[], Awaitable[str | None]] | None = None

    @property
    def gone(self) -> bool:
        return self.disconnected is not None and self.disconnected.is_set()

    async def withdrew(self) -> bool:
        """True when the agent cancelled on purpose; False when it dropped or timed out (it may come back)."""
        if self.cancel_reason is None:
            return False
        reason = await self.cancel_reason()
        return reason is not None and not _TIMEOUT_REASON.search(reason)


class ProgressLine:
    """Keeps progress values increasing across our own notices and relayed upstream progress."""

    def __init__(self, send: Progress | None) -> None:
        self._send = send
        self.value = 0.0

    async def notice(self, message: str) -> None:
        self.value += 1
        await self._emit(self.value, None, message)

    async def relay(self, progress: float, total: float | None, message: str | None) -> None:
        base = self.value
        await self._emit(base + progress, None if total is None else base + total, message)

    async def _emit(self, value: float, total: float | None, message: str | None) -> None:
        if self._send is None:
            return
        try:
            await self._send(value, total, message)
        except Exception as exc:  # a client that cannot take progress still gets its result
            log.debug("progress not delivered: %s", exc)


async def race_gone(step: Awaitable[T], gone: anyio.Event) -> T | None:
    """Run a wait step, but give up as soon as `gone` is set (then return None)."""
    result: list[T] = []
    async with anyio.create_task_group() as tg:

        async def run_step() -> None:
            result.append(await step)
            tg.cancel_scope.cancel()

        async def watch() -> None:
            await gone.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(run_step)
        tg.start_soon(watch)
    return result[0] if result and not gone.is_set() else None
