"""Activity over time: how many audit events of each outcome fell in each bucket of a time range.

The database does the counting (one statement of index range counts), never a row in Python per
event. Buckets are whole multiples of their width counted from the Unix epoch, so "each hour"
starts on the hour in UTC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Unpack

from sqlalchemy import (
    BigInteger,
    BindParameter,
    DateTime,
    Integer,
    TextClause,
    and_,
    bindparam,
    cast,
    func,
    select,
    text,
)
from sqlalchemy.dialects import sqlite

from approvals import audit_text
from approvals.db import Database
from approvals.history import EventFilters, event_conditions
from approvals.models import AuditEvent

_events = AuditEvent.__table__  # type: ignore[attr-defined]

# The outcomes the activity counts: what became of a call, and what approvers decided.
SERIES = ("allowed", "denied", "limited", "held", "approved", "rejected", "expired")

# Bucket widths a reader recognises, narrowest first; the first that keeps a range within MAX_BUCKETS wins.
WIDTHS = tuple(
    timedelta(seconds=s)
    for s in (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400)
)
MAX_BUCKETS = 60
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Nothing is recorded before the epoch or after this, and bucket arithmetic must stay inside what a datetime holds.
_LAST = datetime(9000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Buckets:
    """`count` buckets of `width`, the first starting at `start` (a multiple of the width since the epoch)."""

    start: datetime
    width: timedelta
    count: int

    @classmethod
    def spanning(cls, since: datetime, until: datetime) -> Buckets:
        """The widest-grained buckets that still cover [since, until) with at most MAX_BUCKETS of them."""
        if until <= since:
            raise ValueError("the range ends before it starts")
        span = until - since
        width = next((w for w in WIDTHS if span / w <= MAX_BUCKETS - 1), None)
        if width is None:
            width = timedelta(seconds=math.ceil(span.total_seconds() / (MAX_BUCKETS - 1)))
        seconds = int(width.total_seconds())
        first = math.floor((since - _EPOCH).total_seconds() / seconds)
        last = math.ceil((until - _EPOCH).total_seconds() / seconds)
        return cls(start=_EPOCH + timedelta(seconds=first * seconds), width=width, count=max(1, last - first))

    def edge(self, index: int) -> datetime:
        return self.start + self.width * index

    @property
    def end(self) -> datetime:
        return self.edge(self.count)


@dataclass(frozen=True)
class Activity:
    """Counts per bucket and outcome over [since, until): `counts[outcome][i]` is bucket i's."""

    since: datetime
    until: datetime
    buckets: Buckets
    counts: dict[str, list[int]]

    def totals(self) -> dict[str, int]:
        return {outcome: sum(values) for outcome, values in self.counts.items()}

    @property
    def total(self) -> int:
        return sum(self.totals().values())

    def at(self, index: int) -> dict[str, int]:
        return {outcome: values[index] for outcome, values in self.counts.items()}


