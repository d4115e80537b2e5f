"""Committed audit appends made durable by shared flushes: each caller waits for a flush begun after it came."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from approvals import audit
from approvals.audit import Event
from approvals.audit_sync import GroupSync
from approvals.db import Database
from approvals.errors import StoreUnavailable

KEY = b"audit-sync-test-key-0123456789abcdef"


class Flushes:
    """A flush the test lets end, one at a time."""

    def __init__(self) -> None:
        self.started = 0
        self.release = anyio.Event()
        self.fail: Exception | None = None

    async def __call__(self) -> None:
        self.started += 1
        await self.release.wait()
        self.release = anyio.Event()
        if self.fail is not None:
            raise self.fail


async def test_callers_during_a_flush_wait_for_the_next_one_and_share_it() -> None:
    flushes = Flushes()
    sync = GroupSync(flushes)
    done: list[str] = []

    async def wait(name: str) -> None:
        await sync()
        done.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "first")
        await anyio.wait_all_tasks_blocked()
        assert flushes.started == 1
        tg.start_soon(wait, "second")
        tg.start_soon(wait, "third")
        await anyio.wait_all_tasks_blocked()
        assert flushes.started == 1  # they came after the running flush began: it may not cover them
        flushes.release.set()
        await anyio.wait_all_tasks_blocked()
        assert done == ["first"]
        assert flushes.started == 2  # one flush for both that waited
        flushes.release.set()
    assert sorted(done) == ["first", "second", "third"]
    assert sync.flushes == 2


async def test_a_failed_flush_fails_the_callers_it_covered_only() -> None:
    flushes = Flushes()
    sync = GroupSync(flushes)
    outcomes: dict[str, str] = {}

    async def wait(name: str) -> None:
        try:
            await sync()
            outcomes[name] = "ok"
        except StoreUnavailable:
            outcomes[name] = "failed"

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "covered")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(wait, "next")
        await anyio.wait_all_tasks_blocked()
        flushes.fail = StoreUnavailable("disk gone")
        flushes.release.set()
        await anyio.wait_all_tasks_blocked()
        flushes.fail = None
        flushes.release.set()
    assert outcomes == {"covered": "failed", "next": "ok"}


@pytest.mark.parametrize("sync", [True, False])
async def test_an_append_left_unflushed_is_committed_and_then_flushed(tmp_path: Path, sync: bool) -> None:
    path = tmp_path / "cs.db"
    db = Database(f"sqlite:///{path}", audit_key=KEY)
    try:
        await db.create_schema()
        assert db.defers_sync
        event = Event(kind="call.allowed", outcome="allowed", message="forwarded", tool="t")
        [seq] = await db.append_events([(event, datetime.now(UTC))], sync=sync)
        # Committed either way: another connection reads it at once.
        with sqlite3.connect(path) as other:
            assert other.execute("SELECT message FROM audit_event WHERE seq = ?", (seq,)).fetchone() == ("forwarded",)
        await db.sync_audit()
        async with db.read() as conn:
            report = await audit.verify(conn, KEY)
    finally:
        await db.dispose()
    assert report.ok and report.checked == 1, report.describe()
