"""Reading the audit history: pages of events by filter, counts, facets for menus, and the chain's check."""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import Any, TypedDict, Unpack

from sqlalchemy import Table, func, select, true
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals import audit, audit_text, audit_walk
from approvals.db import Database
from approvals.evidence import verify_log
from approvals.models import AuditEvent
from approvals.views import AuditEventView

_events = AuditEvent.__table__  # type: ignore[attr-defined]


# How many `since` moments `AuditHistory.bounded` remembers the first sequence number of.
KNOWN_STARTS = 256
# How many candidates a narrowed text search examines per page load (`AuditHistory.window`): SQLite checks
# one in its filter's index (~0.5 µs), PostgreSQL reads its row and matches the text (~4 µs).
SCAN = 10_000
SCAN_POSTGRES = 4_000


class AuditHistory:
    def __init__(self, db: Database) -> None:
        self.db = db
        # since -> the smallest sequence number of an event at or after it, when it was read. It stays a
        # valid lower bound: an event appended later takes a larger number than every event there is.
        self._starts: OrderedDict[datetime, int] = OrderedDict()
        self.estimates = audit_walk.TextEstimates()
        # How many candidates a narrowed text search examines per page load (`window`).
        self.scan = SCAN if db.is_sqlite else SCAN_POSTGRES

    async def events(self, *, request_id: str | None = None, limit: int = 200) -> list[AuditEventView]:
        query = select(_events)
        if request_id is not None:
            query = query.where(_events.c.request_id == request_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(query.order_by(_events.c.seq.desc()).limit(limit))).mappings().all()
        return [AuditEventView.from_row(r) for r in reversed(rows)]

    async def verify(self, *, expect: tuple[int | None, str] | None = None) -> audit.ChainReport:
        """The chain checked under the database's audit key, and the tables held against it."""
        async with self.db.read() as conn:
            return await verify_log(conn, self.db.audit_key, expect=expect)

    async def search_events(
        self,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int = 50,
        **filters: Unpack[EventFilters],
    ) -> list[AuditEventView]:
        """One page of matching events, newest first.

        Paged by sequence number (keyset), so a page deep in a large history costs the same as the first:
        `before_seq` gives the page after the one ending there, `after_seq` the page before (still newest first).
        """
        # The keyset as sequence bounds too, where a statement needs them inside (a walk's candidates, the index).
        if before_seq is not None and after_seq is None:
            filters = _narrowed(filters, "seq_to", before_seq - 1)
        if after_seq is not None:
            filters = _narrowed(filters, "seq_from", after_seq + 1)
        async with self.db.read() as conn:
            rows: list[Any] = []
            for query, seq in await self._matching(conn, filters, _events, newest_first=after_seq is None):
                if after_seq is not None:
                    # The page just newer than `after_seq`: the oldest `limit` above it, shown newest first.
                    query = query.where(seq > after_seq).order_by(seq.asc())
                else:
                    if before_seq is not None:
                        query = query.where(seq < before_seq)
                    query = query.order_by(seq.desc())
                rows.extend((await conn.execute(query.limit(limit))).mappings().all())
        views = sorted((AuditEventView.from_row(r) for r in rows), key=lambda v: v.seq, reverse=after_seq is None)
        return sorted(views[:limit], key=lambda v: v.seq, reverse=True)

    async def bounded(self, filters: EventFilters) -> EventFilters | None:
        """`filters` with the sequence numbers their time range spans added; None when no event falls in it.

        A page is read newest first by sequence number. Given only a time range, a database may walk the
        sequence numbers down from the newest until it reaches the range (half a million rows for a day two
        weeks back); bounded by the first and last number in the range, it walks that range alone. The bounds
        are read from the (at, seq) index, so they are exact even where times and numbers are out of step.
        """
        since, until = filters.get("since"), filters.get("until")
        if since is None and until is None:
            return filters
        known = self._starts.get(since) if since is not None and until is None else None
        if since is not None and known is not None:
            # "Since" alone is bounded below only, and that bound never moves up: remembered, not read again
            # (a week back it is a scan of ~250,000 index entries at a million events, ~30 ms of CPU).
            self._starts.move_to_end(since)
            return {**filters, "seq_from": known}
        in_range = select(_events.c.seq)
        if since is not None:
            in_range = in_range.where(_events.c.at >= since)
        if until is not None:
            in_range = in_range.where(_events.c.at < until)
        # OFFSET 0 keeps PostgreSQL from turning min/max into a walk of the primary key filtered by time
        # (half the table for a day two weeks back); it reads the range of the (at, seq) index instead.
        numbers = in_range.offset(0).subquery()
        query = select(func.min(numbers.c.seq), func.max(numbers.c.seq))
        async with self.db.read() as conn:
            low, high = (await conn.execute(query)).one()
        if low is None:
            return None
        if until is None and since is not None:
            self._starts[since] = int(low)
            if len(self._starts) > KNOWN_STARTS:
                self._starts.popitem(last=False)
            return {**filters, "seq_from": int(low)}
        return {**filters, "seq_from": int(low), "seq_to": int(high)}

    async def window(
        self, filters: EventFilters, *, before_seq: int | None = None, after_seq: int | None = None
    ) -> int | None:
        """Where a text search narrowed by other filters stops examining candidates; None when it need not stop.

        A common word with a filter few of its matches meet (`cancel` among approvals: 150,000 matches, none
        approved) would otherwise be checked match by match to the oldest event on every page load. A page
        load examines at most `self.scan` candidates below `before_seq` (above `after_seq`, for a newer page): the
        answer is the sequence number of the last one, the bound (`seq_from`, or `seq_to` going newer) the
        page is read within; a page that is not full there says so and offers to search on from it. None when
        fewer candidates remain, or when every candidate is a match (text alone, or with a time range).

        The candidates are the text's matches in the trigram index on SQLite (newest first by rowid). On
        PostgreSQL, whose trigram indexes have no order, they are the events the equality filters select,
        walked in that filter's (column, seq) index, unless the planner expects the text itself to be rare:
        then the trigram indexes find its few matches in the whole history at once, and there is no bound.
        """
        text = filters.get("text")
        if not text or filters.get("request_id"):
            return None  # a request's events are a handful
        newer = after_seq is not None and before_seq is None
        async with self.db.read() as conn:
            phrase = self._phrase(filters)
            if phrase is not None:
                if not any(filters.get(name) for name in (*audit_text.PROBED, "kinds")):
                    return None
                upto = int((await conn.execute(audit_text.read_upto)).scalar_one())
                seq = audit_text.rowid
                query = select(seq).select_from(audit_text.index).where(audit_text.matches(phrase), seq <= upto)
            elif not await self._walks(conn, filters):
                return None
            else:
                seq = _events.c.seq
                query = select(seq).where(*event_conditions(_walked(filters)))
            if filters.get("seq_from") is not None:
                query = query.where(seq >= filters.get("seq_from"))
            if filters.get("seq_to") is not None:
                query = query.where(seq <= filters.get("seq_to"))
            if newer:
                query = query.where(seq > after_seq).order_by(seq.asc())
            else:
                query = query.where(seq < before_seq) if before_seq is not None else query
                query = query.order_by(seq.desc())
            bound = (await conn.execute(query.offset(self.scan - 1).limit(1))).scalar_one_or_none()
        return None if bound is None else int(bound)

    async def count_events(self, *, cap: int | None = None, **filters: Unpack[EventFilters]) -> int:
        """How many events match; with `cap`, counting stops there (the answer is then at least `cap`)."""
        total = 0
        async with self.db.read() as conn:
            for matching in await self._counted(conn, filters):
                if cap is not None:
                    matching = matching.limit(cap)
                total += int((await conn.execute(select(func.count()).select_from(matching.subquery()))).scalar_one())
        return total if cap is None else min(total, cap)

    async def _counted(self, conn: AsyncConnection, filters: EventFilters) -> list[Any]:
        phrase = self._phrase(filters)
        if phrase is not None and not any(filters.get(name) for name in audit_text.ROW_FILTERS):
            # Text, equality filters and sequence bounds: the index and the filters' own indexes count the
            # matches without reading an event.
            upto = int((await conn.execute(audit_text.read_upto)).scalar_one())
            indexed, _ = _indexed(select(audit_text.rowid).select_from(audit_text.index), phrase, filters, upto)
            return [indexed, _unindexed(select(_events.c.seq), filters, upto)]
        return [query for query, _ in await self._matching(conn, filters, _events.c.seq)]

    def _phrase(self, filters: EventFilters) -> str | None:
        return audit_text.phrase(filters.get("text")) if self.db.is_sqlite else None

    async def _walks(self, conn: AsyncConnection, filters: EventFilters) -> bool:
        """Whether a search is read from its filters' candidates (PostgreSQL, `approvals.audit_walk`)."""
        text = filters.get("text")
        if self.db.is_sqlite or not text or not any(filters.get(name) for name in audit_walk.WALKED):
            return False
        return await self.estimates.common(conn, like_pattern(text))

    async def _matching(
        self, conn: AsyncConnection, filters: EventFilters, *columns: Any, newest_first: bool = True
    ) -> list[tuple[Any, Any]]:
        """SELECTs of `columns` of the events that match `filters`, each with the sequence number column to page by.

        On SQLite a text search is read from the trigram index joined to the events (`approvals.audit_text`),
        paged by the index's rowid (the event's `seq`), so the index yields matches newest first and stops
        at a page; the events the index does not reach yet are a second SELECT, matched one by one. Every
        other search is one SELECT of the events alone.
        """
        phrase = self._phrase(filters)
        if phrase is None and await self._walks(conn, filters):
            return [_walk(filters, columns, newest_first=newest_first)]
        if phrase is None:
            return [(select(*columns).where(*event_conditions(filters)), _events.c.seq)]
        upto = int((await conn.execute(audit_text.read_upto)).scalar_one())
        indexed = _indexed(select(*columns).select_from(audit_text.joined(_events)), phrase, filters, upto)
        return [indexed, (_unindexed(select(*columns), filters, upto), _events.c.seq)]

    async def event_facets(self) -> dict[str, list[str]]:
        """The distinct tools, agents, outcomes and actors in the audit log, for filter menus.

        Each column is read by skipping through its index from one value to the next (a recursive query of
        one index lookup per distinct value), not by reading every row: a handful of lookups for a million
        events, where DISTINCT would read them all.
        """
        facets: dict[str, list[str]] = {}
        async with self.db.read() as conn:
            for name in ("tool", "agent", "outcome", "actor"):
                facets[name] = [str(v) for v in (await conn.execute(_distinct(name))).scalars()]
        return facets


