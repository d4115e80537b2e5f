"""Quotas every replica counts alike: the limiter's slots in PostgreSQL.

A reservation is one short transaction. It takes a transaction-scoped advisory lock per bucket
(in one order, so two reservations never wait on each other in a circle), reads each limit's
window, and inserts its slots only if every limit has room. Reservations of the same bucket are
thereby serialised across all replicas, and nothing is read, decided and written back without
that lock held: there is no window in which two replicas both see the ninth slot and both take
the tenth. Reservations of different buckets (other agents, other counters) never wait for each
other. Giving back, parking and giving back parked slots are single statements.

The lock is held across the transaction's round trips, and under a burst each of those waits for
a busy event loop, so reservations of one bucket arriving together in this process share one
transaction: the first opens it and takes the locks, and the ones that arrive for the same buckets
meanwhile are decided in it in turn (each checks the windows as the ones before it left them), up
to `MAX_GROUP`; one commit ends them, and each learns its answer only once it is durable. Once a
group is full the next arrival opens the next transaction, which the following ones join while it
waits for the locks. A group is three statements (`gateway.quota_sql`): its locks, its windows' read,
its slots' insert. Parks asked while another is being written are written together next.

Times are the replicas' wall clocks (seconds since the epoch), like every deadline the gateway
stores: replicas are expected to keep them in step (NTP).

While the database does not answer, a replica counts in its own memory instead (each replica
then allows the quota on its own, as a single gateway would): calls that need no approval keep
working through an outage, still limited. Giving slots back never fails a call: a slot that
cannot be given back stays counted until its window passes (fewer calls, never more).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import anyio
from sqlalchemy import Executable, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.db import Database
from approvals.errors import StoreUnavailable
from approvals.models import QuotaSlot
from approvals.turns import Turns
from gateway import quota_sql
from gateway.policy import Limit
from gateway.ratelimit import (
    SWEEP_INTERVAL,
    BucketKey,
    MemoryQuotas,
    Refusal,
    distinct_buckets,
    full_window,
    longest_wait,
    new_reservation_id,
)

log = logging.getLogger(__name__)

_slots = QuotaSlot.__table__  # type: ignore[attr-defined]
# Reservations counted in memory during an outage carry this prefix, so they are given back there.
_LOCAL: Final = "local-"
# No window is longer than a day: older slots can never count again.
_LONGEST_WINDOW: Final = 86_400.0
# The most reservations decided in one transaction.
MAX_GROUP: Final = 64
# The most parks written in one statement.
MAX_PARKS: Final = 1_000
# A limit's window is full when it holds `max` slots: the `max`-th newest slot in it, if there is one, is the
# oldest that counts (when the window frees up). A group of reservations reads, once per limit and bucket, the
# rows at the positions its members can need (`max - MAX_GROUP` to `max - 1`), however many the window holds.


@dataclass(eq=False)
class _Joiner:
    """A reservation decided in the transaction another one opened for the same buckets."""

    tool: str
    wanted: Sequence[tuple[Limit, BucketKey]]
    ident: str
    done: anyio.Event = field(default_factory=anyio.Event)
    answer: str | Refusal | None = None
    error: Exception | None = None


@dataclass(eq=False)
class _Group:
    """The transaction open for some buckets: the reservations waiting to join it, and how many it has had."""

    waiting: list[_Joiner] = field(default_factory=list)
    size: int = 1


@dataclass(eq=False)
class _Park:
    """A reservation to leave with its request: written in one statement with the parks asked beside it
    (`approvals.turns`), its caller answered once that transaction has ended."""

    reservation: str
    request_id: str
    woken: anyio.Event = field(default_factory=anyio.Event)
    leads: bool = False
    error: Exception | None = None


class SharedQuotas:
    """The `QuotaStore` of replicas on one PostgreSQL database."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        if db.is_sqlite:
            raise ValueError("shared quotas need PostgreSQL; a gateway on SQLite keeps them in memory")
        self.db = db
        self._clock = clock
        self._last_sweep = clock()
        self._fallback = MemoryQuotas(clock)
        self._degraded = False
        # The reservations waiting to join the transaction open for these buckets (see the module's description).
        self._joining: dict[tuple[BucketKey, ...], _Group] = {}
        self._parks = Turns(self._write_parks, MAX_PARKS)

    async def take(self, tool: str, wanted: Sequence[tuple[Limit, BucketKey]]) -> str | Refusal:
        try:
            taken = await self._take(tool, wanted)
        except StoreUnavailable as exc:
            if not self._degraded:
                log.warning("quotas: %s; counting in this replica's memory until it answers", exc)
                self._degraded = True
            local = await self._fallback.take(tool, wanted)
            return local if isinstance(local, Refusal) else _LOCAL + local
        if self._degraded:
            log.warning("quotas: the database answers again; counting there")
            self._degraded = False
        return taken

    async def _take(self, tool: str, wanted: Sequence[tuple[Limit, BucketKey]]) -> str | Refusal:
        ident = new_reservation_id()
        buckets = distinct_buckets(wanted)
        if not buckets:
            return ident
        group = tuple(sorted(buckets))
        open_group = self._joining.get(group)
        if open_group is not None and open_group.size < MAX_GROUP:
            me = _Joiner(tool, wanted, ident)
            open_group.size += 1
            open_group.waiting.append(me)
            # Shielded: once it has joined, its answer is decided (and durable or not) with the others'.
            with anyio.CancelScope(shield=True):
                await me.done.wait()
            if me.error is not None:
                raise me.error
            assert me.answer is not None
            return me.answer
        mine = _Group()
        # A full group's transaction is no longer joined: this one is, while it waits for that one's locks.
        self._joining[group] = mine
        joining = mine.waiting
        decided: list[_Joiner] = []
        try:
            async with self.db.transaction() as conn:
                await quota_sql.lock(conn, group)
                # Read the clock once the locks are ours: a reservation that waited must not stamp the past.
                window = _Window(conn, self._clock())
                await window.read([wanted, *(other.wanted for other in joining)])
                answer = window.reserve(tool, wanted, ident)
                while joining:
                    other = joining.pop(0)
                    decided.append(other)
                    await window.read([other.wanted])
                    other.answer = window.reserve(other.tool, other.wanted, other.ident)
                # Whoever comes from here on opens the next transaction; nobody joins one that is committing.
                self._close(group, mine)
                await quota_sql.insert(conn, window.rows)
        except BaseException as exc:
            self._close(group, mine)
            for other in [*decided, *joining]:
                other.error = exc if isinstance(exc, Exception) else StoreUnavailable(f"quota reservation: {exc!r}")
                other.done.set()
            raise
        for other in decided:
            other.done.set()
        if not isinstance(answer, Refusal):
            await self._sweep(self._clock())
        return answer

    def _close(self, group: tuple[BucketKey, ...], mine: _Group) -> None:
        if self._joining.get(group) is mine:
            del self._joining[group]

    async def give_back(self, reservation: str) -> None:
        if reservation.startswith(_LOCAL):
            await self._fallback.give_back(reservation.removeprefix(_LOCAL))
            return
        await self._quietly(delete(_slots).where(_slots.c.reservation == reservation))

    async def park(self, reservation: str, request_id: str) -> None:
        if reservation.startswith(_LOCAL):
            await self._fallback.park(reservation.removeprefix(_LOCAL), request_id)
            return
        # Parks asked while others are being written are written together next (see `_Park`).
        park = _Park(reservation, request_id)
        await self._parks.take(park)
        if park.error is not None:
            raise park.error

    async def _write_parks(self, batch: list[_Park]) -> None:
        try:
            async with self.db.transaction() as conn:
                await quota_sql.park(conn, [(park.reservation, park.request_id) for park in batch])
        except StoreUnavailable as exc:
            log.warning("quotas: could not park a slot (%s); it counts until its window passes", exc)
        except Exception as exc:
            for park in batch:
                park.error = exc

    async def give_back_parked(self, request_id: str) -> None:
        await self._fallback.give_back_parked(request_id)
        await self._quietly(delete(_slots).where(_slots.c.request_id == request_id))

    async def _quietly(self, statement: Executable) -> None:
        try:
            async with self.db.transaction() as conn:
                await conn.execute(statement)
        except StoreUnavailable as exc:
            log.warning("quotas: could not give back or park a slot (%s); it counts until its window passes", exc)

    async def usage(self, counter: str, scope_key: str) -> int:
        now = self._clock()
        async with self.db.read() as conn:
            count = await conn.execute(
                select(func.count())
                .select_from(_slots)
                .where(
                    _slots.c.counter == counter,
                    _slots.c.scope_key == scope_key,
                    _slots.c.taken_at + _slots.c.window_seconds > now,
                )
            )
            return int(count.scalar_one())

    async def _sweep(self, now: float) -> None:
        # Slots of agents and sessions that went away would otherwise stay forever. Any replica may do it.
        if now - self._last_sweep < SWEEP_INTERVAL:
            return
        self._last_sweep = now
        await self._quietly(delete(_slots).where(_slots.c.taken_at <= now - _LONGEST_WINDOW))


