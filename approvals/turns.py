"""Work asked for at once, done in batches: the first asker works now, those who ask meanwhile go next, together.

The caller that finds nothing under way runs its batch at once, so a lone request waits for
nothing. Callers that ask while a batch is under way queue; when it ends, the first of them is
handed the turn and runs the next batch for all of them (up to `max_batch`), and every caller in a
batch is woken once that batch has run. The audit append (`approvals.audit_batch`), the making of
new requests (`approvals.park_batch`), the repeat reads (`approvals.repeat_batch`) and, in the
gateway, the parks of shared quota slots (`gateway.shared_quotas`) take turns this way; each says
what running a batch means and how its outcome reaches each caller.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import anyio


class Waiting(Protocol):
    woken: anyio.Event
    leads: bool  # woken to run the next batch rather than because its own has run


W = TypeVar("W", bound=Waiting)


class Turns(Generic[W]):
    def __init__(self, run: Callable[[list[W]], Awaitable[None]], max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._run = run
        self.max_batch = max_batch
        self._queue: deque[W] = deque()
        self._busy = False

    async def take(self, item: W) -> None:
        """Return once the batch holding `item` has run (by this caller or by the one whose turn it was)."""
        # Shielded: a caller cancelled while queued must still take its turn when it comes, or the queue would stall.
        with anyio.CancelScope(shield=True):
            self._queue.append(item)
            if self._busy:
                await item.woken.wait()
            else:
                self._busy = True
                item.leads = True
            if item.leads:
                # This caller's own item is first in the queue: it was queued when nothing was, or handed the turn.
                batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                try:
                    await self._run(batch)
                finally:
                    for each in batch:
                        each.woken.set()
                    self._hand_on()

    def _hand_on(self) -> None:
        if self._queue:
            following = self._queue[0]
            following.leads = True
            following.woken.set()
        else:
            self._busy = False