def _indexed(query: Any, phrase: str, filters: EventFilters, upto: int) -> tuple[Any, Any]:
    """`query` (over the trigram index) narrowed to `phrase` and the other filters, sequence bounds on the rowid.

    Equality filters are looked up in their own indexes by the match's rowid (`audit_text.probes`); the
    rest (time, kinds) are read from the event's row.
    """
    probed = {name: str(filters.get(name)) for name in audit_text.PROBED if filters.get(name)}
    rest: EventFilters = {**filters, "text": None}
    for name in probed:
        rest[name] = None  # type: ignore[literal-required]
    others = event_conditions(rest, seq=audit_text.rowid)
    probes = audit_text.probes(probed)
    return query.where(audit_text.matches(phrase), audit_text.rowid <= upto, *probes, *others), audit_text.rowid


def _walk(filters: EventFilters, columns: Any, *, newest_first: bool) -> tuple[Any, Any]:
    """`columns` of the events matching `filters`, read from the candidates the equality filters select.

    The candidates' sequence numbers come from a filter's (column, seq) index alone, newest (or oldest)
    first; each is then looked up by its primary key and its time, kinds and text checked. Both parts are
    fenced (`OFFSET 0`), so the planner can neither walk the primary key filtering every row nor read the
    text's whole trigram posting list: the statement reads candidates in order and stops at its LIMIT.
    """
    order = _events.c.seq.desc() if newest_first else _events.c.seq.asc()
    found = select(_events.c.seq).where(*event_conditions(_walked(filters)))
    candidates = found.order_by(order).offset(0).subquery("candidate")
    rest: EventFilters = {"since": filters.get("since"), "until": filters.get("until"), "text": filters.get("text")}
    rest["kinds"] = filters.get("kinds")
    event = select(_events).where(_events.c.seq == candidates.c.seq, *event_conditions(rest)).offset(0)
    row = event.lateral("event")
    names = [name for c in columns for name in (c.c.keys() if isinstance(c, Table) else [c.name])]
    query = select(*(row.c[name] for name in names)).select_from(candidates.join(row, true()))
    return query, candidates.c.seq


