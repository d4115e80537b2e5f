"""The change feed on PostgreSQL: a change committed anywhere wakes every process at once, and none is lost.

Two services on one database, each with its own engine (as two replicas have). The feed under
test polls only every minute, so anything it hears sooner it heard through LISTEN/NOTIFY.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import asyncpg  # type: ignore[import-untyped]

from approvals import notify
from approvals.approvers import Approver, ApproverDirectory
from approvals.db import Database
from approvals.feed import Change, ChangeFeed
from approvals.service import ApprovalService
from tests.factories import held_cancel
from tests.harness import wait_for

ALICE = Approver("alice", groups=("traders",))
DIRECTORY = ApproverDirectory([ALICE])


class Heard:
    def __init__(self) -> None:
        self.changes: list[tuple[float, Change]] = []

    async def request_changed(self, change: Change) -> None:
        self.changes.append((time.monotonic(), change))

    def kinds(self, request_id: str) -> list[str]:
        return [c.kind for _, c in self.changes if c.request_id == request_id]


@asynccontextmanager
async def listening_feed(url: str) -> AsyncIterator[tuple[ChangeFeed, Heard]]:
    """A feed that polls once a minute, running, with its notification connection up."""
    db = Database(url)
    await db.create_schema()
    feed = ChangeFeed(db, poll_interval=60.0)
    heard = Heard()
    feed.subscribe(heard)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed.run)
            assert feed.notifications is not None
            listener = feed.notifications
            await wait_for(lambda: listener.connections >= 1)
            yield feed, heard
            tg.cancel_scope.cancel()
    finally:
        await db.dispose()


@asynccontextmanager
async def other_replica(url: str) -> AsyncIterator[ApprovalService]:
    db = Database(url)
    try:
        yield ApprovalService(db, DIRECTORY)
    finally:
        await db.dispose()


async def test_a_change_committed_by_another_replica_reaches_the_feed_without_waiting_for_a_poll(
    postgres_url: str,
) -> None:
    async with listening_feed(postgres_url) as (_, heard), other_replica(postgres_url) as other:
        latencies = []
        for n in range(20):
            started = time.monotonic()
            # A different order each time: one call has one open request at a time.
            request_id = (await other.create(held_cancel(arguments={"orderId": 2000 + n}))).id
            await wait_for(lambda rid=request_id: heard.kinds(rid) == ["request.created"], within=5)
            latencies.append(heard.changes[-1][0] - started)
            await other.approve(request_id, ALICE, "api")
            await wait_for(lambda rid=request_id: heard.kinds(rid) == ["request.created", "request.approved"], within=5)
        # A minute's poll could not have delivered any of them; a notification takes milliseconds.
        assert max(latencies) < 1.0, latencies


async def test_a_call_audited_without_a_request_change_wakes_nobody(postgres_url: str) -> None:
    from approvals.audit import Event

    async with listening_feed(postgres_url) as (feed, _), other_replica(postgres_url) as other:
        conn = await asyncpg.connect(notify.listen_dsn(feed.db.url))
        received: list[str] = []
        try:
            await conn.add_listener(notify.CHANNEL, lambda *args: received.append(args[2]))
            await other.record(Event(kind="call.allowed", outcome="allowed", message="passed through"))
            request = await other.create(held_cancel())
            await wait_for(lambda: len(received) >= 1)
            await anyio.sleep(0.2)
            assert len(received) == 1, "only the request's creation is a change worth waking the replicas for"
            assert (await feed.db.schema_state()).at_head and request.id
        finally:
            await conn.close()


async def test_the_feed_listens_again_after_its_connection_is_killed_and_misses_nothing(postgres_url: str) -> None:
    async with listening_feed(postgres_url) as (feed, heard), other_replica(postgres_url) as other:
        assert feed.notifications is not None
        admin = await asyncpg.connect(notify.listen_dsn(feed.db.url))
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1 AND datname = current_database()",
                notify.APPLICATION_NAME,
            )
            assert killed == 1
            # Committed while nobody listens: its notification goes nowhere.
            request = await other.create(held_cancel())
        finally:
            await admin.close()
        listener = feed.notifications
        await wait_for(lambda: listener.connections >= 2, within=10)
        # The reconnection itself makes the feed catch up from its cursor, long before its minute's poll.
        await wait_for(lambda: heard.kinds(request.id) == ["request.created"], within=5)
        later = await other.create(held_cancel(arguments={"orderId": 1002}))
        await wait_for(lambda: heard.kinds(later.id) == ["request.created"], within=2)
