"""The hot statements of a write transaction, compiled once and run through the driver itself.

A decision is a handful of short statements (a compare-and-set, an insert, an audit append) inside a
write transaction that is already open. Through SQLAlchemy's general execution path each one is
built again, looked up in the compiled cache by its cache key, bound, run through the async adapter
(a greenlet switch) and, on SQLite, four or five trips to aiosqlite's thread and back (cursor,
execute, fetch, close), each a hand-off of the interpreter lock and a wake-up of the loop. For those
statements, here:

- the statement is compiled by SQLAlchemy once per shape (which columns are set, how many rows) for the
  connection's dialect, and kept with its positional parameter names and the column types' own bind
  and result conversions, so values go in and come out exactly as the general path stores and reads them;
- PostgreSQL: it runs through the asyncpg connection (`fetch`/`execute`), whose own statement cache
  prepares it once per connection: one round trip, no greenlet;
- SQLite: it runs on the `sqlite3` connection directly, on the event loop's thread, with no trip to the
  driver's thread at all. Only inside an open write transaction: SQLite's write lock is already held
  (BEGIN IMMEDIATE), so such a statement never waits for a lock, and its work is bounded (an index
  lookup, a row or two written to the log's pages); the commit, which waits for the disk, still goes
  through the engine. The write engine's connections are opened usable from any thread (`approvals.db`);
  they are only ever used by one task at a time, the one holding the write transaction (`any_thread`);
  any other SQLite connection runs these statements through SQLAlchemy.

Where the driver cannot be reached this way (no transaction begun yet on the connection, another
driver) the statement goes through SQLAlchemy as before. Driver errors come out as SQLAlchemy's: a key
taken is an `IntegrityError`; anything else an `OperationalError`, which `Database.guard` reports as
the database being unavailable (the write fails closed).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, bindparam, event, update
from sqlalchemy import insert as insert_into
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Executable, ReturnsRows
from sqlalchemy.types import TypeEngine

_Convert = Callable[[Any], Any] | None


@dataclass(frozen=True)
class Compiled:
    """A statement compiled for one dialect, with what its driver needs to run it and read its rows."""

    statement: Executable
    sql: str
    # The parameters in the order the driver takes them: name, default value, bind conversion.
    params: tuple[tuple[str, Any, _Convert], ...]
    # The rows' columns: name and result conversion.
    columns: tuple[tuple[str, _Convert], ...]
    verb: str

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        out = []
        for name, default, convert in self.params:
            value = values.get(name, default)
            out.append(value if convert is None or value is None else convert(value))
        return out

    def row(self, raw: Sequence[Any]) -> dict[str, Any]:
        return {
            name: value if convert is None or value is None else convert(value)
            for (name, convert), value in zip(self.columns, raw, strict=True)
        }


_compiled: dict[tuple[str, Hashable], Compiled] = {}
# Statements run through the driver here, by their first word (what `bench/bench_decide.py` counts).
executed: Counter[str] = Counter()


def compiled(dialect: Dialect, key: Hashable, build: Callable[[], Executable]) -> Compiled:
    """The statement `build` makes (named bind parameters), compiled once per dialect and `key`."""
    found = _compiled.get((dialect.name, key))
    if found is not None:
        return found
    statement = build()
    done = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    defaults = done.params
    params = tuple(
        (name, defaults.get(name), done.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
        for name in done.positiontup or ()
    )
    exported = statement.exported_columns if isinstance(statement, ReturnsRows) else ()
    columns = tuple((c.name, _result_conversion(c.type, dialect)) for c in exported)
    found = Compiled(statement, done.string, params, columns, done.string.split(None, 1)[0].upper())
    _compiled[(dialect.name, key)] = found
    return found


def _result_conversion(kind: TypeEngine[Any], dialect: Dialect) -> _Convert:
    try:
        return kind.dialect_impl(dialect).result_processor(dialect, None)
    except TypeError:
        # asyncpg's numeric types choose by the column's type code, known only with a result; asyncpg
        # itself returns a float for a float column, which is what those conversions make of it.
        return None


async def rows(conn: AsyncConnection, statement: Compiled, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Run `statement` with `values` in `conn`'s open transaction; its rows (none for a statement without)."""
    driver = _driver(conn)
    if driver is None:
        result = await conn.execute(statement.statement, dict(values))
        return [dict(row) for row in result.mappings().all()] if statement.columns else []
    arguments = statement.arguments(values)
    executed[statement.verb] += 1
    try:
        if isinstance(driver, sqlite3.Connection):
            cursor = driver.execute(statement.sql, arguments)
            fetched: Sequence[Sequence[Any]] = cursor.fetchall() if statement.columns else ()
            cursor.close()
        elif statement.columns:
            fetched = await driver.fetch(statement.sql, *arguments)
        else:
            await driver.execute(statement.sql, *arguments)
            fetched = ()
    except Exception as exc:
        raise _as_sqlalchemy(exc, statement.sql, arguments) from exc
    return [statement.row(row) for row in fetched]