def _walked(filters: EventFilters) -> EventFilters:
    """The equality filters and sequence bounds of `filters`: what a walk's candidates are selected by."""
    walked: EventFilters = {"tool": filters.get("tool"), "agent": filters.get("agent")}
    walked["outcome"], walked["actor"] = filters.get("outcome"), filters.get("actor")
    walked["request_id"] = filters.get("request_id")
    walked["seq_from"], walked["seq_to"] = filters.get("seq_from"), filters.get("seq_to")
    return walked


def _narrowed(filters: EventFilters, name: str, value: int) -> EventFilters:
    """`filters` with the sequence bound `name` (seq_from or seq_to) tightened to `value`."""
    narrowed: EventFilters = {**filters}
    if name == "seq_from":
        given = filters.get("seq_from")
        narrowed["seq_from"] = value if given is None else max(given, value)
    else:
        given = filters.get("seq_to")
        narrowed["seq_to"] = value if given is None else min(given, value)
    return narrowed


def _unindexed(query: Any, filters: EventFilters, upto: int) -> Any:
    """`query` narrowed to the events after `upto` (not in the index yet) that match `filters`."""
    others = event_conditions({**filters, "text": None})
    return query.where(_events.c.seq > upto, audit_text.unindexed_match(_events, filters.get("text") or ""), *others)


