"""Group commit of request transitions: decisions made together share transactions, and each still stands alone."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import TaskGroup
from sqlalchemy import select, update

from approvals import audit
from approvals.audit import Event
from approvals.db import Database
from approvals.errors import AlreadyDecided, StoreUnavailable
from approvals.models import ApprovalRequest, AuditEvent
from approvals.states import Status
from approvals.write_groups import WriteGroups
from tests.approvals.test_races import APPROVERS, START, replicas
from tests.factories import held_cancel

_events = AuditEvent.__table__  # type: ignore[attr-defined]
_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]


async def test_decisions_made_together_share_transactions_and_a_decided_one_fails_alone(database_url: str) -> None:
    async with replicas(database_url, 1, lambda: START) as (service,):
        requests = [await service.create(held_cancel(arguments={"orderId": n, "confirm": True})) for n in range(12)]
        taken = requests[0]
        await service.reject(taken.id, APPROVERS[9], "api", "no")
        approved: list[str] = []
        late: list[AlreadyDecided] = []

        async def approve(request_id: str) -> None:
            try:
                outcome = await service.approve(request_id, APPROVERS[0], "api")
            except AlreadyDecided as exc:
                late.append(exc)
            else:
                assert outcome.decided
                # Returned only after its transaction committed: another connection reads it already.
                assert (await service.get(request_id)).status == Status.APPROVED
                approved.append(request_id)

        service.db.groups.sizes.clear()
        async with anyio.create_task_group() as tg:
            for request in requests:
                tg.start_soon(approve, request.id)

        assert sorted(approved) == sorted(r.id for r in requests[1:])
        assert [exc.status for exc in late] == ["rejected"]
        assert (await service.get(taken.id)).status == Status.REJECTED
        # Eleven decisions written (the decided request's compare-and-set found it decided and changed nothing), in
        # fewer blocks (approvals.decision_batches) and fewer transactions.
        assert sum(size * n for size, n in service.db.groups.sizes.items()) < 12
        assert sum(service.db.groups.sizes.values()) < 12
        report = await service.history.verify()
        assert report.ok, report.describe()


async def test_blocks_that_fail_after_appending_leave_the_audit_chain_whole(database_url: str) -> None:
    """A group remembers the chain's head between its blocks; a block rolled back must not leave a gap or a fork."""
    async with replicas(database_url, 1, lambda: START) as (service,):
        db = service.db
        kept: list[str] = []

        class Refused(Exception):
            pass

        async def block(n: int) -> None:
            try:
                async with db.groups.write() as conn:
                    event = Event(kind="test.grouped", outcome="ok", message=f"block {n}")
                    await audit.append(conn, event, START)
                    await audit.append(conn, replace(event, message=f"block {n}, second"), START)
                    if n % 3 == 0:  # the first block (the group's leader) among them
                        raise Refused(n)
            except Refused:
                return
            kept.append(f"block {n}")

        assert await _twelve_blocks_grouped(db, block) == sorted([*kept, *(f"{k}, second" for k in kept)])
        assert len(kept) == 8
        # A later write outside any group continues the same chain.
        await service.record(Event(kind="call.allowed", outcome="allowed", message="after the groups"))
        report = await service.history.verify()
        assert report.ok, report.describe()


async def test_a_first_block_that_fails_is_rolled_back_whole_and_the_writers_queued_behind_it_commit(
    database_url: str,
) -> None:
    """The group's first block runs without a savepoint: its failure ends its transaction, not the others' writes."""
    async with replicas(database_url, 1, lambda: START) as (service,):
        db = service.db
        request = await service.create(held_cancel())
        outcomes: list[str] = []

        class Refused(Exception):
            pass

        async def follower(n: int) -> None:
            async with db.groups.write() as conn:
                await audit.append(conn, Event(kind="test.grouped", outcome="ok", message=f"follower {n}"), START)
            outcomes.append(f"follower {n}")

        async def leader(tg: TaskGroup) -> None:
            try:
                async with db.groups.write() as conn:
                    # A change to a request and an append, then the failure: none of it may stay.
                    await conn.execute(update(_requests).where(_requests.c.id == request.id).values(agent="mallory"))
                    await audit.append(conn, Event(kind="test.grouped", outcome="ok", message="leader"), START)
                    for n in range(3):
                        tg.start_soon(follower, n)
                    while db.groups.queued < 3:
                        await anyio.lowlevel.checkpoint()
                    raise Refused()
            except Refused:
                outcomes.append("leader refused")

        async with anyio.create_task_group() as tg:
            tg.start_soon(leader, tg)

        assert sorted(outcomes) == ["follower 0", "follower 1", "follower 2", "leader refused"]
        assert (await service.get(request.id)).agent == request.agent
        async with db.read() as conn:
            rows = (await conn.execute(select(_events.c.message).where(_events.c.kind == "test.grouped"))).all()
        assert sorted(r.message for r in rows) == ["follower 0", "follower 1", "follower 2"]
        report = await service.history.verify()
        assert report.ok, report.describe()


