"""The repeat reads of calls held together, in one statement.

Before a held call parks, the gateway asks for the request a repeat of the call belongs to
(`RequestReads.find_repeat`): its open one, else the newest that ended within the repeat window
other than by the agent's withdrawal. In a burst every held call asks at once, and each read was a
connection taken from the pool, a statement, a fetch and the connection's return: on SQLite each a
hand-over to the driver's thread and back, on PostgreSQL a round trip, all on the event loop.

Here the caller that finds no read in flight reads at once, so a lone call waits for nothing.
Calls that ask while a read is in flight queue, and the next read answers all of them (up to
`MAX_BATCH`): one statement takes every request whose digest or original digest is among theirs
and that is open or changed since the earliest of their windows (each branch by its digest index),
and each caller's answer is chosen from those rows by exactly the rules of the single read (its
agent and tool, open first, else ended in its window and not withdrawn). A read that fails fails
every caller in it. Every answer comes from a read that began after its caller asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
from sqlalchemy import Select, bindparam, or_, select

from approvals.db import Database
from approvals.errors import StoreUnavailable
from approvals.models import ApprovalRequest
from approvals.states import OPEN, TERMINAL, Status
from approvals.turns import Turns
from approvals.views import RequestView

# Enough for a burst to be read in a few statements; each digest is two index lookups.
MAX_BATCH = 128

# The ends a repeat of the call gets again within the repeat window: everything but the agent's own withdrawal.
REPEATED = TERMINAL - {Status.CANCELLED}

_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]


def _candidates() -> Select[Any]:
    # Only the digests and the window, so that each branch of the OR is one of the digest indexes (SQLite's
    # MULTI-INDEX OR): with the agents or the statuses in it too, SQLite reads every request of the agents or
    # of a status instead. The rest of the rules (agent, tool, status) are applied to the few rows found.
    c = _requests.c
    digests: Any = bindparam("digests", expanding=True)
    since = c.status_changed_at >= bindparam("ended_since")
    is_open = c.status.in_([s.value for s in OPEN])
    return select(_requests).where(
        or_(c.arguments_sha256.in_(digests) & (is_open | since), c.original_sha256.in_(digests) & since)
    )


_CANDIDATES = _candidates()


@dataclass(eq=False)
class _Ask:
    agent: str
    tool: str
    digest: str
    ended_since: datetime
    woken: anyio.Event = field(default_factory=anyio.Event)
    leads: bool = False
    answer: RequestView | None = None
    error: Exception | None = None


class RepeatReads:
    """Answers `find_repeat` for the calls asking at once with one read; see the module's description."""

    def __init__(self, db: Database, *, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self._turns = Turns(self._read_batch, max_batch)

    async def find(self, agent: str, tool: str, digest: str, ended_since: datetime) -> RequestView | None:
        ask = _Ask(agent, tool, digest, ended_since)
        await self._turns.take(ask)
        if ask.error is not None:
            raise ask.error
        return ask.answer

    async def _read_batch(self, batch: list[_Ask]) -> None:
        error: Exception | None = StoreUnavailable("the read was interrupted")
        try:
            values = {
                "digests": sorted({a.digest for a in batch}),
                "ended_since": min(a.ended_since for a in batch),
            }
            async with self.db.read(brief=True) as conn:
                rows = (await conn.execute(_CANDIDATES, values)).mappings().all()
            views = [RequestView.from_row(row) for row in rows]
            for ask in batch:
                ask.answer = choose(views, ask.agent, ask.tool, ask.digest, ask.ended_since)
            error = None
        except Exception as exc:
            error = exc
        finally:
            for ask in batch:
                ask.error = error


def choose(
    views: Sequence[RequestView], agent: str, tool: str, digest: str, ended_since: datetime
) -> RequestView | None:
    """The request a repeat of (agent, tool, digest) belongs to among `views`: the oldest open one for the call as
    it stands, else the newest ended at or after `ended_since` (not withdrawn) for it or for its original form."""
    oldest_open: RequestView | None = None
    newest_end: RequestView | None = None
    for view in views:
        if view.agent != agent or view.tool != tool:
            continue
        if view.arguments_sha256 == digest and view.status in OPEN:
            if oldest_open is None or view.created_at < oldest_open.created_at:
                oldest_open = view
            continue
        ended = view.status in REPEATED and view.status_changed_at >= ended_since
        newer = newest_end is None or view.status_changed_at > newest_end.status_changed_at
        if ended and newer and digest in (view.arguments_sha256, view.original_sha256):
            newest_end = view
    return oldest_open or newest_end
