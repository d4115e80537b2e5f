"""The hash-chained audit log: appending inside a write transaction, and verifying the chain.

Each event's hash covers its contents and the previous event's hash. Events are keyed: the hash
is an HMAC-SHA256 under the audit key, so someone who can write to the database but does not
hold the key can neither edit an event nor rehash the chain after it. Events written before the
chain was keyed (an older version) keep their plain SHA-256 and verify as they always did.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals import driver_sql
from approvals.errors import ApprovalError
from approvals.models import AuditEvent

GENESIS = "0" * 64
# Where `Database.write()` puts the audit key on the connection, so every append is keyed by whoever
# writes: no writer can forget the key, and one without it cannot extend a keyed chain.
CHAIN_KEY = "countersign.audit_key"
_table = AuditEvent.__table__  # type: ignore[attr-defined]


class ChainKeyMissing(ApprovalError):
    """The chain is keyed and there is no key to check or extend it with."""


def canonical_json(value: Any) -> str:
    """The one serialisation used for hashing and for comparing approved arguments."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands datetimes back without a zone; everything we store is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True, kw_only=True)
class Event:
    """What happened, before it is numbered and chained."""

    kind: str
    outcome: str
    message: str
    agent: str | None = None
    tool: str | None = None
    upstream: str | None = None
    request_id: str | None = None
    actor: str | None = None
    channel: str | None = None
    arguments: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


def _material(row: Mapping[Any, Any]) -> bytes:
    material = {
        "seq": row["seq"],
        "at": as_utc(row["at"]).isoformat(timespec="microseconds"),
        "kind": row["kind"],
        "outcome": row["outcome"],
        "agent": row["agent"],
        "tool": row["tool"],
        "upstream": row["upstream"],
        "request_id": row["request_id"],
        "actor": row["actor"],
        "channel": row["channel"],
        "message": row["message"],
        "arguments": row["arguments"],
        "detail": row["detail"],
        "prev_hash": row["prev_hash"],
    }
    if row.get("keyed"):
        # Part of what the MAC covers, so a keyed row cannot be passed off as an unkeyed one.
        material["keyed"] = True
    return canonical_json(material).encode()


def row_digest(row: Mapping[Any, Any], key: bytes | None) -> str:
    """The hash a row must carry: HMAC-SHA256 under `key` for a keyed row, plain SHA-256 for one made before."""
    if row.get("keyed"):
        if key is None:
            raise ChainKeyMissing("this audit event is keyed and no audit key was given")
        return hmac.new(key, _material(row), hashlib.sha256).hexdigest()
    return hashlib.sha256(_material(row)).hexdigest()


def authentic(row: Mapping[Any, Any], key: bytes | None) -> bool:
    """Whether the row's contents match its own hash (its place in the chain is `verify`'s business)."""
    try:
        return hmac.compare_digest(row_digest(row, key), row["hash"])
    except ChainKeyMissing:
        return False


async def append(conn: AsyncConnection, event: Event, at: datetime) -> int:
    """Append one event. Must run inside `Database.write()`, which serialises appends and supplies the key."""
    return (await append_many(conn, [(event, at)]))[-1]


async def append_many(conn: AsyncConnection, events: Sequence[tuple[Event, datetime]]) -> list[int]:
    """Append events in order after one read of the head: one insert, one place in the chain each.

    The head this transaction appended last is remembered on the connection (see `forget_head`), so
    the next append in the same transaction (the next block of a write group) skips the read.
    """
    key: bytes | None = conn.info.get(CHAIN_KEY)
    head: tuple[int, str, bool] | None = conn.info.get(_HEAD)
    if head is None:
        # Compiled once and run through the driver (approvals.driver_sql), as the insert below.
        found = await driver_sql.rows(conn, driver_sql.compiled(conn.dialect, "audit head", _head_query), {})
        head = None if not found else (found[0]["seq"], found[0]["hash"], bool(found[0]["keyed"]))
    rows = chain_rows(head, events, key)
    if rows:
        conn.info.pop(_HEAD, None)  # until the insert has succeeded, the head is not known here
        # Kept until the group's commit when the block defers its inserts (approvals.driver_sql): the head is known.
        await driver_sql.insert(conn, _table, rows, deferrable=True)
        conn.info[_HEAD] = (rows[-1]["seq"], rows[-1]["hash"], key is not None)
        noted: list[tuple[int, str, str | None]] | None = conn.info.get(APPENDED)
        if noted is not None:
            noted.extend((row["seq"], row["kind"], row["request_id"]) for row in rows)
    return [row["seq"] for row in rows]


