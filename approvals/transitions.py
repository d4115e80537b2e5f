"""The one way a request changes state: a compare-and-set inside a write transaction the change feed hears.

The use cases (`approvals.service`, `approvals.execution`) build on this; nothing else writes a
request's status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit import Event
from approvals.db import Database
from approvals.errors import AlreadyDecided, InvalidTransition
from approvals.feed import ChangeFeed
from approvals.models import ApprovalRequest
from approvals.reads import load
from approvals.states import END_REASONS, OPEN, EndReason, Status, can_transition
from approvals.story import describe
from approvals.views import RequestView

Clock = Callable[[], datetime]
_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]


class Transitions:
    db: Database
    clock: Clock
    feed: ChangeFeed

    @asynccontextmanager
    async def _write(self, *, announce: bool = True) -> AsyncIterator[AsyncConnection]:
        """A write transaction whose changes every process's feed reads as soon as it has committed."""
        async with self.db.write() as conn:
            yield conn
            if announce:
                await self.feed.announce(conn)
        self.feed.poke()

    async def _cas(
        self,
        conn: AsyncConnection,
        current: RequestView,
        old: Iterable[Status],
        new: Status,
        now: datetime,
        *,
        only_if: ColumnElement[bool] | None = None,
        **values: Any,
    ) -> RequestView | None:
        """Move `current` from one of `old` to `new` if nobody got there first; the moved request, or None.

        `only_if` adds a condition the row must still meet at the moment of the update.
        """
        old = frozenset(old)
        bad = sorted(o.value for o in old if not can_transition(o, new))
        if bad:
            raise InvalidTransition(f"{', '.join(bad)} -> {new.value} is not an allowed transition")
        because = values.get("ended_because")
        if (because is None) != (new not in END_REASONS) or (
            because is not None and EndReason(because) not in END_REASONS[new]
        ):
            raise InvalidTransition(f"{new.value} cannot end because {because!r}")
        if new not in OPEN:
            # The call is free again: a later identical call may make a request of its own (see reads.find_repeat).
            values["open_key"] = None
        query = update(_requests).where(_requests.c.id == current.id, _requests.c.status.in_([s.value for s in old]))
        if only_if is not None:
            query = query.where(only_if)
        result = await conn.execute(query.values(status=new.value, status_changed_at=now, **values))
        if result.rowcount != 1:
            return None
        return await load(conn, current.id)

    async def _touch(self, conn: AsyncConnection, current: RequestView, status: Status) -> RequestView | None:
        """The request as it is now, provided it is still in `status` (read inside the write transaction)."""
        view = await load(conn, current.id)
        return view if view.status == status else None


def already(view: RequestView) -> AlreadyDecided:
    by = None if view.status == Status.CANCELLED else view.decided_by
    because = None if view.ended_because is None else view.ended_because.value
    return AlreadyDecided(
        view.id, view.status.value, by, view.status_changed_at, ended_because=because, summary=describe(view)
    )


def request_event(view: RequestView, kind: str, outcome: str, message: str, **extra: Any) -> Event:
    """An audit event about one request (the request's entry in the change feed)."""
    return Event(
        kind=kind,
        outcome=outcome,
        message=message,
        agent=view.agent,
        tool=view.tool,
        upstream=view.upstream,
        request_id=view.id,
        **extra,
    )
