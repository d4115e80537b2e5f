"""The database: an async engine for SQLite (default) or PostgreSQL, serialised write transactions, the schema.

Every write also appends to the hash-chained audit log, keyed with the database's audit key,
and a chain only stays a chain when appends are serialised. PostgreSQL takes a
transaction-scoped advisory lock (good across replicas); SQLite takes its write lock up front
with BEGIN IMMEDIATE, and an in-process lock keeps this process's writers from queueing inside
SQLite's busy handler. Events that change no request are group-committed on top of this
(`approvals.audit_batch`), so under load the lock is taken once per batch, not once per event.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import Connection, event, make_url, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from approvals import audit, audit_text, driver_sql, migrations
from approvals.audit import CHAIN_KEY, Event
from approvals.database_url import parse_database_url
from approvals.db_file import SqliteFile
from approvals.errors import StoreUnavailable
from approvals.migrations import SchemaOutdated, SchemaState
from approvals.sqlite_append import SqliteAppender, Statement
from approvals.write_groups import WriteGroups

# Readers beyond 10 queue here, in arrival order and for as long as it takes, instead of timing out in the
# pool after 30 s: a burst of a thousand held calls arriving at once is contention, not an outage, and must
# not fail them. The rest of the pool stays for writers and for reads made inside a read, which the pool's
# timeout bounds.
_READ_CONNECTIONS = 10
# Connections kept open: every reader, the writers (one write group, the transactions outside the chain, the
# audit batches) and reads made inside a read. A pool smaller than what is in use at once under load would
# open connections on demand and close them again on check-in, paying a connect (and on SQLite its pragmas)
# each time; beyond this, up to `_POOL_OVERFLOW` more are still opened on demand.
_POOL_SIZE = 15
_POOL_OVERFLOW = 10
# A connection that sat unused in the pool this long is pinged before it is handed out (PostgreSQL), so a
# restarted server costs no caller an error; one in steady use is not (a ping is a round trip per checkout).
_PING_IDLE_AFTER = 5.0
# Whether this task (or the one that started it) already holds a place among those readers.
_reading: ContextVar[bool] = ContextVar("countersign_reading", default=False)

_AUDIT_LOCK_KEY = 0x0C5_A0D17
# Separate from the audit lock: replicas that start together wait here, and the first one decides.
_SCHEMA_LOCK_KEY = 0x0C5_5C4E3A


def normalise_url(url: str) -> str:
    """The URL with the async driver the gateway uses; ValueError for a URL it cannot use."""
    return parse_database_url(url).url


class Database:
    def __init__(self, url: str, *, echo: bool = False, audit_key: bytes | None = None) -> None:
        parsed = parse_database_url(url)
        self.url = parsed.url
        # The key every audit event written through `write()` is keyed with (None: unkeyed, as before 0004).
        self.audit_key = audit_key
        self.is_sqlite = parsed.is_sqlite
        self._write_lock = anyio.Lock()
        self._readers = anyio.Semaphore(_READ_CONNECTIONS)
        # Request transitions share write transactions under load (approvals.write_groups).
        self.groups = WriteGroups(self.write)
        self.file: SqliteFile | None = None
        self._appender: SqliteAppender | None = None
        # Called after each append's commit (the audit search indexer's wake-up, approvals.audit_index).
        self.on_append: Callable[[], None] | None = None
        if parsed.sqlite_file is not None:
            path = Path(parsed.sqlite_file).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = SqliteFile(path)
            if not make_url(self.url).query:
                # The file the engine opens (the driver takes the path as written, made absolute); a URL with
                # driver options (`uri=true`, `mode=…`) is left to the engine, which knows how to apply them.
                self._appender = SqliteAppender(os.path.abspath(parsed.sqlite_file))
        if self.is_sqlite:
            connect_args: dict[str, Any] = {"timeout": 30}
            # A file gets a queue pool sized like PostgreSQL's; an in-memory database keeps its own kind of pool.
            pool = {"pool_size": _POOL_SIZE, "max_overflow": _POOL_OVERFLOW} if parsed.sqlite_file else {}
            self.engine: AsyncEngine = create_async_engine(self.url, echo=echo, connect_args=connect_args, **pool)
            # Usable from the loop's thread too: the hot statements of a write transaction run there, on the one
            # task holding it (approvals.driver_sql).
            write_args = {**connect_args, "check_same_thread": False}
            self._write_engine = create_async_engine(self.url, echo=echo, connect_args=write_args, **pool)
            driver_sql.any_thread(self._write_engine)
            _sqlite_pragmas(self.engine, immediate=False)
            _sqlite_pragmas(self._write_engine, immediate=True)
        else:
            # Statements are shielded from cancellation (see _uncancelled): bound each one instead.
            connect_args = {"command_timeout": 60.0, "timeout": 10.0}
            self.engine = create_async_engine(
                self.url,
                echo=echo,
                connect_args=connect_args,
                pool_size=_POOL_SIZE,
                max_overflow=_POOL_OVERFLOW,
                # The connection used last is handed out first: the busy ones stay warm (and unpinged), the
                # rest sit idle and are pinged when next wanted.
                pool_use_lifo=True,
            )
            _ping_when_idle(self.engine)
            self._write_engine = self.engine

    async def create_schema(self, *, migrate: bool = False) -> SchemaState:
        """Make sure the schema is this version's (the head revision) before anything reads or writes.

        An empty database is built by the revisions and stamped; one made before migrations existed
        is recognised as revision one and stamped, its rows untouched. One at an older revision is
        upgraded only with `migrate` (an operator's decision); otherwise SchemaOutdated says which
        command to run. See approvals/migrations.
        """
        async with self.guard(), self.schema_transaction() as conn:
            prepared = await conn.run_sync(migrations.prepare, migrate)
        if self.file is not None:
            self.file.pin()
        # Raised after the commit, so a pre-Alembic database stays stamped as what it is.
        if not prepared.at_head:
            assert prepared.current is not None
            raise SchemaOutdated(prepared.current, prepared.head)
        return prepared

    async def schema_state(self) -> SchemaState:
        async with self.read() as conn:
            return await conn.run_sync(migrations.state)

    @asynccontextmanager
    async def schema_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction for reading and changing the schema, one process at a time.

        PostgreSQL: a transaction-scoped advisory lock, so replicas starting together migrate once
        (the others wait, then find the schema at head); DDL is transactional, so a failed migration
        leaves nothing half done. SQLite: BEGIN IMMEDIATE on a connection of its own with foreign
        keys off, because batch migrations copy a table and drop the old one, which foreign keys
        would refuse or cascade (migrations.prepare checks them afterwards instead).
        """
        engine = self._write_engine
        if self.is_sqlite:
            engine = create_async_engine(self.url, poolclass=NullPool, connect_args={"timeout": 30})
            _sqlite_pragmas(engine, immediate=True, foreign_keys=False)
        try:
            async with self._write_lock:
                conn = await self._open(engine)
                try:
                    async with conn.begin():
                        if not self.is_sqlite:
                            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
                        yield conn
                finally:
                    await conn.close()
        finally:
            if engine is not self._write_engine:
                await engine.dispose()

    async def dispose(self) -> None:
        if self._appender is not None:
            self._appender.close()
        await self.engine.dispose()
        if self._write_engine is not self.engine:
            await self._write_engine.dispose()

    @asynccontextmanager
    async def read(self, *, brief: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection for reading. The block is shielded from cancellation: see `_uncancelled`.

        `brief`: a few plain statements on the hot path (a request by id, the feed's next batch). On
        PostgreSQL they run outside a transaction: no BEGIN before and no ROLLBACK after them, two round
        trips fewer, and the same isolation (read committed gives each statement a snapshot of its own).
        Not for server-side cursors (streamed results), which need a transaction.
        """
        if _reading.get():
            # A read inside a read (in this task or one it started) takes no second place in the queue: it
            # could wait for itself. The pool's own overflow and timeout bound it instead.
            async with self._read_connection(brief) as conn:
                yield conn
            return
        async with self._readers:
            token = _reading.set(True)
            try:
                async with self._read_connection(brief) as conn:
                    yield conn
            finally:
                _reading.reset(token)

    @asynccontextmanager
    async def _read_connection(self, brief: bool) -> AsyncIterator[AsyncConnection]:
        with _uncancelled():
            async with self.guard():
                conn = await self._open(self.engine)
                try:
                    if brief and not self.is_sqlite:
                        await conn.execution_options(isolation_level="AUTOCOMMIT")
                    yield conn
                finally:
                    await conn.close()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction holding the audit-chain lock; commits on success, rolls back on error."""
        with _uncancelled():
            async with self._write_lock, self.guard():
                self._check_file()
                conn = await self._open(self._write_engine)
                try:
                    async with conn.begin():
                        if not self.is_sqlite:
                            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _AUDIT_LOCK_KEY})
                        conn.info[CHAIN_KEY] = self.audit_key
                        driver_sql.discard(conn)
                        audit.forget_head(conn)
                        yield conn
                        # Inserts kept by the blocks that defer them go in before the commit (approvals.driver_sql).
                        await driver_sql.flush(conn)
                finally:
                    driver_sql.discard(conn)
                    audit.forget_head(conn)  # known only inside this transaction
                    await conn.close()

    async def append_events(self, events: Sequence[tuple[Event, datetime]]) -> list[int]:
        """Append audit events in a write transaction of their own; returns once it has committed.

        An SQLite file runs the transaction in one trip to a worker thread (`approvals.sqlite_append`),
        under the same lock as every other write; otherwise it is a `write()` like any other.
        """
        if self._appender is None:
            async with self.write() as conn:
                appended: list[int] = await audit.append_many(conn, events)
            if self.on_append is not None:
                self.on_append()
            return appended
        with _uncancelled():
            async with self._write_lock:
                self._check_file()
                appended = await anyio.to_thread.run_sync(self._appender.append, events, self.audit_key)
        if self.on_append is not None:
            self.on_append()
        return appended

    async def run_statements(self, work: Callable[[Statement], int]) -> int:
        """Run `work` (plain SQL statements, SQLite) in a write transaction of its own; returns what it returns.

        On an SQLite file it runs in one trip to a worker thread on the appender's connection, as appends do.
        """
        if self._appender is None:
            async with self.write() as conn:
                return await conn.run_sync(lambda sync: work(_statement_on(sync)))
        done = 0
        with _uncancelled():
            async with self._write_lock:
                self._check_file()
                done = await anyio.to_thread.run_sync(self._appender.run, work)
        return done

    def _check_file(self) -> None:
        problem = None if self.file is None else self.file.problem()
        if problem is not None:
            raise StoreUnavailable(problem)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction for tables outside the audit chain (quota slots, the outbox): no chain lock.

        Such writes must not queue behind every audit append of every replica. Their own races are
        settled by the statements themselves (conditional updates, row or advisory locks). SQLite
        still takes its one write lock up front, as every writer there must.
        """
        with _uncancelled():
            async with self._write_lock if self.is_sqlite else _no_lock(), self.guard():
                self._check_file()
                conn = await self._open(self._write_engine)
                try:
                    async with conn.begin():
                        yield conn
                finally:
                    await conn.close()

    @staticmethod
    async def _open(engine: AsyncEngine) -> AsyncConnection:
        """Connect; any failure to get a connection at all (refused, unknown database, bad credentials) is an outage."""
        try:
            return await engine.connect().start()
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"the database is unavailable: {getattr(exc, 'orig', None) or exc}") from exc

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Turn driver-level connection failures into StoreUnavailable, so callers can fail closed."""
        try:
            yield
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, DBAPIError) and not exc.connection_invalidated and not _is_connectivity(exc):
                raise
            raise StoreUnavailable(f"the database is unavailable: {exc.orig or exc}") from exc
        except (OSError, ConnectionError) as exc:
            raise StoreUnavailable(f"the database is unavailable: {exc}") from exc

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(text("SELECT 1"))

    async def probe_write(self) -> None:
        """Prove that a write would succeed now, or raise StoreUnavailable saying why not.

        Reading proves little: a database that answers reads may be read-only (a replica, a
        read-only file or mount), or an SQLite file may have been deleted or replaced under the
        open connection. So the file is checked and a row is written in a transaction that is
        rolled back. It takes the write lock (SQLite: BEGIN IMMEDIATE) but not the audit chain's.
        """
        with _uncancelled():
            async with self._write_lock, self.guard():
                self._check_file()
                conn = await self._open(self._write_engine)
                try:
                    transaction = await conn.begin()
                    try:
                        await conn.execute(text(f"UPDATE {migrations.VERSION_TABLE} SET version_num = version_num"))
                    except SQLAlchemyError as exc:
                        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                            # A pooled connection the server dropped (it is not pinged while in steady use).
                            raise StoreUnavailable(f"the database is unavailable: {exc.orig or exc}") from exc
                        # Not only connectivity: "read-only database", "read-only transaction" are outages here too.
                        raise StoreUnavailable(
                            f"the database cannot be written: {getattr(exc, 'orig', None) or exc}"
                        ) from exc
                    finally:
                        await transaction.rollback()
                finally:
                    await conn.close()


