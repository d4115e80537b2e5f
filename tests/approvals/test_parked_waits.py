"""A held call waits on the request its process parked without reading it first, and still misses no change.

The process that parks a request knows it as committed, and its change feed keeps its state as the
latest change delivered left it: every change since (made here or by another replica) is still to
be delivered, so a waiter that finds the state it expects waits without a read and is woken by
that change. Two services on one database stand for two replicas; the feed under test is driven
by hand (`deliver`), so the order of park, decision and delivery is the test's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from approvals.approvers import Approver, ApproverDirectory
from approvals.db import Database
from approvals.service import ApprovalService
from approvals.states import Status
from approvals.views import RequestView
from tests.factories import held_cancel

ALICE = Approver("alice", groups=("traders",))
DIRECTORY = ApproverDirectory([ALICE])
# Far longer than the test may take: a wait that was not woken fails the test by `fail_after` instead.
FOREVER = 3600.0


@asynccontextmanager
async def replicas(url: str) -> AsyncIterator[tuple[ApprovalService, ApprovalService]]:
    here, there = Database(url), Database(url)
    await here.create_schema()
    try:
        ours = ApprovalService(here, DIRECTORY)
        await ours.feed.start()
        yield ours, ApprovalService(there, DIRECTORY)
    finally:
        await here.dispose()
        await there.dispose()


async def wait_decided(service: ApprovalService, request_id: str, got: list[RequestView]) -> None:
    got.append(await service.wait_for_change(request_id, Status.PENDING, within=FOREVER))


async def test_a_decision_made_elsewhere_before_the_first_wait_still_wakes_it(database_url: str) -> None:
    async with replicas(database_url) as (ours, theirs):
        parked = await ours.create(held_cancel())
        await theirs.approve(parked.id, ALICE, "api")  # decided before the agent's wait began, not yet delivered
        got: list[RequestView] = []
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_decided, ours, parked.id, got)
                await anyio.wait_all_tasks_blocked()
                assert got == []  # it starts from the request as parked: pending, so it waits
                while not got:
                    await ours.feed.deliver()
                    await anyio.sleep(0.01)
    assert [view.status for view in got] == [Status.APPROVED]


async def test_a_decision_made_elsewhere_after_the_creation_was_delivered_wakes_the_wait(database_url: str) -> None:
    async with replicas(database_url) as (ours, theirs):
        parked = await ours.create(held_cancel())
        while await ours.feed.deliver():
            pass  # the creation delivered: the feed knows the request as pending
        await theirs.approve(parked.id, ALICE, "api")
        got: list[RequestView] = []
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_decided, ours, parked.id, got)
                await anyio.wait_all_tasks_blocked()
                assert got == []
                while not got:
                    await ours.feed.deliver()
                    await anyio.sleep(0.01)
    assert [view.status for view in got] == [Status.APPROVED]


async def test_once_the_feed_has_delivered_the_decision_the_wait_reads_the_request(database_url: str) -> None:
    async with replicas(database_url) as (ours, theirs):
        parked = await ours.create(held_cancel())
        await theirs.approve(parked.id, ALICE, "api")
        while await ours.feed.deliver():
            pass  # the creation and the decision delivered before anyone waits: nobody would wake the wait
        got: list[RequestView] = []
        with anyio.fail_after(30):
            await wait_decided(ours, parked.id, got)
    assert [view.status for view in got] == [Status.APPROVED]