def _distinct(name: str) -> Any:
    """The distinct non-null values of a column, smallest first, one index lookup each."""
    column = _events.c[name]
    first = select(func.min(column).label("value")).cte(name=f"distinct_{name}", recursive=True)
    step = select(func.min(column)).where(column > first.c.value).scalar_subquery()
    walk = first.union_all(select(step).where(first.c.value.is_not(None)))
    return select(walk.c.value).where(walk.c.value.is_not(None)).order_by(walk.c.value)


class EventFilters(TypedDict, total=False):
    """What the audit history can be filtered by; every given filter must hold."""

    tool: str | None
    agent: str | None
    outcome: str | None
    actor: str | None
    request_id: str | None
    since: datetime | None
    until: datetime | None
    text: str | None
    kinds: tuple[str, ...] | None
    # The sequence numbers the matching events lie within (inclusive); see `AuditHistory.bounded`.
    seq_from: int | None
    seq_to: int | None


def event_conditions(filters: EventFilters, *, seq: Any = None) -> list[Any]:
    """The conditions `filters` make; sequence bounds apply to `seq` (the events' own by default)."""
    seq = _events.c.seq if seq is None else seq
    conditions: list[Any] = []
    for name in ("tool", "agent", "outcome", "actor", "request_id"):
        value = filters.get(name)
        if value:
            conditions.append(_events.c[name] == value)
    kinds = filters.get("kinds")
    if kinds:
        conditions.append(_events.c.kind.in_(kinds))
    since, until, text = filters.get("since"), filters.get("until"), filters.get("text")
    if since is not None:
        conditions.append(_events.c.at >= since)
    if until is not None:
        conditions.append(_events.c.at < until)
    seq_from, seq_to = filters.get("seq_from"), filters.get("seq_to")
    if seq_from is not None:
        conditions.append(seq >= seq_from)
    if seq_to is not None:
        conditions.append(seq <= seq_to)
    if text:
        pattern = like_pattern(text)
        conditions.append(
            _events.c.arguments.ilike(pattern, escape="\\") | _events.c.message.ilike(pattern, escape="\\")
        )
    return conditions


def like_pattern(text: str) -> str:
    """The `ILIKE` pattern of a literal substring: the user's % and _ are not wildcards (escaped by \\)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
