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

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import anyio

from approvals.audit import Event
from approvals.db import Database
from approvals.errors import StoreUnavailable
from approvals.turns import Turns

# Large enough that a burst of any size is written in a few transactions, small enough that one
# transaction (one insert of this many rows) stays short for the callers waiting on it.
MAX_BATCH = 128


@dataclass(eq=False)
class _Queued:
    event: Event
    at: datetime
    woken: anyio.Event = field(default_factory=anyio.Event)
    leads: bool = False
    error: Exception | None = None


class AuditBatches:
    """Appends events to the chain in as few write transactions as the load allows."""

    def __init__(self, db: Database, *, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self._turns = Turns(self._write_batch, max_batch)
        # How many transactions wrote how many events (size → transactions), for /metrics.
        self.sizes: Counter[int] = Counter()

    async def append(self, event: Event, at: datetime) -> None:
        """Return once `event` is committed to the chain; raise what made its transaction fail."""
        item = _Queued(event, at)
        await self._turns.take(item)
        if item.error is not None:
            raise item.error

    async def _write_batch(self, batch: list[_Queued]) -> None:
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