class AuditActivity:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def count(
        self, *, start: datetime, end: datetime, series: tuple[str, ...] = SERIES, **filters: Unpack[EventFilters]
    ) -> Activity:
        """The events matching `filters` in [start, end), counted per bucket and outcome by one statement.

        `filters` may carry since/until too; the narrower bound wins. Only outcomes in `series` are counted.
        """
        since, until = start, end
        given_since, given_until = filters.pop("since", None), filters.pop("until", None)
        since = max(since, given_since, _EPOCH) if given_since else max(since, _EPOCH)
        until = min(until, given_until, _LAST) if given_until else min(until, _LAST)
        if until <= since:  # e.g. a range wholly before the epoch: nothing can be in it
            empty = Buckets(since, WIDTHS[0], 1)
            return Activity(since, since, empty, {outcome: [0] for outcome in series})
        buckets = Buckets.spanning(since, until)
        counts = {outcome: [0] * buckets.count for outcome in series}
        if not series:
            return Activity(since, until, buckets, counts)
        phrase = audit_text.phrase(filters.get("text")) if self.db.is_sqlite else None
        if not self.db.is_sqlite or phrase is not None or filters.get("request_id") or filters.get("actor"):
            # PostgreSQL groups a week of a million events by hash in ~0.2 s, where hundreds of subqueries
            # planned as one statement take seconds. A request's story or one approver's decisions are a
            # few rows their own index finds at once, and on SQLite the trigram index finds a search's
            # matches (approvals.audit_text) without reading the events around them: read them and group.
            grouped = await self._grouped(counts, buckets, since, until, filters, phrase)
            return Activity(since, until, buckets, grouped)
        # SQLite otherwise: one count per outcome and bucket, all in one statement. Each is a range of the
        # (outcome, at) index, so it counts index entries without sorting groups: for a week of a million
        # events about ten times faster than its GROUP BY over the range (bench/bench_audit_page.py).
        filters.pop("outcome", None)  # the caller's outcome filter is `series`
        statement = self._statement(series, buckets, since, until, event_conditions(filters))
        async with self.db.read() as conn:
            row = (await conn.execute(statement)).one()
        cells = ((outcome, index) for outcome in series for index in range(buckets.count))
        for (outcome, index), n in zip(cells, row, strict=True):
            counts[outcome][index] = int(n)
        return Activity(since, until, buckets, counts)

    async def _grouped(
        self,
        counts: dict[str, list[int]],
        buckets: Buckets,
        since: datetime,
        until: datetime,
        filters: EventFilters,
        phrase: str | None = None,
    ) -> dict[str, list[int]]:
        bucket = self._bucket(buckets).label("bucket")
        conditions = event_conditions({**filters, "since": since, "until": until})
        if phrase is not None:
            conditions = event_conditions({**filters, "since": since, "until": until, "text": None})
        async with self.db.read() as conn:
            if phrase is not None:
                # The index up to its mark, the events after it one by one (approvals.audit_text).
                upto = int((await conn.execute(audit_text.read_upto)).scalar_one())
                indexed = select(audit_text.rowid).where(audit_text.matches(phrase), audit_text.rowid <= upto)
                unindexed = (_events.c.seq > upto) & audit_text.unindexed_match(_events, filters.get("text") or "")
                conditions.append(_events.c.seq.in_(indexed) | unindexed)
            query = select(bucket, _events.c.outcome, func.count()).where(*conditions)
            query = query.group_by(bucket, _events.c.outcome)
            rows = (await conn.execute(query)).all()
        for index, outcome, n in rows:
            if outcome in counts and 0 <= index < buckets.count:
                counts[outcome][index] += int(n)
        return counts

    def _bucket(self, buckets: Buckets) -> Any:
        """The bucket number of each event's time, computed in SQL from its Unix time."""
        origin = int((buckets.start - _EPOCH).total_seconds())
        width = int(buckets.width.total_seconds())
        if self.db.is_sqlite:
            # SQLite stores times as UTC text; strftime('%s') reads them as seconds since the epoch.
            seconds = cast(func.strftime("%s", _events.c.at), Integer)
            return (seconds - origin) // width
        return cast(func.floor((func.extract("epoch", _events.c.at) - origin) / width), BigInteger)

    def _statement(
        self, series: tuple[str, ...], buckets: Buckets, since: datetime, until: datetime, others: list[Any]
    ) -> TextClause:
        """SELECT (count of outcome 1 in bucket 1), (… in bucket 2), …: one statement of index range counts.

        Written as text: hundreds of subqueries built and compiled as SQLAlchemy expressions would cost more
        than the database takes to answer them. The other filters are compiled once and repeated.
        """
        # Rendered the SQLite way for both databases (a plain LIKE on lower(), no PostgreSQL casts, which a
        # text clause would mistake for parameters): both run it alike.
        dialect = sqlite.dialect(paramstyle="named")
        where, params = "", {}
        if others:
            compiled = and_(*others).compile(dialect=dialect)
            where, params = f" AND ({compiled})", dict(compiled.params)
        edges = [since, *(buckets.edge(i) for i in range(1, buckets.count)), until]
        binds: list[BindParameter[Any]] = [bindparam(f"o{i}", outcome) for i, outcome in enumerate(series)]
        binds += [bindparam(f"e{j}", edge, type_=DateTime(timezone=True)) for j, edge in enumerate(edges)]
        counts = (
            f"(SELECT count(*) FROM audit_event WHERE outcome = :o{i} AND at >= :e{j} AND at < :e{j + 1}{where})"
            for i in range(len(series))
            for j in range(buckets.count)
        )
        return text("SELECT " + ", ".join(counts)).bindparams(*binds, **params)
