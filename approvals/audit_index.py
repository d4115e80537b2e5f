"""Bringing the audit search index up to date off the call path (SQLite; migration 0018).

An allowed call waits for its audit event to be committed; before 0018 that commit also wrote the
event into the FTS5 trigram index, a new index segment per transaction (~90 µs of CPU each). Now
the append writes the event alone, and `AuditTextIndexer` adds the events after the index's mark
(`approvals.audit_text`) in batches: one write transaction reads the mark, indexes up to `batch`
events after it and moves the mark, so a batch of a hundred costs about what one trigger did.

It runs beside the gateway: woken after appends (it then waits `gather` for the burst to finish,
so many events share one batch) and every `interval` (for events written another way or by
another process). Several processes on one SQLite file may each run one: the mark is read and
moved inside the write transaction, which SQLite gives to one process at a time, so each event is
indexed exactly once. Searches stay exact meanwhile: they read the events after the mark directly.

PostgreSQL keeps its `pg_trgm` indexes itself; there is nothing to run.
"""

from __future__ import annotations

import logging
import sqlite3
from functools import partial

import anyio
from sqlalchemy.exc import SQLAlchemyError

from approvals.db import Database
from approvals.errors import StoreUnavailable
from approvals.sqlite_append import Statement

log = logging.getLogger(__name__)

# Large enough that a burst is indexed in a few transactions, small enough that each holds the write
# lock briefly (appends wait for it): ~10 µs of CPU per event.
BATCH = 500
INTERVAL = 1.0
GATHER = 0.05

_MARK = "SELECT upto FROM audit_event_text_mark WHERE id = 1"
_NEXT = "SELECT count(*), max(seq) FROM (SELECT seq FROM audit_event WHERE seq > ? ORDER BY seq LIMIT ?)"
_ADD = (
    "INSERT INTO audit_event_text(rowid, arguments, message) "
    "SELECT seq, arguments, message FROM audit_event WHERE seq > ? AND seq <= ? ORDER BY seq"
)
_MOVE = "UPDATE audit_event_text_mark SET upto = ? WHERE id = 1"


def index_batch(run: Statement, batch: int) -> int:
    """Index up to `batch` events after the mark and move the mark, inside the caller's write transaction."""
    (upto,) = run(_MARK, ())
    count, last = run(_NEXT, (upto, batch))
    if count:
        run(_ADD, (upto, last))
        run(_MOVE, (last,))
    return int(count)


class AuditTextIndexer:
    """Keeps the SQLite audit search index up to date in batches, off the path of every call."""

    def __init__(self, db: Database, *, batch: int = BATCH, interval: float = INTERVAL, gather: float = GATHER) -> None:
        self.db = db
        self.batch = batch
        self.interval = interval
        self.gather = gather
        self._wanted = anyio.Event()
        # How many events this process has indexed, for tests and /metrics.
        self.indexed = 0

    def wake(self) -> None:
        """Events were appended: index them soon."""
        self._wanted.set()

    async def catch_up(self) -> int:
        """Index every event after the mark, a batch at a time; returns how many this call indexed."""
        if not self.db.is_sqlite:
            return 0
        total = 0
        while True:
            added = await self.db.run_statements(partial(index_batch, batch=self.batch))
            total += added
            self.indexed += added
            if added < self.batch:
                return total

    async def run(self) -> None:
        if not self.db.is_sqlite:
            return
        self.db.on_append = self.wake
        failing = False  # warned once until it works again
        try:
            while True:
                try:
                    await self.catch_up()
                    failing = False
                except (StoreUnavailable, SQLAlchemyError, sqlite3.Error) as exc:
                    # Searches read the events after the mark directly meanwhile; try again on the next round.
                    if not failing:
                        log.warning("could not bring the audit search index up to date: %s", exc)
                    failing = True
                with anyio.move_on_after(self.interval):
                    await self._wanted.wait()
                self._wanted = anyio.Event()
                await anyio.sleep(self.gather)
        finally:
            self.db.on_append = None