async def plain(conn: AsyncConnection, sql: str) -> None:
    """A statement without parameters or rows (a savepoint's), through the driver where it can be reached."""
    driver = _driver(conn)
    if driver is None:
        await conn.exec_driver_sql(sql)
        return
    executed[sql.split(None, 1)[0].upper()] += 1
    try:
        if isinstance(driver, sqlite3.Connection):
            driver.execute(sql).close()
        else:
            await driver.execute(sql)
    except Exception as exc:
        raise _as_sqlalchemy(exc, sql, []) from exc


# conn.info key: this SQLite connection was opened usable from any thread (see `any_thread`).
_ANY_THREAD = "countersign_any_thread"


def any_thread(engine: AsyncEngine) -> None:
    """Say that `engine`'s SQLite connections are opened with `check_same_thread=False` (its connect arguments):
    only on those are statements run on the loop's thread. Any other SQLite connection goes through SQLAlchemy."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(_dbapi_connection: Any, record: Any) -> None:
        record.info[_ANY_THREAD] = True


def _driver(conn: AsyncConnection) -> Any:
    """The driver connection to run statements on directly, or None (then SQLAlchemy runs them)."""
    sync = conn.sync_connection
    if sync is None or not sync.in_transaction() or sync.closed or sync.invalidated:
        return None
    fairy = sync.connection
    driver = fairy.driver_connection
    if conn.dialect.name == "sqlite":
        if not fairy.info.get(_ANY_THREAD):
            return None
        plain = getattr(driver, "_conn", None)  # aiosqlite's sqlite3 connection
        # Only inside a transaction SQLAlchemy began (BEGIN IMMEDIATE: the write lock is held).
        return plain if isinstance(plain, sqlite3.Connection) and plain.in_transaction else None
    if conn.dialect.driver == "asyncpg" and driver is not None and driver.is_in_transaction():
        # SQLAlchemy's adapter begins the server's transaction with its first statement: only after that.
        return driver
    return None


def _as_sqlalchemy(exc: Exception, sql: str, arguments: list[Any]) -> Exception:
    name = type(exc).__name__
    if isinstance(exc, sqlite3.IntegrityError) or name.endswith("ViolationError"):
        return IntegrityError(sql, arguments, exc)
    return OperationalError(sql, arguments, exc)


# ---- the statements themselves


def compare_and_set(
    dialect: Dialect, table: Table, old: int, keys: Sequence[str], equal: Sequence[str] = ()
) -> Compiled:
    """UPDATE `table` SET keys (:v_KEY) WHERE id = :w_id AND status IN (:w_s0 … one per `old`) [AND each of
    `equal` = :e_NAME] RETURNING every column."""

    def build() -> Executable:
        c = table.c
        return (
            update(table)
            .where(
                c.id == bindparam("w_id"),
                c.status.in_([bindparam(f"w_s{i}", type_=c.status.type) for i in range(old)]),
                *(c[name] == bindparam(f"e_{name}", type_=c[name].type) for name in equal),
            )
            .values({key: bindparam(f"v_{key}", type_=c[key].type) for key in keys})
            .returning(*c)
        )

    return compiled(dialect, ("cas", table.name, old, tuple(keys), tuple(equal)), build)


@dataclass(frozen=True)
class _Many:
    """One compare-and-set for many rows (PostgreSQL): each row's id and values come in as arrays (`unnest`)."""

    sql: str
    # The arrays' element conversions, in parameter order: the id's, then each key's.
    arrays: tuple[_Convert, ...]
    # Conversions of the scalar parameters that follow the arrays: each old status, then each `equal` value.
    scalars: tuple[_Convert, ...]


_many: dict[Hashable, _Many] = {}