@asynccontextmanager
async def _no_lock() -> AsyncIterator[None]:
    yield


def _uncancelled() -> anyio.CancelScope:
    """Database work runs to its end even when its caller is cancelled; the cancellation lands just after.

    A statement cut off mid-flight makes SQLAlchemy invalidate the connection, and the driver's
    clean-up then outlives the event loop (aiosqlite never finishes closing it). Every block run
    under this does short, bounded database work only: statements are bounded by the drivers'
    timeouts (SQLite's busy timeout, PostgreSQL's command timeout), never by waiting on events.
    """
    return anyio.CancelScope(shield=True)


def _is_connectivity(exc: DBAPIError) -> bool:
    if isinstance(exc, OperationalError):
        message = str(exc.orig).lower()
        # SQLite reports a held lock as OperationalError too; that is contention, not an outage.
        return "locked" not in message and "busy" not in message
    return False


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Check a connection that sat idle in the pool before handing it out; a dead one is replaced there and then.

    Instead of a ping on every checkout (`pool_pre_ping`: a round trip before every statement under load).
    A connection in steady use that the server dropped (a restart) fails its next statement; that error
    invalidates every connection the pool holds from before it, so the next checkouts connect afresh.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < _PING_IDLE_AFTER:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool drops this connection and checks out (or opens) another.
            raise DisconnectionError(f"a pooled connection was found closed: {exc}") from exc


def _statement_on(conn: Connection) -> Statement:
    def run(sql: str, params: tuple[Any, ...]) -> Any:
        result = conn.exec_driver_sql(sql, params)
        return result.first() if result.returns_rows else None

    return run


def _sqlite_pragmas(engine: AsyncEngine, *, immediate: bool, foreign_keys: bool = True) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # A commit returns once the log is on disk: an event a caller was told is recorded survives a power cut.
        # Group commit (approvals.audit_batch) keeps that affordable: one sync per batch, not per call.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.close()
        audit_text.register(dbapi_connection)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
