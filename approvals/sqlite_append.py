"""Audit appends on SQLite in one trip to a worker thread: begin, read the head, insert, commit.

Every allowed call waits for its audit event to be committed before it is forwarded, so this
transaction is on the path of every call. Through the async engine it is a dozen round trips
between the event loop and the driver's thread (check out a connection, BEGIN IMMEDIATE, the head
read, its fetch, the insert, COMMIT, the reset on check-in), each a wake-up of the loop, and the
statements are compiled and their results wrapped on the loop. Here one plain `sqlite3`
connection, kept open for appends only, runs the whole transaction as one function in a worker
thread: the loop hands it over once and is woken once, when the commit is on disk.

The rows are the ones `approvals.audit.chain_rows` builds, stored with the column types' own SQLite
conversions, so they read back and verify exactly like rows written through the engine. The
durability settings are the write engine's (`approvals.db`): WAL, `synchronous=FULL`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.dialects import sqlite

from approvals.audit import Event, chain_rows
from approvals.errors import StoreUnavailable
from approvals.models import AuditEvent

# Runs one SQL statement with its parameters; returns its first row (None when it has none).
Statement = Callable[[str, tuple[Any, ...]], Any]

_table = AuditEvent.__table__  # type: ignore[attr-defined]
_dialect = sqlite.dialect()
_COLUMNS = tuple(column.name for column in _table.columns)
_INSERT = f"INSERT INTO {_table.name} ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
_HEAD = f"SELECT seq, hash, keyed FROM {_table.name} ORDER BY seq DESC LIMIT 1"
# Each column's conversion to what SQLite stores (a datetime's text form, a bool's 0/1), as the engine does it.
_CONVERT: tuple[Callable[[Any], Any] | None, ...] = tuple(
    column.type.dialect_impl(_dialect).bind_processor(_dialect) for column in _table.columns
)


_T = TypeVar("_T")


class SqliteAppender:
    """One connection that appends audit events; callers serialise it (`Database`'s write lock)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def append(self, events: Sequence[tuple[Event, datetime]], key: bytes | None) -> list[int]:
        """Append `events` in one transaction and commit it; runs in a worker thread."""

        def chain(conn: sqlite3.Connection) -> list[int]:
            last = conn.execute(_HEAD).fetchone()
            head = None if last is None else (int(last[0]), str(last[1]), bool(last[2]))
            rows = chain_rows(head, events, key)
            conn.executemany(_INSERT, [_stored(row) for row in rows])
            return [row["seq"] for row in rows]

        return self._transaction(chain)

    def run(self, work: Callable[[Statement], int]) -> int:
        """Run `work` in a write transaction of its own on this connection and commit; runs in a worker thread."""
        return self._transaction(lambda conn: work(lambda sql, params: conn.execute(sql, params).fetchone()))

    def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        # One write transaction on this connection: committed if `work` returns, rolled back if it raises.
        with self._lock:
            try:
                conn = self._connect()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    done = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                self._drop()
                raise StoreUnavailable(f"the database is unavailable: {exc}") from exc
            return done

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                # As the write engine: a commit returns once the log is on disk (see approvals.db).
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        # After a failure the connection is opened afresh: a half-known state is never reused.
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _stored(row: dict[str, Any]) -> tuple[Any, ...]:
    values = (row.get(name) for name in _COLUMNS)
    pairs = zip(_CONVERT, values, strict=True)
    return tuple(value if convert is None or value is None else convert(value) for convert, value in pairs)
