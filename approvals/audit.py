"""The hash-chained audit log: appending inside a write transaction, and verifying the chain."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.models import AuditEvent

GENESIS = "0" * 64
_table = AuditEvent.__table__  # type: ignore[attr-defined]


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


def _row_digest(row: Mapping[Any, Any]) -> str:
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
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()


async def append(conn: AsyncConnection, event: Event, at: datetime) -> int:
    """Append one event. Must run inside `Database.write()`, which serialises appends."""
    last = (await conn.execute(select(_table.c.seq, _table.c.hash).order_by(_table.c.seq.desc()).limit(1))).first()
    seq = 1 if last is None else last.seq + 1
    row: dict[str, Any] = {
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
        "prev_hash": GENESIS if last is None else last.hash,
    }
    row["hash"] = _row_digest(row)
    await conn.execute(insert(_table).values(**row))
    return seq


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    first_broken_seq: int | None = None
    problem: str | None = None
    head_hash: str | None = None

    def describe(self) -> str:
        if self.ok:
            head = f", head {self.head_hash}" if self.head_hash else ""
            return f"audit chain intact: {self.checked} events verified{head}"
        return (
            f"audit chain BROKEN at event #{self.first_broken_seq}: {self.problem} ({self.checked} verified before it)"
        )


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


async def verify(conn: AsyncConnection) -> ChainReport:
    """Walk the chain from the first event and report the first link that does not hold."""
    expected_prev = GENESIS
    expected_seq = 1
    checked = 0
    async for row in _rows(conn):
        if row["seq"] != expected_seq:
            return ChainReport(
                False,
                checked,
                expected_seq,
                f"event #{expected_seq} is missing (next present is #{row['seq']})",
            )
        if row["prev_hash"] != expected_prev:
            return ChainReport(
                False, checked, row["seq"], "its prev_hash does not match the hash of the event before it"
            )
        if _row_digest(row) != row["hash"]:
            return ChainReport(False, checked, row["seq"], "its contents do not match its hash (the row was altered)")
        expected_prev = row["hash"]
        expected_seq += 1
        checked += 1
    return ChainReport(True, checked, head_hash=None if checked == 0 else expected_prev)


async def exists(conn: AsyncConnection) -> bool:
    """Whether this database holds an audit log at all (a gateway has started against it)."""
    return bool(await conn.run_sync(lambda sync: inspect(sync).has_table(_table.name)))


async def count(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(_table))).scalar_one())
