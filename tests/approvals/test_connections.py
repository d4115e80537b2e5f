"""PostgreSQL connections: a pooled connection the server dropped costs an idle caller nothing, a busy one one error."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest

from approvals import db as db_module
from approvals import notify
from approvals.db import Database
from approvals.errors import StoreUnavailable

pytestmark = pytest.mark.postgres


async def _drop_connections(db: Database) -> int:
    """What a restarted server does to a replica: every connection it had is gone."""
    admin = await asyncpg.connect(notify.listen_dsn(db.url))
    try:
        return int(
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await admin.close()


async def _warm(db: Database, readers: int) -> None:
    """Leave `readers` connections in the pool."""
    async with anyio.create_task_group() as tg:
        for _ in range(readers):
            tg.start_soon(_hold_a_read, db)


async def _hold_a_read(db: Database) -> None:
    async with db.read() as conn:
        await conn.exec_driver_sql("SELECT pg_sleep(0.05)")


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[Database]:
    db = Database(postgres_url)
    await db.create_schema()
    try:
        yield db
    finally:
        await db.dispose()


async def test_connections_dropped_while_idle_are_replaced_before_anyone_uses_them(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _warm(database, 3)
    assert await _drop_connections(database) >= 3
    monkeypatch.setattr(db_module, "_PING_IDLE_AFTER", 0.0)  # every pooled connection counts as idle
    for _ in range(4):
        await database.ping()
    async with database.read(brief=True) as conn:
        assert (await conn.exec_driver_sql("SELECT 1")).scalar_one() == 1


async def test_a_connection_in_use_that_was_dropped_fails_closed_once_and_the_pool_recovers(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _warm(database, 3)
    monkeypatch.setattr(db_module, "_PING_IDLE_AFTER", 3600.0)  # nothing counts as idle: no check on checkout
    assert await _drop_connections(database) >= 3
    with pytest.raises(StoreUnavailable):
        await database.ping()
    # That error replaced every connection the pool held from before it: none of them fails again.
    for _ in range(4):
        await database.ping()
    await database.probe_write()
