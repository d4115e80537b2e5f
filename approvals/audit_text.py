"""The audit history's text search on SQLite: the trigram index of arguments and messages (migration 0016).

`audit_event_text` is an FTS5 table with the trigram tokenizer over `audit_event`'s rows (its rowid is
the event's `seq`). A phrase query of the search text matches the events whose arguments or message
contain it, ignoring case, from the index alone; and FTS5 returns matches in rowid order, lazily, so a
page of the newest 50 of a common word stops after 50, while a rare one is found without reading the
events around it. Text under three characters has no trigram to look up: it is matched against the
events themselves (`approvals.history.event_conditions`), as PostgreSQL matches all text (its trigram
indexes serve `ILIKE` directly).

The index is kept up to date after the fact, off the call path (`approvals.audit_index`, migration
0018): `audit_event_text_mark` holds the sequence number it reaches. A search reads the index up to
that mark and matches the newer events (usually a few, or none) one by one with `CONTAINS`, a
function each SQLite connection is given (`register`) that folds case as the index does.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, Integer, Join, Table, Text, column, func, or_, select, table
from sqlalchemy import text as sql_text
from sqlalchemy.ext.compiler import compiles

TABLE = "audit_event_text"
MARK = "audit_event_text_mark"
# The SQL function that matches the events after the mark (see `register`).
CONTAINS = "countersign_contains"
# The trigram tokenizer indexes three characters at a time: shorter text cannot be looked up.
MIN_LENGTH = 3
# Filters that an index on (column, seq) answers for one match by its sequence number, without reading
# the event's row (in SQLite an index on one column holds the rowid too): the index on each is named.
PROBED = {
    "tool": "ix_audit_event_tool_seq",
    "agent": "ix_audit_event_agent_seq",
    "outcome": "ix_audit_event_outcome_seq",
    "actor": "ix_audit_event_actor_seq",
    "request_id": "ix_audit_event_request_id",
}
# Filters that only an event's own row can answer; without them the index (and the probes) answer a count.
ROW_FILTERS = ("kinds", "since", "until")

index = table(TABLE, column("rowid", Integer), column(TABLE, Text))
rowid = index.c.rowid
mark = table(MARK, column("id", Integer), column("upto", Integer))
# The last sequence number the index holds: every event up to it is in the index, none after it. A search
# reads it once, before the index and the events: the index only grows, so the two readings never leave a gap.
read_upto = select(func.coalesce(func.max(mark.c.upto), 0))


def contains(haystack: str | None, needle: str | None) -> bool:
    """Whether `needle` is in `haystack`, ignoring case as the trigram index does (letter by letter)."""
    return haystack is not None and needle is not None and needle.lower() in haystack.lower()


def register(dbapi_connection: Any) -> None:
    """Give an SQLite connection the `CONTAINS` function that searches match unindexed events with."""
    dbapi_connection.create_function(CONTAINS, 2, contains, deterministic=True)


def unindexed_match(events: Table, text: str) -> Any:
    """The condition an event after the mark must meet to match `text` (the index's own rule)."""
    matched = getattr(func, CONTAINS)
    return or_(matched(events.c.arguments, text, type_=Boolean), matched(events.c.message, text, type_=Boolean))


def phrase(text: str | None) -> str | None:
    """The FTS5 query that finds `text` as a substring; None when the index cannot (no text, or too short).

    Quoted as one phrase (quotes doubled), so nothing in it is query syntax: `AND`, `*`, `NEAR(…)`, `:`
    and quotes are the user's characters.
    """
    if not text or len(text) < MIN_LENGTH:
        return None
    return '"' + text.replace('"', '""') + '"'


def matches(query: str) -> Any:
    return index.c[TABLE].op("MATCH")(query)


def probes(values: dict[str, str]) -> list[Any]:
    """For each `column: value`, whether the match (by the index's rowid) has it, from that column's index.

    A common word narrowed by a filter few of its matches meet (`cancel` among approvals: 150,000
    matches, none approved) is decided match by match. Reading each match's row for its outcome
    cost ~0.9 µs a match; a lookup of (outcome, seq) in the covering index ~0.5 µs, and the row is
    then read only for the matches that meet every filter. `INDEXED BY` keeps SQLite from choosing the
    primary key for `seq = ?`, which would read the row after all (SQLAlchemy renders no table hints
    for SQLite, hence the text; the column and index names are this module's, the value is bound).
    """
    found = []
    for name, value in values.items():
        probe = f"probe_{name}"
        found.append(
            sql_text(
                f"EXISTS (SELECT 1 FROM audit_event AS {probe} INDEXED BY {PROBED[name]}"
                f" WHERE {probe}.{name} = :{probe} AND {probe}.seq = {TABLE}.rowid)"
            ).bindparams(**{probe: value})
        )
    return found


def joined(events: Table) -> Any:
    """The index joined to the events it matches, the index first: its rowid order is the page order."""
    return _IndexFirst(index, events, events.c.seq == rowid)


class _IndexFirst(Join):
    """A join SQLite must run in the order written (`CROSS JOIN`): the index's matches outside.

    Left to choose, SQLite counts a search narrowed by agent (or tool, outcome…) the other way round:
    every event of that agent, from its index, each probing the text index by rowid (~130 µs apiece,
    seconds for a busy agent). The index outside reads the matches in order and looks each event up by
    its primary key, and stops at a page or at the count's cap.
    """

    inherit_cache = True


@compiles(_IndexFirst)
def _cross_join(join: _IndexFirst, compiler: Any, **kw: Any) -> str:
    plain: str = compiler.visit_join(join, **kw)
    return plain.replace(" JOIN ", " CROSS JOIN ", 1)