def _compare_and_set_many(dialect: Dialect, table: Table, old: int, keys: Sequence[str], equal: Sequence[str]) -> _Many:
    found = _many.get((table.name, old, tuple(keys), tuple(equal)))
    if found is not None:
        return found
    quote = dialect.identifier_preparer.quote
    c = table.c

    def kind(name: str) -> str:
        return str(c[name].type.compile(dialect=dialect))

    def bind(name: str) -> _Convert:
        return c[name].type.dialect_impl(dialect).bind_processor(dialect)

    columns = ["id", *keys]
    arrays = ", ".join(f"${i + 1}::{kind(name)}[]" for i, name in enumerate(columns))
    n = len(columns)
    olds = ", ".join(f"${n + i + 1}" for i in range(old))
    conditions = ["r.id = v.id", f"r.status IN ({olds})"]
    conditions += [f"r.{quote(name)} = ${n + old + i + 1}" for i, name in enumerate(equal)]
    sets = ", ".join(f"{quote(key)} = v.{quote(key)}" for key in keys)
    sql = (
        f"UPDATE {quote(table.name)} AS r SET {sets} "
        f"FROM unnest({arrays}) AS v({', '.join(quote(name) for name in columns)}) "
        # Every column by name, in the table's order (the database's own may differ): read as `compare_and_set`'s.
        f"WHERE {' AND '.join(conditions)} RETURNING {', '.join(f'r.{quote(column.name)}' for column in c)}"
    )
    found = _Many(sql, tuple(bind(name) for name in columns), tuple(bind(name) for name in ("status", *equal)))
    _many[(table.name, old, tuple(keys), tuple(equal))] = found
    return found