def _head_query() -> Select[Any]:
    return select(_table.c.seq, _table.c.hash, _table.c.keyed).order_by(_table.c.seq.desc()).limit(1)


def forget_head(conn: AsyncConnection) -> None:
    """The chain's head remembered on `conn` may be wrong from here on: a transaction begins, or a savepoint
    holding appends was rolled back. The next append reads it from the table again, or, while appends of this
    transaction are kept unsent (`driver_sql.insert`, `deferrable`), takes the last of them, which the table
    does not hold yet."""
    last = driver_sql.last_kept(conn, _table)
    if last is None:
        conn.info.pop(_HEAD, None)
    else:
        conn.info[_HEAD] = (last["seq"], last["hash"], bool(last["keyed"]))


# conn.info key: (seq, hash, keyed) of the last row this transaction appended; valid only inside it.
_HEAD = "countersign_chain_head"
# conn.info key: where a write block that wants to know what it appended (seq, kind, request id) has it noted.
APPENDED = "countersign_appended"


def chain_rows(
    last: tuple[int, str, bool] | None, events: Sequence[tuple[Event, datetime]], key: bytes | None
) -> list[dict[str, Any]]:
    """The rows that put `events` after the head `last` (seq, hash, keyed; None: an empty chain), hashed."""
    if last is not None and last[2] and key is None:
        # An unkeyed row after keyed ones would read as a forgery; refuse rather than break the chain.
        raise ChainKeyMissing("the audit chain is keyed and this process has no audit key: nothing was written")
    seq, prev_hash = (0, GENESIS) if last is None else (last[0], last[1])
    rows: list[dict[str, Any]] = []
    for event, at in events:
        seq += 1
        row = _row(event, at, seq, prev_hash, keyed=key is not None)
        row["hash"] = prev_hash = row_digest(row, key)
        rows.append(row)
    return rows


def _row(event: Event, at: datetime, seq: int, prev_hash: str, *, keyed: bool) -> dict[str, Any]:
    return {
        "seq": seq,
        "at": as_utc(at),
        "kind": event.kind,
        "outcome": event.outcome,
        "agent": event.agent,
        "tool": event.tool,
        "upstream": event.upstream,
        "request_id": event.request_id,
        "actor": event.actor,
        "channel": event.channel,
        "message": event.message,
        "arguments": event.arguments,
        "detail": canonical_json(dict(event.detail)),
        "prev_hash": prev_hash,
        "keyed": keyed,
    }


