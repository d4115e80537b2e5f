"""The one way a request changes state: a compare-and-set inside a write transaction the change feed hears.

The use cases (`approvals.service`, `approvals.execution`) build on this; nothing else writes a
request's status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals import audit, driver_sql
from approvals.db import Database
from approvals.errors import InvalidTransition
from approvals.feed import ChangeFeed
from approvals.models import ApprovalRequest
from approvals.reads import load
from approvals.request_events import already_decided as already
from approvals.request_events import request_event
from approvals.states import END_REASONS, OPEN, EndReason, Status, can_transition
from approvals.views import RequestView
from approvals.write_groups import before_commit

__all__ = ["Clock", "Transitions", "already", "request_event"]

Clock = Callable[[], datetime]
_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]
# The requests moved inside the current `_write` block (per task), as moved: woken here once it has committed.
_moved: ContextVar[list[RequestView] | None] = ContextVar("countersign_moved", default=None)


class Transitions:
    db: Database
    clock: Clock
    feed: ChangeFeed

    @asynccontextmanager
    async def _write(
        self, *, announce: bool = True, savepoint: bool = True, defer: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        """A write transaction whose changes every process's feed reads as soon as it has committed.

        Transitions that arrive together share one transaction (`approvals.write_groups`). Once it
        has committed, the tasks of this process waiting on a request moved here are woken at once with
        the request as moved, without waiting for the feed to read the change back or reading it again,
        and the feed is handed the block's events with the requests as moved (`ChangeFeed.committed`).
        `savepoint=False`: see `WriteGroups.write` (for a block that raises only when the database fails);
        `defer=True`: its audit events (and other deferrable inserts) are sent with the group's, see there.
        """
        moved: list[RequestView] = []
        appended: list[tuple[int, str, str | None]] = []
        token = _moved.set(moved)
        try:
            async with self.db.groups.write(savepoint=savepoint, defer=defer) as conn:
                if announce:
                    # Once per group, not per block: one notification wakes every other process for all of them.
                    before_commit(conn, "announce", partial(self.feed.announce, conn))
                conn.info[audit.APPENDED] = appended
                try:
                    yield conn
                finally:
                    conn.info.pop(audit.APPENDED, None)
        finally:
            _moved.reset(token)
        # The feed delivers these events from here (it has the requests as moved) unless something else came first.
        self.feed.committed(appended, moved)
        self.feed.wake(moved)

    async def _cas(
        self,
        conn: AsyncConnection,
        current: RequestView | str,
        old: Iterable[Status],
        new: Status,
        now: datetime,
        *,
        only_if: ColumnElement[bool] | None = None,
        equal: Mapping[str, Any] | None = None,
        **values: Any,
    ) -> RequestView | None:
        """Move `current` (a request, or its id) from one of `old` to `new` if nobody got there first; the moved
        request, or None.

        `only_if` adds a condition the row must still meet at the moment of the update; `equal` (column ->
        value) conditions of the plainest kind, which keep the statement on the driver's path.
        """
        old = frozenset(old)
        values = self._checked(old, new, now, values)
        request_id = current if isinstance(current, str) else current.id
        row: Mapping[Any, Any] | None
        if only_if is None:
            # The hot path: compiled once, run through the driver (approvals.driver_sql).
            equal = equal or {}
            cas = driver_sql.compare_and_set(conn.dialect, _requests, len(old), tuple(values), tuple(equal))
            given = {f"v_{key}": value for key, value in values.items()}
            given.update({f"e_{name}": value for name, value in equal.items()})
            given.update({f"w_s{i}": status.value for i, status in enumerate(sorted(old, key=lambda s: s.value))})
            found = await driver_sql.rows(conn, cas, {"w_id": request_id, **given})
            row = found[0] if found else None
        else:
            assert not equal, "`equal` is for the driver's path; put the conditions in `only_if`"
            query = update(_requests).where(
                _requests.c.id == request_id, _requests.c.status.in_([s.value for s in old]), only_if
            )
            # The moved row comes back with the update (one statement, not an update and a read).
            row = (await conn.execute(query.values(**values).returning(*_requests.c))).mappings().first()
        if row is None:
            return None
        view = RequestView.from_row(row)
        moved = _moved.get()
        if moved is not None:
            moved.append(view)
        return view

    async def _cas_many(
        self,
        conn: AsyncConnection,
        moves: Sequence[tuple[str, Mapping[str, Any]]],
        old: Iterable[Status],
        new: Status,
        now: datetime,
        *,
        equal: Mapping[str, Any] | None = None,
    ) -> dict[str, RequestView]:
        """`_cas` for several requests at once (distinct ids, each with its values, all of the same keys): those
        moved, by id. On PostgreSQL one statement for them all (`driver_sql.compare_and_set_many`)."""
        given = [(request_id, self._checked(old, new, now, dict(values))) for request_id, values in moves]
        statuses = [status.value for status in sorted(frozenset(old), key=lambda s: s.value)]
        rows = await driver_sql.compare_and_set_many(conn, _requests, given, statuses, equal or {})
        views = {request_id: RequestView.from_row(row) for request_id, row in rows.items()}
        moved = _moved.get()
        if moved is not None:
            moved.extend(views[request_id] for request_id, _ in moves if request_id in views)
        return views

    @staticmethod
    def _checked(old: Iterable[Status], new: Status, now: datetime, values: dict[str, Any]) -> dict[str, Any]:
        """The columns a move from one of `old` to `new` writes, once the move is known to be allowed."""
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
        return {"status": new.value, "status_changed_at": now, **values}

    async def _touch(self, conn: AsyncConnection, current: RequestView, status: Status) -> RequestView | None:
        """The request as it is now, provided it is still in `status` (read inside the write transaction)."""
        view = await load(conn, current.id)
        return view if view.status == status else None
