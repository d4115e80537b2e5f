"""The change feed: every change to every request, heard by every process that shares the database.

Each transition (and each decision that does not decide yet, such as one approval of two) writes
an audit event in the same transaction as the change itself. Those events are numbered in commit
order, so they *are* the feed: a process reads the events after its cursor and hands each one to
its listeners. The process that made a change hands its own feed the change as it made it
(`committed`), delivered without reading it back while nothing else came in between. On
PostgreSQL every other process is woken by a notification sent when the change commits
(`approvals.notify`), and still reads every few seconds as a safety net; on SQLite (one host,
usually one process) other processes notice within one poll interval. Side effects (quota
returned, Slack kept true, timers armed, unattended runs started) hang off this feed, never off
the code path that made the change, so they happen whichever process or replica made it.

Delivery is at least once per process: a listener whose effect reaches outside the process (a
Slack message, an upstream call) guards it with a compare-and-set in the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import anyio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals import notify
from approvals.db import Database
from approvals.models import ApprovalRequest, AuditEvent
from approvals.states import Status
from approvals.views import RequestView

log = logging.getLogger(__name__)

_events = AuditEvent.__table__  # type: ignore[attr-defined]
_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]

# How many events one read takes; a backlog is worked through in batches of this size.
_BATCH = 500
# While notifications arrive, the feed still reads at least this often on its own: a safety net only.
SAFETY_POLL = 5.0


@dataclass(frozen=True)
class Change:
    """One change to one request: the audit event's number and kind, and the request as read just after."""

    seq: int
    kind: str
    request: RequestView

    @property
    def request_id(self) -> str:
        return self.request.id


class ChangeListener(Protocol):
    """Hears every change, made by this process or any other. Must return quickly: hand slow work off."""

    async def request_changed(self, change: Change) -> None: ...