async def test_a_block_without_a_savepoint_that_fails_rolls_its_whole_group_back(database_url: str) -> None:
    """Nothing to roll back to: the blocks before it in its group are undone with it, and fail closed."""
    async with replicas(database_url, 1, lambda: START) as (service,):
        db = service.db
        request = await service.create(held_cancel())
        outcomes: list[str] = []

        class Broken(Exception):
            pass

        async def block(n: int, *, savepoint: bool = True, fails: bool = False) -> None:
            try:
                async with db.groups.write(savepoint=savepoint) as conn:
                    await audit.append(conn, Event(kind="test.grouped", outcome="ok", message=f"block {n}"), START)
                    if fails:
                        await conn.execute(update(_requests).where(_requests.c.id == request.id).values(agent="x"))
                        raise Broken()
            except Broken:
                outcomes.append(f"block {n} broken")
            except StoreUnavailable:
                outcomes.append(f"block {n} rolled back")
            else:
                outcomes.append(f"block {n} committed")

        async def leader(tg: TaskGroup) -> None:
            try:
                async with db.groups.write() as conn:
                    await audit.append(conn, Event(kind="test.grouped", outcome="ok", message="leader"), START)
                    tg.start_soon(block, 1)
                    tg.start_soon(partial(block, 2, savepoint=False, fails=True))
                    while db.groups.queued < 2:
                        await anyio.lowlevel.checkpoint()
            except StoreUnavailable:
                outcomes.append("leader rolled back")

        async with anyio.create_task_group() as tg:
            tg.start_soon(leader, tg)
        # The group after it is a fresh one: a block queued then commits as usual.
        await block(3)

        expected = ["block 1 rolled back", "block 2 broken", "block 3 committed", "leader rolled back"]
        assert sorted(outcomes) == expected
        assert (await service.get(request.id)).agent == request.agent
        async with db.read() as conn:
            rows = (await conn.execute(select(_events.c.message).where(_events.c.kind == "test.grouped"))).all()
        assert [r.message for r in rows] == ["block 3"]
        report = await service.history.verify()
        assert report.ok, report.describe()


async def test_blocks_that_defer_their_appends_keep_the_chain_whole_and_readers_see_them(database_url: str) -> None:
    """Appends kept unsent until the commit: a block rolled back forgets its own, one that does not defer reads all."""
    async with replicas(database_url, 1, lambda: START) as (service,):
        db = service.db
        kept: list[str] = []
        seen_by_reader: dict[int, set[str]] = {}

        class Refused(Exception):
            pass

        async def block(n: int) -> None:
            try:
                async with db.groups.write(defer=n % 4 != 3) as conn:
                    if n % 4 == 3:
                        # Does not defer: every event the blocks before it appended is in the table for it.
                        query = select(_events.c.message).where(_events.c.kind == "test.grouped")
                        seen_by_reader[n] = {r.message for r in (await conn.execute(query)).all()}
                    event = Event(kind="test.grouped", outcome="ok", message=f"block {n}")
                    await audit.append(conn, event, START)
                    await audit.append(conn, replace(event, message=f"block {n}, second"), START)
                    if n % 4 == 1:
                        raise Refused(n)
            except Refused:
                return
            kept.append(f"block {n}")

        assert await _twelve_blocks_grouped(db, block) == sorted([*kept, *(f"{k}, second" for k in kept)])
        assert len(kept) == 9
        # Each reader saw every event of the blocks that ran before it (in the order they queued), none rolled back.
        assert sorted(seen_by_reader) == [3, 7, 11]
        for n, seen in seen_by_reader.items():
            before = [f"block {k}" for k in range(n) if k % 4 != 1]
            assert seen == {*before, *(f"{b}, second" for b in before)}
        await service.record(Event(kind="call.allowed", outcome="allowed", message="after the groups"))
        report = await service.history.verify()
        assert report.ok, report.describe()


def test_a_group_bound_below_one_is_refused(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'cs.db'}")
    with pytest.raises(ValueError, match="max_group must be at least 1, not 0"):
        WriteGroups(db.write, max_group=0)


async def _twelve_blocks_grouped(db: Database, block: Callable[[int], Awaitable[None]]) -> list[str]:
    """Run `block(0)` .. `block(11)` at once, check they shared write groups; the grouped events' messages, sorted."""
    db.groups.sizes.clear()
    async with anyio.create_task_group() as tg:
        for n in range(12):
            tg.start_soon(block, n)
    assert sum(db.groups.sizes.values()) < 12
    async with db.read() as conn:
        rows = (await conn.execute(select(_events.c.message).where(_events.c.kind == "test.grouped"))).all()
    return sorted(r.message for r in rows)
