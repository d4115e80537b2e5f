"""The statements of the shared quotas (`gateway.shared_quotas`), one per step of a group of reservations.

A group's transaction is three statements whatever the number of its members, buckets and limits:

- the advisory locks of all its buckets in one statement (in the buckets' sorted order: a select list is
  evaluated left to right), run as the transaction's first statement;
- the stored slots every (limit, bucket) of its members can need, in one statement: a lateral read per
  window, each by the bucket's index, newest first;
- its slots inserted in one statement, the rows passed as arrays.

The lock and the read cannot be one statement: under read committed a statement sees the database as it was
when the statement began, so a read in the statement that waited for the lock would miss the slots the
previous holder committed meanwhile. The read is the next statement, whose snapshot is taken with the locks
held. Parks made together are likewise one update.

The read and the insert run through the driver itself (`approvals.driver_sql`): compiled once, prepared once
per connection, one round trip each, no greenlet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, Final

from sqlalchemy import Float, Integer, TextClause, text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals import driver_sql
from gateway.ratelimit import BucketKey

# The advisory locks of quota buckets: (this class, hash of the bucket), apart from every one-key lock.
LOCK_CLASS: Final = 0x0C5A


@cache
def _locks(count: int) -> TextClause:
    return text(
        "SELECT " + ", ".join(f"pg_advisory_xact_lock(CAST(:space AS integer), hashtext(:b{n}))" for n in range(count))
    )


async def lock(conn: AsyncConnection, buckets: Sequence[BucketKey]) -> None:
    """Take the transaction-scoped advisory locks of `buckets` (sorted: the order every group takes them in)."""
    values: dict[str, Any] = {"space": LOCK_CLASS}
    values.update({f"b{n}": "\x1f".join(key) for n, key in enumerate(buckets)})
    await conn.execute(_locks(len(buckets)), values)


def _window_read(dialect: Dialect) -> driver_sql.Compiled:
    def build() -> Any:
        return text(
            "SELECT v.n, s.taken_at FROM unnest(CAST(:counters AS text[]), CAST(:scopes AS text[]), "
            "CAST(:scope_keys AS text[]), CAST(:sinces AS float8[]), CAST(:skips AS integer[]), "
            "CAST(:takes AS integer[])) WITH ORDINALITY AS v(counter, scope, scope_key, since, skip, take, n) "
            "CROSS JOIN LATERAL (SELECT q.taken_at FROM quota_slot AS q WHERE q.counter = v.counter "
            "AND q.scope = v.scope AND q.scope_key = v.scope_key AND q.taken_at > v.since "
            "ORDER BY q.taken_at DESC LIMIT v.take OFFSET v.skip) AS s ORDER BY v.n, s.taken_at DESC"
        ).columns(n=Integer, taken_at=Float)

    return driver_sql.compiled(dialect, ("quota", "window"), build)


async def read_windows(conn: AsyncConnection, reads: Sequence[tuple[BucketKey, float, int, int]]) -> list[list[float]]:
    """For each (bucket, since, skip, take): the `taken_at` of the bucket's slots taken after `since`, newest
    first, from the `skip`-th, at most `take` of them."""
    values = {
        "counters": [key[0] for key, *_ in reads],
        "scopes": [key[1] for key, *_ in reads],
        "scope_keys": [key[2] for key, *_ in reads],
        "sinces": [since for _, since, _, _ in reads],
        "skips": [skip for _, _, skip, _ in reads],
        "takes": [take for _, _, _, take in reads],
    }
    found: list[list[float]] = [[] for _ in reads]
    for row in await driver_sql.rows(conn, _window_read(conn.dialect), values):
        found[int(row["n"]) - 1].append(float(row["taken_at"]))
    return found


def _insert(dialect: Dialect) -> driver_sql.Compiled:
    def build() -> Any:
        return text(
            "INSERT INTO quota_slot (counter, scope, scope_key, taken_at, window_seconds, reservation) "
            "SELECT * FROM unnest(CAST(:counters AS text[]), CAST(:scopes AS text[]), CAST(:scope_keys AS text[]), "
            "CAST(:taken_at AS float8[]), CAST(:windows AS float8[]), CAST(:reservations AS text[]))"
        )

    return driver_sql.compiled(dialect, ("quota", "insert"), build)


async def insert(conn: AsyncConnection, slots: Sequence[Mapping[str, Any]]) -> None:
    """Insert `slots` (counter, scope, scope_key, taken_at, window_seconds, reservation) in one statement."""
    if not slots:
        return
    values = {
        "counters": [s["counter"] for s in slots],
        "scopes": [s["scope"] for s in slots],
        "scope_keys": [s["scope_key"] for s in slots],
        "taken_at": [s["taken_at"] for s in slots],
        "windows": [s["window_seconds"] for s in slots],
        "reservations": [s["reservation"] for s in slots],
    }
    await driver_sql.rows(conn, _insert(conn.dialect), values)


PARK: Final = text(
    "UPDATE quota_slot AS q SET request_id = v.request_id FROM unnest(CAST(:reservations AS text[]), "
    "CAST(:requests AS text[])) AS v(reservation, request_id) WHERE q.reservation = v.reservation"
)


async def park(conn: AsyncConnection, parks: Sequence[tuple[str, str]]) -> None:
    """Leave each reservation's slots with its request: (reservation, request id) pairs, one statement."""
    values = {"reservations": [r for r, _ in parks], "requests": [q for _, q in parks]}
    await conn.execute(PARK, values)