class ChangeFeed:
    def __init__(self, db: Database, *, poll_interval: float = 1.0) -> None:
        self.db = db
        # Changes made by other processes are read at this interval (changes made here: at once).
        self.poll_interval = poll_interval
        # PostgreSQL: woken by notifications (see approvals.notify); None on SQLite.
        self.notifications = (
            None if db.is_sqlite else notify.Listener(notify.listen_dsn(db.url), self.poke, self._listening)
        )
        self._notified = False
        self._listeners: list[ChangeListener] = []
        self._cursor: int | None = None
        self._poked = anyio.Event()
        # Whether the next delivery must read the log (a poke, a notification, a poll) or may take only what this
        # process committed itself (`committed`).
        self._must_read = False
        # Events this process committed and the feed has not passed yet, by number: their kind and the request as
        # the committing block left it (None: not known here; read it), or None for an event the feed skips.
        self._ready: dict[int, tuple[str, RequestView | None] | None] = {}
        # Tasks waiting for one request to change: woken on every change to it, with the request as it then was.
        self._watchers: dict[str, set[_Watch]] = {}
        # The open requests this process made, each in the state the latest change delivered here (or its creation)
        # left it in.
        self._known: dict[str, Status] = {}

    @property
    def cursor(self) -> int | None:
        """The number of the last change delivered here (None before the feed has started)."""
        return self._cursor

    def subscribe(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def poke(self) -> None:
        """A change was just committed (here, or elsewhere and notified): read the feed now, not at the next poll."""
        self._must_read = True
        self._poked.set()

    def committed(self, events: Iterable[tuple[int, str, str | None]], moved: Iterable[RequestView]) -> None:
        """A write block of this process has committed `events` (number, kind, request id), leaving its requests as
        `moved` (in order; the last of each request is how the block left it).

        The feed delivers them without reading the log back, in order, as long as each is the next one after its
        cursor: the chain lock makes numbers follow commit order, so an event it has not passed and was not
        handed here (another process's, one written outside these blocks) shows as a gap, and a gap, or a request
        the block did not move, is read from the log as before."""
        if self._cursor is None:
            self._must_read = True
        else:
            latest = {view.id: view for view in moved}
            for seq, kind, request_id in events:
                if seq > self._cursor:
                    feeds = request_id is not None and kind.startswith("request.")
                    self._ready[seq] = (kind, latest.get(request_id)) if feeds and request_id else None
        self._poked.set()

    async def announce(self, conn: AsyncConnection) -> None:
        """Inside a write transaction that changes a request: wake every other process when it commits."""
        if self.notifications is not None:
            await notify.announce(conn)

    @property
    def interval(self) -> float:
        """How long the feed waits for a wake-up before reading anyway."""
        return max(self.poll_interval, SAFETY_POLL) if self._notified else self.poll_interval

    def _listening(self, up: bool) -> None:
        self._notified = up
        self._poked.set()  # re-time the current wait to the new interval

    async def start(self) -> None:
        """Begin at the current end of the log: what happened before this process started is not replayed."""
        async with self.db.read() as conn:
            self._cursor = int((await conn.execute(select(func.coalesce(func.max(_events.c.seq), 0)))).scalar_one())

    async def run(self) -> None:
        """Deliver changes for the life of the process."""
        if self._cursor is None:
            await self.start()
        async with anyio.create_task_group() as tg:
            if self.notifications is not None:
                tg.start_soon(self.notifications.run)
            while True:
                must_read = True
                with anyio.move_on_after(self.interval):
                    await self._poked.wait()
                    must_read = self._must_read
                self._poked, self._must_read = anyio.Event(), False
                try:
                    await self._deliver_ready()
                    # Anything not handed here (a gap before what was) is read from the log.
                    if must_read or self._ready:
                        while await self.deliver() == _BATCH:
                            pass
                except Exception as exc:  # the store may be down: waiters fail closed on their own deadlines
                    log.warning("could not read the change feed: %s", exc)

    async def _deliver_ready(self) -> None:
        """Deliver the events this process committed that follow the cursor without a gap (see `committed`)."""
        while self._cursor is not None and (seq := self._cursor + 1) in self._ready:
            ready = self._ready[seq]
            view = None if ready is None else ready[1]
            if ready is not None and view is None:
                break  # a request the block did not move: read from the log
            del self._ready[seq]
            self._cursor = seq
            if ready is not None and view is not None:
                await self._hand(Change(seq, ready[0], view))

    async def _hand(self, change: Change) -> None:
        self._wake(change.request)
        for listener in self._listeners:
            try:
                await listener.request_changed(change)
            except Exception:
                # One listener failing must never keep the others (or the decision) from happening.
                log.exception("listener %r failed on %s of %s", listener, change.kind, change.request_id)

    def _passed(self) -> None:
        """Forget what this process committed that the feed has read from the log meanwhile."""
        if self._ready and self._cursor is not None:
            for seq in [seq for seq in self._ready if seq <= self._cursor]:
                del self._ready[seq]

    async def deliver(self) -> int:
        """Read the next batch of changes and hand each to every listener. Returns how many were read."""
        cursor = self._cursor or 0
        query = (
            select(_events.c.seq, _events.c.kind, _events.c.request_id)
            .where(_events.c.seq > cursor, _events.c.request_id.is_not(None), _events.c.kind.like("request.%"))
            .order_by(_events.c.seq)
            .limit(_BATCH)
        )
        async with self.db.read(brief=True) as conn:
            rows = (await conn.execute(query)).all()
            if not rows:
                self._passed()
                return 0
            ids = list({row.request_id for row in rows})
            found = (await conn.execute(select(_requests).where(_requests.c.id.in_(ids)))).mappings().all()
        views = {row["id"]: RequestView.from_row(row) for row in found}
        for row in rows:
            self._cursor = row.seq
            view = views.get(row.request_id)
            if view is None:  # an event naming a request that does not exist (e.g. a refused lookup)
                self._known.pop(row.request_id, None)
                continue
            await self._hand(Change(row.seq, row.kind, view))
        self._passed()
        return len(rows)

    def made(self, view: RequestView, seq: int) -> None:
        """This process just committed `view`'s creation as event `seq`.

        From here on the feed keeps the request's state as the latest change it delivered left it, until it ends.
        Every change after that one is still to be delivered (and wakes whoever waits), so a waiter that finds the
        request in the state it expects waits without reading it first. Only while the feed has not passed `seq`
        is `view` known to be the latest: a change delivered before this call would otherwise be missed."""
        if self._cursor is not None and self._cursor < seq:
            self._known[view.id] = view.status

    def wake(self, moved: Iterable[RequestView]) -> None:
        """These requests changed in a transaction of this process that has committed (each as it was left by it):
        their waiters go on with that, without reading it back."""
        for view in moved:
            self._wake(view)

    def _wake(self, view: RequestView) -> None:
        if view.id in self._known:
            if view.is_terminal:
                del self._known[view.id]
            else:
                self._known[view.id] = view.status
        for watch in self._watchers.get(view.id, ()):
            watch.view = view
            watch.wake()

    async def wait_for_change(
        self, request_id: str, seen: Status, within: float, load: Callable[[str], Awaitable[RequestView]]
    ) -> RequestView:
        """Return as soon as the request is no longer in `seen`, or after `within` seconds as it is then.

        Woken by a change with the request as the change left it, the wait returns that without reading it
        again: committed, and at least as new as any read made before the wake-up. A request this process made
        (`made`) that the feed last saw in `seen` is waited on without a read: any change since is still to come.
        """
        view = await self.wait_unless(request_id, seen, within, load, None)
        assert view is not None  # nothing but `until` ends the wait without the request
        return view

    async def wait_unless(
        self,
        request_id: str,
        seen: Status,
        within: float,
        load: Callable[[str], Awaitable[RequestView]],
        until: Until | None,
    ) -> RequestView | None:
        """`wait_for_change`, given up as soon as `until` is set (then None): the agent's connection ending.

        Ten thousand held calls wait here at once, so the wait is a bare future in the watcher table, woken
        by a change, a loop timer at the deadline or `until`'s callback: no event, cancel scope or task of its own.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(within, 0.0)
        while True:
            if until is not None and until.is_set():
                return None
            watch = _Watch(loop.create_future())
            self._watchers.setdefault(request_id, set()).add(watch)
            try:
                known = self._known.get(request_id)
                remaining = deadline - loop.time()
                if known is not seen or remaining <= 0:
                    # Read after registering, so a change committed in between still wakes us.
                    view = await load(request_id)
                    remaining = deadline - loop.time()
                    if until is not None and until.is_set():
                        return None
                    if view.status != seen or remaining <= 0:
                        return view
                timer = loop.call_at(deadline, watch.wake)
                forget = None if until is None else until.on_set(watch.wake)
                try:
                    await watch.woken
                finally:
                    timer.cancel()
                    if forget is not None:
                        forget()
                if until is not None and until.is_set():
                    return None
                if watch.view is not None and watch.view.status != seen:
                    return watch.view
            finally:
                watchers = self._watchers.get(request_id)
                if watchers is not None:
                    watchers.discard(watch)
                    if not watchers:
                        del self._watchers[request_id]


class Until(Protocol):
    """What ends a wait early (the agent's connection closing): a flag that calls back once it is set."""

    def is_set(self) -> bool: ...

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]: ...


class _Watch:
    """One wait for a request to change; `view` is the request as the latest change left it."""

    __slots__ = ("view", "woken")

    def __init__(self, woken: asyncio.Future[None]) -> None:
        self.woken = woken
        self.view: RequestView | None = None

    def wake(self) -> None:
        if not self.woken.done():
            self.woken.set_result(None)
