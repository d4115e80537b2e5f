"""Which outbox items this replica should work on now: the ones a change nudged, and a periodic scan.

Channels that deliver through `approvals.outbox` (Slack, webhooks) hear of work two ways: a change
this replica heard nudges its item at once, and a scan every `poll_interval` finds what nobody
announced here (reminders come due, leases of replicas that died run out). An item already being
worked on in this process is not handed out again until `done`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from typing import Generic, TypeVar

import anyio

from approvals.errors import ApprovalError

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class DueWork(Generic[K]):
    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self._nudged: set[K] = set()
        self._busy: set[K] = set()
        self._wake = anyio.Event()

    def nudge(self, *keys: K) -> None:
        self._nudged.update(keys)
        self._wake.set()

    def done(self, key: K) -> None:
        self._busy.discard(key)

    async def batches(self, scan: Callable[[], Awaitable[Iterable[K]]], what: str) -> AsyncIterator[set[K]]:
        """For ever: the keys to start work on, each batch once something was nudged or the scan came due."""
        scanned = anyio.current_time()
        while True:
            with anyio.move_on_after(max(scanned + self.poll_interval - anyio.current_time(), 0)):
                await self._wake.wait()
            self._wake = anyio.Event()
            wanted, self._nudged = self._nudged, set()
            if anyio.current_time() >= scanned + self.poll_interval:
                scanned = anyio.current_time()
                try:
                    wanted.update(await scan())
                except ApprovalError as exc:
                    log.warning("could not read %s: %s", what, exc)
            fresh = wanted - self._busy
            self._busy |= fresh
            yield fresh
