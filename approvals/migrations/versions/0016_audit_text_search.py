"""A trigram index of the audit events' arguments and messages, for the audit page's text search.

The search matches a literal substring of either column, ignoring case. A substring match cannot use
an ordinary index, so it read every event (1-2 s over a million). A trigram index answers it by
looking up the search text's three-letter pieces:

- SQLite: `audit_event_text`, an FTS5 table with the trigram tokenizer over `audit_event`'s own
  rows (external content: the text is not stored twice), kept in step by triggers, so every
  writer (the engine, the single-transaction appender) maintains it inside its own transaction.
- PostgreSQL: a `pg_trgm` GIN index on each column, which `ILIKE '%…%'` uses as it is.

Existing events are indexed by the upgrade. Where `pg_trgm` cannot be created (no contrib package,
or no right to create it), the upgrade leaves the indexes out and search keeps reading every event.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | None = None
depends_on: str | None = None

_log = logging.getLogger("countersign.migrations")

_SQLITE_UP = (
    "CREATE VIRTUAL TABLE audit_event_text USING fts5("
    "arguments, message, content='audit_event', content_rowid='seq', tokenize='trigram')",
    "CREATE TRIGGER audit_event_text_insert AFTER INSERT ON audit_event BEGIN "
    "INSERT INTO audit_event_text(rowid, arguments, message) VALUES (new.seq, new.arguments, new.message); END",
    "CREATE TRIGGER audit_event_text_delete AFTER DELETE ON audit_event BEGIN "
    "INSERT INTO audit_event_text(audit_event_text, rowid, arguments, message) "
    "VALUES ('delete', old.seq, old.arguments, old.message); END",
    "CREATE TRIGGER audit_event_text_update AFTER UPDATE OF seq, arguments, message ON audit_event BEGIN "
    "INSERT INTO audit_event_text(audit_event_text, rowid, arguments, message) "
    "VALUES ('delete', old.seq, old.arguments, old.message); "
    "INSERT INTO audit_event_text(rowid, arguments, message) VALUES (new.seq, new.arguments, new.message); END",
    # The events already there.
    "INSERT INTO audit_event_text(audit_event_text) VALUES ('rebuild')",
)
_SQLITE_DOWN = (
    "DROP TRIGGER IF EXISTS audit_event_text_update",
    "DROP TRIGGER IF EXISTS audit_event_text_delete",
    "DROP TRIGGER IF EXISTS audit_event_text_insert",
    "DROP TABLE IF EXISTS audit_event_text",
)
_POSTGRES_INDEXES = ("arguments", "message")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for statement in _SQLITE_UP:
            bind.execute(text(statement))
        return
    savepoint = bind.begin_nested()
    try:
        bind.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except DBAPIError as exc:
        savepoint.rollback()
        _log.warning("pg_trgm is not available (%s); the audit page's text search will read every event", exc)
        return
    savepoint.commit()
    for column in _POSTGRES_INDEXES:
        bind.execute(
            text(f"CREATE INDEX ix_audit_event_{column}_trgm ON audit_event USING gin ({column} gin_trgm_ops)")
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for statement in _SQLITE_DOWN:
            bind.execute(text(statement))
        return
    for column in _POSTGRES_INDEXES:
        bind.execute(text(f"DROP INDEX IF EXISTS ix_audit_event_{column}_trgm"))