class _Window:
    """The reservations of one transaction, decided in turn against the slots stored before it and the ones
    decided in it: each limit's window read once (the rows any member can need), every slot inserted at the end."""

    def __init__(self, conn: AsyncConnection, now: float) -> None:
        self.conn = conn
        self.now = now
        # Per (bucket, window, max): the position of the first row read, and the rows read (newest first).
        self._stored: dict[tuple[BucketKey, float, int], tuple[int, list[float]]] = {}
        self._taken: dict[BucketKey, int] = {}  # slots decided in this transaction, per bucket (all at `now`)
        self.rows: list[dict[str, object]] = []

    async def read(self, members: Sequence[Sequence[tuple[Limit, BucketKey]]]) -> None:
        """Read, in one statement, the windows these members need that were not read yet."""
        needed: dict[tuple[BucketKey, float, int], tuple[BucketKey, float, int, int]] = {}
        for wanted in members:
            for limit, key in wanted:
                slot = (key, limit.window_seconds, limit.max)
                if slot in self._stored or slot in needed:
                    continue
                skip = max(limit.max - MAX_GROUP, 0)
                needed[slot] = (key, self.now - limit.window_seconds, skip, limit.max - skip)
        if not needed:
            return
        found = await quota_sql.read_windows(self.conn, list(needed.values()))
        for (slot, (_, _, skip, _)), rows in zip(needed.items(), found, strict=True):
            self._stored[slot] = (skip, rows)

    def reserve(self, tool: str, wanted: Sequence[tuple[Limit, BucketKey]], ident: str) -> str | Refusal:
        """Decide one reservation (its windows read): its slots, or the refusal of the limit that is full."""
        refusals = []
        for limit, key in wanted:
            oldest = self._oldest_counted(limit, key)
            if oldest is not None:
                refusals.append(full_window(tool, limit, oldest, self.now))
        if refusals:
            return longest_wait(refusals)
        windows: dict[BucketKey, float] = {}
        for limit, key in wanted:
            windows[key] = max(windows.get(key, 0.0), limit.window_seconds)
        for counter, scope, scope_key in distinct_buckets(wanted):
            key = (counter, scope, scope_key)
            self._taken[key] = self._taken.get(key, 0) + 1
            self.rows.append(
                {
                    "counter": counter,
                    "scope": scope,
                    "scope_key": scope_key,
                    "taken_at": self.now,
                    "window_seconds": windows[key],
                    "reservation": ident,
                }
            )
        return ident

    def _oldest_counted(self, limit: Limit, key: BucketKey) -> float | None:
        """When the oldest slot that fills `limit`'s window was taken; None when the window has room."""
        taken = self._taken.get(key, 0)
        if taken >= limit.max:
            return self.now  # filled by this transaction's own slots
        position = limit.max - 1 - taken  # among the stored slots in the window, newest first
        skip, rows = self._stored[(key, limit.window_seconds, limit.max)]
        index = position - skip
        if index < 0:  # more members than a group takes: never, the read covers MAX_GROUP of them
            raise RuntimeError("a quota group outgrew its window read")
        return rows[index] if index < len(rows) else None