async def compare_and_set_many(
    conn: AsyncConnection,
    table: Table,
    moves: Sequence[tuple[str, Mapping[str, Any]]],
    old: Sequence[str],
    equal: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """`compare_and_set` for every (id, values) of `moves` (distinct ids, the same keys): the rows it moved, by id.

    On PostgreSQL one statement for them all (one round trip); elsewhere one per row, as `compare_and_set`."""
    if not moves:
        return {}
    keys = tuple(moves[0][1])
    single = compare_and_set(conn.dialect, table, len(old), keys, tuple(equal))
    driver = _driver(conn)
    if driver is None or isinstance(driver, sqlite3.Connection) or len(moves) == 1:
        given: dict[str, Any] = {f"w_s{i}": status for i, status in enumerate(old)}
        given.update({f"e_{name}": value for name, value in equal.items()})
        moved = {}
        for request_id, values in moves:
            found = await rows(conn, single, {"w_id": request_id, **given, **{f"v_{k}": v for k, v in values.items()}})
            if found:
                moved[request_id] = found[0]
        return moved
    many = _compare_and_set_many(conn.dialect, table, len(old), keys, tuple(equal))
    columns: list[list[Any]] = [[request_id for request_id, _ in moves]]
    columns += [[values[key] for _, values in moves] for key in keys]
    arguments: list[Any] = [
        [v if convert is None or v is None else convert(v) for v in column]
        for convert, column in zip(many.arrays, columns, strict=True)
    ]
    scalars = [*old, *equal.values()]
    converts = [many.scalars[0]] * len(old) + list(many.scalars[1:])
    arguments += [v if to is None or v is None else to(v) for to, v in zip(converts, scalars, strict=True)]
    executed["UPDATE"] += 1
    try:
        fetched = await driver.fetch(many.sql, *arguments)
    except Exception as exc:
        raise _as_sqlalchemy(exc, many.sql, arguments) from exc
    moved = {}
    for raw in fetched:
        row = single.row(raw)
        moved[row["id"]] = row
    return moved


# Inserts of up to this many rows are one multi-row statement (a decision's one or two audit events); larger
# ones (a burst of parked calls) one single-row statement run for every row, so that a burst of any size is
# one statement prepared once, not one compiled and prepared per row count.
_ONE_STATEMENT = 2


async def insert(
    conn: AsyncConnection, table: Table, new: Sequence[Mapping[str, Any]], *, deferrable: bool = False
) -> None:
    """INSERT `new` rows (each with the same keys) into `table` in `conn`'s open transaction.

    `deferrable`: an insert nothing in the block waits on (it cannot be refused but by a failing database); in a
    block that defers (`defer`) it is kept and sent with the others before the transaction commits (`flush`)."""
    if not new:
        return
    kept: list[tuple[Table, Mapping[str, Any]]] | None = conn.info.get(_KEPT)
    if deferrable and kept is not None:
        kept.extend((table, row) for row in new)
        return
    await _insert_now(conn, table, new)


async def _insert_now(conn: AsyncConnection, table: Table, new: Sequence[Mapping[str, Any]]) -> None:
    keys = tuple(new[0])
    if len(new) <= _ONE_STATEMENT:
        await rows(conn, _insert_rows(conn.dialect, table, len(new), keys), _row_values(new))
        return
    statement = _insert_rows(conn.dialect, table, 1, keys)
    driver = _driver(conn)
    if driver is None:
        await conn.execute(statement.statement, [_row_values([row]) for row in new])
        return
    arguments = [statement.arguments(_row_values([row])) for row in new]
    executed[statement.verb] += 1
    try:
        if isinstance(driver, sqlite3.Connection):
            driver.executemany(statement.sql, arguments).close()
        else:
            await driver.executemany(statement.sql, arguments)
    except Exception as exc:
        raise _as_sqlalchemy(exc, statement.sql, arguments) from exc


# ---- inserts kept until the group commits

# conn.info keys: the rows kept by blocks that defer their inserts, in order (table, row), while a block that defers
# runs (`defer`); and the rows kept so far by every block of the transaction, whether one is running or not.
_KEPT = "countersign_kept"
_PENDING = "countersign_pending"


def defer(conn: AsyncConnection, on: bool) -> None:
    """From here (`on`) or no longer, the block running in `conn` keeps its deferrable inserts (see `insert`)."""
    if on:
        conn.info[_KEPT] = conn.info.setdefault(_PENDING, [])
    else:
        conn.info.pop(_KEPT, None)


def kept(conn: AsyncConnection) -> int:
    """How many rows are kept, not yet sent: where a savepoint's block begins (`keep_only`)."""
    pending: list[Any] = conn.info.get(_PENDING, [])
    return len(pending)


def keep_only(conn: AsyncConnection, count: int) -> None:
    """Forget the rows kept after the first `count` (a block rolled back to its savepoint kept them)."""
    pending: list[Any] | None = conn.info.get(_PENDING)
    if pending is not None:
        del pending[count:]


def last_kept(conn: AsyncConnection, table: Table) -> Mapping[str, Any] | None:
    """The last row kept for `table`, or None."""
    for kept_table, row in reversed(conn.info.get(_PENDING, ())):
        if kept_table is table:
            return row  # type: ignore[no-any-return]
    return None


def discard(conn: AsyncConnection) -> None:
    """A transaction begins or has ended: nothing is kept from before it."""
    conn.info.pop(_PENDING, None)
    conn.info.pop(_KEPT, None)


async def flush(conn: AsyncConnection, *, touching: tuple[Table, str, Any] | None = None) -> None:
    """Send the kept rows: one statement for the rows of each table and shape.

    `touching` (table, column, value): only if a kept row of that table has that value, before a read that must
    see it; otherwise nothing is sent."""
    pending: list[tuple[Table, Mapping[str, Any]]] | None = conn.info.get(_PENDING)
    if not pending:
        return
    if touching is not None:
        table, column, value = touching
        if not any(kept_table is table and row.get(column) == value for kept_table, row in pending):
            return
    # Kept rows only ever go into tables nothing else kept refers to (audit events, decisions): one statement
    # per table and shape, each in the order its rows were kept.
    runs: dict[tuple[str, tuple[str, ...]], tuple[Table, list[Mapping[str, Any]]]] = {}
    for table, row in pending:
        runs.setdefault((table.name, tuple(row)), (table, []))[1].append(row)
    pending.clear()  # the same list as `_KEPT` while a block that defers runs
    for table, rows in runs.values():
        await _insert_now(conn, table, rows)


def _insert_rows(dialect: Dialect, table: Table, count: int, keys: Sequence[str]) -> Compiled:
    """One INSERT of `count` rows of `keys`; parameters `r{row}_{key}`."""

    def build() -> Executable:
        return insert_into(table).values(
            [{key: bindparam(f"r{i}_{key}", type_=table.c[key].type) for key in keys} for i in range(count)]
        )

    return compiled(dialect, ("insert", table.name, count, tuple(keys)), build)


def _row_values(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The parameters of `_insert_rows` for these rows."""
    return {f"r{i}_{key}": value for i, row in enumerate(rows) for key, value in row.items()}