@dataclass(frozen=True)
class Head:
    """The newest event of a chain: what to keep outside the database to detect a truncation or a rollback."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"#{self.seq} {self.hash}"

    @classmethod
    def parse(cls, text: str) -> tuple[int | None, str]:
        """`HASH`, `SEQ:HASH` or `#SEQ HASH` (as `verify` prints it): the sequence number (None: any) and hash."""
        cleaned = text.strip().lstrip("#").replace(" ", ":")
        seq_text, _, digest = cleaned.rpartition(":")
        digest = digest.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"expected a head hash of 64 hexadecimal digits (optionally SEQ:HASH), not {text!r}")
        if seq_text and not seq_text.isdigit():
            raise ValueError(f"expected the head as SEQ:HASH with a whole number SEQ, not {text!r}")
        return (int(seq_text) if seq_text else None), digest


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    first_broken_seq: int | None = None
    problem: str | None = None
    head_hash: str | None = None
    head_seq: int | None = None
    # The first keyed event (None: none is); events before it are checked by their plain SHA-256 only.
    keyed_from: int | None = None
    # The chain holds keyed events and no key was given: nothing after them could be checked.
    key_missing: bool = False
    # The chain holds, but the request or decision tables disagree with it (`approvals.evidence`).
    tables: bool = False

    def describe(self) -> str:
        if self.tables:
            return f"audit log BROKEN: {self.problem} (the chain's {self.checked} events verify; the tables do not)"
        if not self.ok:
            where = f" at event #{self.first_broken_seq}" if self.first_broken_seq is not None else ""
            return f"audit chain BROKEN{where}: {self.problem} ({self.checked} verified before it)"
        if self.head_seq is None:
            return "audit chain intact: 0 events"
        text = f"audit chain intact: {self.checked} events verified, head #{self.head_seq} {self.head_hash}"
        if self.keyed_from is None:
            return text + "; no event is keyed (checked by plain SHA-256 only)"
        if self.keyed_from > 1:
            return text + f"; events #1-#{self.keyed_from - 1} predate the audit key (checked by plain SHA-256)"
        return text


def broken(checked: int, seq: int | None, problem: str, **extra: Any) -> ChainReport:
    return ChainReport(False, checked, seq, problem, **extra)


async def _rows(conn: AsyncConnection, batch: int = 2000) -> AsyncIterator[Mapping[Any, Any]]:
    after = 0
    while True:
        result = await conn.execute(select(_table).where(_table.c.seq > after).order_by(_table.c.seq).limit(batch))
        rows = result.mappings().all()
        if not rows:
            return
        for row in rows:
            yield row
        after = rows[-1]["seq"]


async def verify(
    conn: AsyncConnection,
    key: bytes | None,
    *,
    expect: tuple[int | None, str] | None = None,
    each: Callable[[Mapping[Any, Any]], None] | None = None,
) -> ChainReport:
    """Walk the chain from the first event and report the first link that does not hold.

    With `key`, every event from the first keyed one on must carry a valid MAC, and a chain with
    events but none keyed is broken (rewritten without the key, or never written by a gateway
    holding it). `expect` is a head seen earlier, (seq or None, hash): it must still be in the
    chain, or events were removed from its end. `each` sees every row that verified.
    """
    expected_prev = GENESIS
    expected_seq = 1
    checked = 0
    keyed_from: int | None = None
    found_expected = expect is None
    async for row in _rows(conn):
        seq = row["seq"]
        if seq != expected_seq:
            return broken(checked, expected_seq, f"event #{expected_seq} is missing (next present is #{seq})")
        if row["prev_hash"] != expected_prev:
            return broken(checked, seq, "its prev_hash does not match the hash of the event before it")
        if row["keyed"]:
            if key is None:
                problem = "it is keyed (HMAC) and no audit key was given; give the key to check the rest"
                return broken(checked, seq, problem, key_missing=True)
            keyed_from = keyed_from or seq
        elif keyed_from is not None:
            return broken(checked, seq, f"it is not keyed, but the chain is keyed from event #{keyed_from}")
        if not authentic(row, key):
            what = (
                "its contents do not match its MAC (the row was altered, or the audit key is not the one it was "
                "written with)"
                if row["keyed"]
                else "its contents do not match its hash (the row was altered)"
            )
            return broken(checked, seq, what)
        if expect is not None and row["hash"] == expect[1] and expect[0] in (None, seq):
            found_expected = True
        if each is not None:
            each(row)
        expected_prev = row["hash"]
        expected_seq += 1
        checked += 1
    head = None if checked == 0 else Head(expected_seq - 1, expected_prev)
    if key is not None and head is not None and keyed_from is None:
        problem = (
            "no event is keyed with the audit key: the log was rewritten without the key, or never written with it"
        )
        return broken(checked, None, problem)
    if not found_expected:
        assert expect is not None
        where = f"#{expect[0]} " if expect[0] is not None else ""
        ends = f"#{head.seq}" if head else "nothing (it is empty)"
        problem = (
            f"the expected head {where}{expect[1]} is not in the chain, which ends at {ends}: "
            "events were removed from its end, or it was rewritten"
        )
        return broken(checked, None, problem)
    return ChainReport(
        True,
        checked,
        head_hash=None if head is None else head.hash,
        head_seq=None if head is None else head.seq,
        keyed_from=keyed_from,
    )


async def head(conn: AsyncConnection) -> Head | None:
    row = (await conn.execute(select(_table.c.seq, _table.c.hash).order_by(_table.c.seq.desc()).limit(1))).first()
    return None if row is None else Head(row.seq, row.hash)


async def event_at(conn: AsyncConnection, seq: int) -> Mapping[Any, Any] | None:
    return (await conn.execute(select(_table).where(_table.c.seq == seq))).mappings().first()


async def exists(conn: AsyncConnection) -> bool:
    """Whether this database holds an audit log at all (a gateway has started against it)."""
    return bool(await conn.run_sync(lambda sync: inspect(sync).has_table(_table.name)))


async def count(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(_table))).scalar_one())
