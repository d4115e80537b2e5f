"""Reading a request's transitions back from the audit log, for channels that deliver every one of them.

A channel that must tell the outside world about each transition (webhooks) cannot work from the
request as it is now: several transitions may have happened before it gets its turn. The audit
log holds each of them, numbered in commit order, so it is read here, between what the channel
has delivered and what it has been asked for (see approvals/outbox.py).
"""

from __future__ import annotations

from sqlalchemy import func, select

from approvals.db import Database
from approvals.evidence import TRANSITIONS
from approvals.models import AuditEvent
from approvals.views import AuditEventView

_events = AuditEvent.__table__  # type: ignore[attr-defined]

# The kinds of event that move a request from one state to another (or record one approval of several).
TRANSITION_KINDS = frozenset(TRANSITIONS)


async def transitions(db: Database, request_id: str, *, after: int, upto: int) -> list[AuditEventView]:
    """The request's transitions with `after` < seq <= `upto`, oldest first."""
    query = (
        select(_events)
        .where(
            _events.c.request_id == request_id,
            _events.c.seq > after,
            _events.c.seq <= upto,
            _events.c.kind.in_(sorted(TRANSITION_KINDS)),
        )
        .order_by(_events.c.seq)
    )
    async with db.read() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [AuditEventView.from_row(row) for row in rows]


async def changed_since(db: Database, after: int, *, limit: int = 10_000) -> dict[str, int]:
    """Requests with a transition after `after`: each one's newest transition (at most `limit` requests)."""
    newest = func.max(_events.c.seq)
    query = (
        select(_events.c.request_id, newest.label("seq"))
        .where(_events.c.seq > after, _events.c.kind.in_(sorted(TRANSITION_KINDS)), _events.c.request_id.is_not(None))
        .group_by(_events.c.request_id)
        .order_by(newest)
        .limit(limit)
    )
    async with db.read() as conn:
        return {row.request_id: int(row.seq) for row in (await conn.execute(query)).all()}
