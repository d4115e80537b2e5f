"""The audit history's text search on SQLite: the trigram index of arguments and messages (migration 0016).

`audit_event_text` is an FTS5 table with the trigram tokenizer over `audit_event`'s rows (its rowid is
the event's `seq`). A phrase query of the search text matches the events whose arguments or message
contain it, ignoring case, from the index alone; and FTS5 returns matches in rowid order, lazily, so a
page of the newest 50 of a common word stops after 50, while a rare one is found without reading the
events around it. Text under three characters has no trigram to look up: it is matched against the
events themselves (`approvals.history.event_conditions`), as PostgreSQL matches all text (its trigram
indexes serve `ILIKE` directly).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, Table, Text, column, table

TABLE = "audit_event_text"
# The trigram tokenizer indexes three characters at a time: shorter text cannot be looked up.
MIN_LENGTH = 3
# Filters that only an event's own row can answer; without them the index alone answers a count.
ROW_FILTERS = ("tool", "agent", "outcome", "actor", "request_id", "kinds", "since", "until")

index = table(TABLE, column("rowid", Integer), column(TABLE, Text))
rowid = index.c.rowid


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


def joined(events: Table) -> Any:
    """The index joined to the events it matches, the index first: its rowid order is the page order."""
    return index.join(events, events.c.seq == rowid)
