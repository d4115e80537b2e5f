"""The audit search index kept up off the call path (SQLite): no insert trigger, a mark of how far it reaches.

Revision 0016 kept the FTS5 trigram index (`audit_event_text`) in step with `audit_event` by triggers,
so every audit append, the one each allowed call waits for, also wrote a new index segment inside
its own transaction (~90 µs of CPU per commit). From here the index is brought up to date after the
fact, in batches (`approvals.audit_index`), and `audit_event_text_mark` holds the sequence number it
reaches: every event up to `upto` is in the index, none after it. A search reads the index up to the
mark and the few newer events directly, so it never misses a committed event.

The events are never changed or removed by the gateway; the delete and update triggers stay for
whoever does, limited to the events the index holds (an external-content FTS5 index must only be
told to remove what it has).

The upgrade leaves the index as 0016 built it (every event, by its triggers) and sets the mark to
the newest event. The downgrade indexes the events after the mark and puts 0016's triggers back.
PostgreSQL is untouched: its `pg_trgm` GIN indexes are kept by PostgreSQL itself.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | None = None
depends_on: str | None = None

_INDEXED = "old.seq <= (SELECT upto FROM audit_event_text_mark WHERE id = 1)"
_REMOVE_OLD = (
    "INSERT INTO audit_event_text(audit_event_text, rowid, arguments, message) "
    "VALUES ('delete', old.seq, old.arguments, old.message); "
)
_ADD_NEW = "INSERT INTO audit_event_text(rowid, arguments, message) VALUES (new.seq, new.arguments, new.message); "
_DROP_TRIGGERS = (
    "DROP TRIGGER IF EXISTS audit_event_text_insert",
    "DROP TRIGGER IF EXISTS audit_event_text_delete",
    "DROP TRIGGER IF EXISTS audit_event_text_update",
)
_SQLITE_UP = (
    *_DROP_TRIGGERS,
    "CREATE TABLE audit_event_text_mark (id INTEGER PRIMARY KEY CHECK (id = 1), upto INTEGER NOT NULL)",
    "INSERT INTO audit_event_text_mark (id, upto) SELECT 1, coalesce(max(seq), 0) FROM audit_event",
    f"CREATE TRIGGER audit_event_text_delete AFTER DELETE ON audit_event WHEN {_INDEXED} BEGIN {_REMOVE_OLD}END",
    "CREATE TRIGGER audit_event_text_update AFTER UPDATE OF seq, arguments, message ON audit_event "
    f"WHEN {_INDEXED} BEGIN {_REMOVE_OLD}{_ADD_NEW}END",
)
_SQLITE_DOWN = (
    "INSERT INTO audit_event_text(rowid, arguments, message) SELECT seq, arguments, message FROM audit_event "
    "WHERE seq > (SELECT upto FROM audit_event_text_mark WHERE id = 1) ORDER BY seq",
    *_DROP_TRIGGERS,
    "DROP TABLE audit_event_text_mark",
    f"CREATE TRIGGER audit_event_text_insert AFTER INSERT ON audit_event BEGIN {_ADD_NEW}END",
    f"CREATE TRIGGER audit_event_text_delete AFTER DELETE ON audit_event BEGIN {_REMOVE_OLD}END",
    "CREATE TRIGGER audit_event_text_update AFTER UPDATE OF seq, arguments, message ON audit_event "
    f"BEGIN {_REMOVE_OLD}{_ADD_NEW}END",
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for statement in _SQLITE_UP:
            bind.execute(text(statement))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for statement in _SQLITE_DOWN:
            bind.execute(text(statement))
