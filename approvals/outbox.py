"""The channels' outbox: what a channel owes each request, done by one replica at a time, taken over if it dies.

An item is (channel, request, kind): the request's message kept true ("message"), its reminder
("reminder"). Every replica hears every change and says so (`want`: the newest change the channel
must show only ever moves forward). Whoever claims a due item first holds a lease on it: a fresh
token and an expiry, written by one conditional UPDATE, so exactly one replica works on an item at
a time on SQLite and PostgreSQL alike. The holder renews the lease while it works and completes
the item with the change it showed; more changes meanwhile leave it due again, for the next
claim. A replica that dies stops renewing, its lease runs out, and another replica claims it.

The holder always shows the request as it is when it reads it, and holders follow one another, so
a newer state is never overwritten by an older one — except by a holder that lost its lease
without knowing it (stalled longer than the lease). Such a writer learns it when it completes,
and then `disturbed` makes the item due again, so the newest state is shown once more.

A post whose answer was lost (the poster died between Slack accepting it and recording it) is
marked `attempted_at` before it goes out: whoever takes the item over looks for it before
posting again. Recording the post (`record_post`) is one transaction with the request's
`slack_channel`/`slack_ts` and the follow-up reminder, and keeps the first message recorded.

A channel that must deliver every change rather than show the newest (webhooks) reads the range
`done_seq` < seq <= `wanted_seq` of its claim (`Claim.done_seq`) and moves `done_seq` past each
change as it delivers it (`progress`), so whoever takes the item over starts after the last one.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit import as_utc
from approvals.db import Database
from approvals.models import ApprovalRequest, OutboxItem

_items = OutboxItem.__table__  # type: ignore[attr-defined]
_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]

MESSAGE = "message"
REMINDER = "reminder"


@dataclass(frozen=True)
class Claim:
    """One replica's hold on one item, until `lease_until` unless renewed."""

    channel: str
    request_id: str
    kind: str
    token: str
    wanted_seq: int
    fence: int
    shown: str | None
    attempted_at: datetime | None
    # The newest change already done when the claim was made (channels that deliver every change start after it).
    done_seq: int = 0


@dataclass(frozen=True)
class Followup:
    """Work to schedule with a recorded post (the reminder, due at `due_at`)."""

    kind: str
    due_at: datetime


