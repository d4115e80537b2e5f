"""Group commit of call events: bounded batches, in order, on one chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from approvals import audit
from approvals.audit import Event
from approvals.audit_batch import AuditBatches
from approvals.db import Database

KEY = b"audit-batch-test-key-0123456789abcdef"
START = datetime(2026, 1, 1, tzinfo=UTC)


async def test_no_transaction_holds_more_than_the_bound_and_every_event_keeps_its_time(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'cs.db'}", audit_key=KEY)
    try:
        await db.create_schema()
        batches = AuditBatches(db, max_batch=4)
        async with anyio.create_task_group() as tg:
            for n in range(30):
                event = Event(kind="call.allowed", outcome="allowed", message=f"call {n}")
                tg.start_soon(batches.append, event, START + timedelta(seconds=n))
        async with db.read() as conn:
            report = await audit.verify(conn, KEY)
            rows = [await audit.event_at(conn, seq) for seq in range(1, 31)]
    finally:
        await db.dispose()

    assert report.ok and report.checked == 30, report.describe()
    assert sum(size * n for size, n in batches.sizes.items()) == 30
    assert max(batches.sizes) <= 4
    assert sum(batches.sizes.values()) < 30  # they did share transactions
    # Each event is stored with the moment it was recorded, whichever transaction wrote it.
    assert sorted(audit.as_utc(row["at"]) for row in rows if row) == [START + timedelta(seconds=n) for n in range(30)]


def test_a_batch_bound_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_batch must be at least 1, not 0"):
        AuditBatches(Database(f"sqlite:///{tmp_path / 'cs.db'}"), max_batch=0)


async def test_batched_and_single_appends_make_one_chain_that_reads_back_as_written(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'cs.db'}", audit_key=KEY)
    try:
        await db.create_schema()
        batches = AuditBatches(db)
        detail = {"rule": "reads", "note": "ünïcode"}
        await batches.append(Event(kind="call.allowed", outcome="allowed", message="first", detail=detail), START)
        async with db.write() as conn:
            await audit.append(conn, Event(kind="request.created", outcome="pending", message="second"), START)
        await batches.append(Event(kind="call.denied", outcome="denied", message="third", tool="t"), START)
        async with db.read() as conn:
            report = await audit.verify(conn, KEY)
            first = await audit.event_at(conn, 1)
            third = await audit.event_at(conn, 3)
    finally:
        await db.dispose()

    assert report.ok and report.checked == 3, report.describe()
    assert first is not None and third is not None
    assert audit.as_utc(first["at"]) == START and first["keyed"] is True
    assert first["detail"] == audit.canonical_json(detail)
    assert (third["kind"], third["outcome"], third["tool"]) == ("call.denied", "denied", "t")


async def test_a_keyed_chain_is_not_extended_without_the_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cs.db'}"
    keyed = Database(url, audit_key=KEY)
    try:
        await keyed.create_schema()
        await AuditBatches(keyed).append(Event(kind="call.allowed", outcome="allowed", message="keyed"), START)
    finally:
        await keyed.dispose()
    unkeyed = Database(url)
    try:
        with pytest.raises(audit.ChainKeyMissing, match="nothing was written"):
            await AuditBatches(unkeyed).append(Event(kind="call.allowed", outcome="allowed", message="plain"), START)
        async with unkeyed.read() as conn:
            assert await audit.count(conn) == 1
    finally:
        await unkeyed.dispose()
