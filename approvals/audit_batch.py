"""Group commit for audit events that change no request: one transaction for all that queued meanwhile.

Every allowed call is recorded before it is forwarded, so its append sits on the path of every
call. Appended one by one, each event is a write transaction of its own: the chain lock (SQLite's
write lock; PostgreSQL's advisory lock, shared by every replica), a read of the chain head, the
insert and a commit that waits for the disk. Under load those queue one behind another.

Here the caller that finds no write in flight writes at once, so a lone event waits for nothing.
Events that arrive while a write is in flight queue, and the next write appends all of them (up to
`max_batch`): one lock, one head read, one insert of N rows, one commit. Each caller returns only
once the transaction that holds its event has committed, and when that transaction fails every
caller in it gets the error — so "recorded before it is forwarded" holds exactly as before.

Nobody waits for events that came after its own: the caller whose write committed hands the
writing on to the first caller still queued instead of writing the rest itself.

Request transitions do not come through here: each must commit together with its request row.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime

import anyio

from approvals.audit import Event
from approvals.db import Database
from approvals.errors import StoreUnavailable

# Large enough that a burst of any size is written in a few transactions, small enough that one
# transaction (one insert of this many rows) stays short for the callers waiting on it.
MAX_BATCH = 128


@dataclass(eq=False)
class _Queued:
    event: Event
    at: datetime
    woken: anyio.Event = field(default_factory=anyio.Event)
    # Woken to write the next batch (rather than because its own batch has ended).
    writes: bool = False
    error: Exception | None = None


class AuditBatches:
    """Appends events to the chain in as few write transactions as the load allows."""

    def __init__(self, db: Database, *, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.db = db
        self.max_batch = max_batch
        self._queue: deque[_Queued] = deque()
        self._writing = False
        # How many transactions wrote how many events (size → transactions), for /metrics.
        self.sizes: Counter[int] = Counter()

    async def append(self, event: Event, at: datetime) -> None:
        """Return once `event` is committed to the chain; raise what made its transaction fail."""
        item = _Queued(event, at)
        # Shielded like every database write: a caller cancelled while its event is queued must still
        # take its turn at writing when it comes, or the queue behind it would stall.
        with anyio.CancelScope(shield=True):
            self._queue.append(item)
            if self._writing:
                await item.woken.wait()
            else:
                self._writing = True
                item.writes = True
            if item.writes:
                await self._write_batch()
        if item.error is not None:
            raise item.error

    async def _write_batch(self) -> None:
        # The writer's own event is first in the queue: it was queued when nothing was, or it was handed the turn.
        batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        # Until the commit has returned, nobody in the batch may read their event as recorded.
        error: Exception | None = StoreUnavailable("the audit write was interrupted before it committed")
        try:
            await self.db.append_events([(item.event, item.at) for item in batch])
            error = None
        except Exception as exc:
            error = exc
        finally:
            if error is None:
                self.sizes[len(batch)] += 1
            for item in batch:
                item.error = error
                item.woken.set()
            if self._queue:
                following = self._queue[0]
                following.writes = True
                following.woken.set()
            else:
                self._writing = False