class ChannelOutbox:
    def __init__(self, db: Database, *, clock: Callable[[], datetime], lease: float) -> None:
        self.db = db
        self.clock = clock
        self.lease = timedelta(seconds=lease)

    # ---- saying what is owed

    async def want(self, channel: str, request_id: str, kind: str, seq: int | None = None) -> None:
        """Change `seq` of the request must be shown (None: show the request again, whatever was shown)."""
        now = self.clock()
        async with self.db.transaction() as conn:
            fresh = {
                "channel": channel,
                "request_id": request_id,
                "kind": kind,
                "wanted_seq": 1 if seq is None else seq,
                "done_seq": 0,
                "due_at": now,
                "fence": 0,
            }
            wanted = self._greatest(_items.c.wanted_seq, _items.c.done_seq + 1 if seq is None else seq)
            await self._upsert(
                conn,
                fresh,
                {
                    "wanted_seq": wanted,
                    "due_at": case((wanted > _items.c.done_seq, func.coalesce(_items.c.due_at, now)), else_=None),
                },
            )

    async def schedule(self, channel: str, request_id: str, kind: str, due_at: datetime) -> None:
        """One piece of work at `due_at`, unless it is already scheduled (or done)."""
        async with self.db.transaction() as conn:
            await self._schedule(conn, channel, request_id, kind, due_at)

    async def due(self, channel: str, *, limit: int = 100) -> list[tuple[str, str]]:
        """(request id, kind) of items due now and held by nobody: new work, or work whose holder died."""
        now = self.clock()
        query = (
            select(_items.c.request_id, _items.c.kind)
            .where(_items.c.channel == channel, _items.c.due_at <= now, self._free(now))
            .order_by(_items.c.due_at)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return [(row.request_id, row.kind) for row in (await conn.execute(query)).all()]

    # ---- doing it

    async def claim(self, channel: str, request_id: str, kind: str) -> Claim | None:
        """Hold the item if it is due and nobody holds it; None otherwise."""
        now = self.clock()
        token = secrets.token_hex(16)
        statement = (
            update(_items)
            .where(
                *self._key(channel, request_id, kind),
                _items.c.done_seq < _items.c.wanted_seq,
                _items.c.due_at <= now,
                self._free(now),
            )
            .values(lease_token=token, lease_until=now + self.lease)
            .returning(_items.c.wanted_seq, _items.c.done_seq, _items.c.fence, _items.c.shown, _items.c.attempted_at)
        )
        async with self.db.transaction() as conn:
            row = (await conn.execute(statement)).first()
        if row is None:
            return None
        attempted = None if row.attempted_at is None else as_utc(row.attempted_at)
        return Claim(channel, request_id, kind, token, row.wanted_seq, row.fence, row.shown, attempted, row.done_seq)

    async def renew(self, claim: Claim) -> bool:
        """Extend the lease; False when it is no longer ours."""
        async with self.db.transaction() as conn:
            renewed = await conn.execute(
                update(_items).where(*self._held(claim)).values(lease_until=self.clock() + self.lease)
            )
        return bool(renewed.rowcount == 1)

    async def progress(self, claim: Claim, seq: int) -> bool:
        """Change `seq` is done, and the claim holds on for the next (channels that deliver every change)."""
        async with self.db.transaction() as conn:
            moved = await conn.execute(
                update(_items)
                .where(*self._held(claim))
                .values(done_seq=self._greatest(_items.c.done_seq, seq), lease_until=self.clock() + self.lease)
            )
        return bool(moved.rowcount == 1)

    async def high_water(self, channel: str) -> int:
        """The newest change any item of the channel was ever asked for (0: none yet)."""
        query = select(func.coalesce(func.max(_items.c.wanted_seq), 0)).where(_items.c.channel == channel)
        async with self.db.read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def attempting(self, claim: Claim) -> datetime:
        """A post is about to go out: whoever takes over after a crash must look for it first."""
        now = self.clock()
        async with self.db.transaction() as conn:
            await conn.execute(
                update(_items)
                .where(*self._key(claim.channel, claim.request_id, claim.kind))
                .values(attempted_at=func.coalesce(_items.c.attempted_at, now))
            )
        return now

    async def complete(self, claim: Claim, *, shown: str | None) -> bool:
        """The claimed change is shown (`shown`: what the channel shows now). False: someone else's work now."""
        async with self.db.transaction() as conn:
            return await self._complete(conn, claim, shown)

    async def give_up(self, claim: Claim) -> None:
        """Stop trying the claimed change (Slack refused it for good); the next change tries again."""
        async with self.db.transaction() as conn:
            await conn.execute(update(_items).where(*self._held(claim)).values(**self._done_values(claim)))

    async def record_post(
        self, claim: Claim, slack_channel: str, ts: str, *, shown: str | None, followup: Followup | None
    ) -> bool:
        """Record the message posted for the request, with the claim and its follow-up, in one transaction.

        `shown` None: the message was found rather than posted now, showing some earlier state; the
        item is let go undone, to be shown anew. False when another message was recorded first (a
        holder that lost its lease posted too): the caller's message is the duplicate.
        """
        async with self.db.transaction() as conn:
            recorded = await conn.execute(
                update(_requests)
                .where(_requests.c.id == claim.request_id, _requests.c.slack_ts.is_(None))
                .values(slack_channel=slack_channel, slack_ts=ts)
            )
            if recorded.rowcount != 1:
                return False
            if shown is None:
                await conn.execute(
                    update(_items)
                    .where(*self._held(claim))
                    .values(lease_token=None, lease_until=None, attempted_at=None)
                )
            else:
                await self._complete(conn, claim, shown)
            if followup is not None:
                await self._schedule(conn, claim.channel, claim.request_id, followup.kind, followup.due_at)
        return True

    async def release(self, claim: Claim) -> None:
        """Let go without completing: the item is due again for whoever claims it next."""
        async with self.db.transaction() as conn:
            await conn.execute(update(_items).where(*self._held(claim)).values(lease_token=None, lease_until=None))

    # ---- internals

    async def _complete(self, conn: AsyncConnection, claim: Claim, shown: str | None) -> bool:
        done = await conn.execute(
            update(_items)
            .where(*self._held(claim), _items.c.fence == claim.fence)
            .values(shown=shown, attempted_at=None, **self._done_values(claim))
        )
        if done.rowcount == 1:
            return True
        # Still ours but disturbed by a stale writer: let go undone, so the newest state is shown again.
        kept = await conn.execute(
            update(_items).where(*self._held(claim)).values(lease_token=None, lease_until=None, shown=None)
        )
        if kept.rowcount == 0:
            await self._disturbed(conn, claim)
        return False

    async def _disturbed(self, conn: AsyncConnection, claim: Claim) -> None:
        # We wrote after losing the lease, possibly over a newer state: whoever holds it must show the newest again.
        await conn.execute(
            update(_items)
            .where(*self._key(claim.channel, claim.request_id, claim.kind))
            .values(
                fence=_items.c.fence + 1,
                shown=None,
                done_seq=self._least(_items.c.done_seq, _items.c.wanted_seq - 1),
                due_at=func.coalesce(_items.c.due_at, self.clock()),
            )
        )

    def _done_values(self, claim: Claim) -> dict[str, Any]:
        done = self._greatest(_items.c.done_seq, claim.wanted_seq)
        return {
            "done_seq": done,
            "lease_token": None,
            "lease_until": None,
            # Nothing left to do: off the due index. Changes meanwhile keep it due.
            "due_at": case((_items.c.wanted_seq > done, _items.c.due_at), else_=None),
        }

    async def _schedule(self, conn: AsyncConnection, channel: str, request_id: str, kind: str, due: datetime) -> None:
        row = {"channel": channel, "request_id": request_id, "kind": kind}
        await self._upsert(conn, {**row, "wanted_seq": 1, "done_seq": 0, "due_at": due, "fence": 0}, None)

    async def _upsert(self, conn: AsyncConnection, row: dict[str, Any], changes: dict[str, Any] | None) -> None:
        dialect = sqlite if self.db.is_sqlite else postgresql
        statement = dialect.insert(_items).values(**row)
        keys = ["channel", "request_id", "kind"]
        if changes is None:
            await conn.execute(statement.on_conflict_do_nothing(index_elements=keys))
        else:
            await conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=changes))

    @staticmethod
    def _key(channel: str, request_id: str, kind: str) -> list[ColumnElement[bool]]:
        return [_items.c.channel == channel, _items.c.request_id == request_id, _items.c.kind == kind]

    def _held(self, claim: Claim) -> list[ColumnElement[bool]]:
        return [*self._key(claim.channel, claim.request_id, claim.kind), _items.c.lease_token == claim.token]

    @staticmethod
    def _free(now: datetime) -> ColumnElement[bool]:
        return or_(_items.c.lease_until.is_(None), _items.c.lease_until < now)

    def _greatest(self, a: Any, b: Any) -> Any:
        return func.max(a, b) if self.db.is_sqlite else func.greatest(a, b)

    def _least(self, a: Any, b: Any) -> Any:
        return func.min(a, b) if self.db.is_sqlite else func.least(a, b)
