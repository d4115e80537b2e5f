"""Calls parked together, on SQLite and PostgreSQL: one transaction for many, each caller answered on its own."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TypeVar

import anyio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit import canonical_json
from approvals.db import Database
from approvals.errors import AlreadyOpen, StoreUnavailable, TooManyPending
from approvals.models import AuditEvent
from approvals.states import Status
from approvals.views import RequestView
from approvals.write_groups import WriteGroups
from tests.approvals.test_races import APPROVERS, START, replicas
from tests.factories import held_cancel

_events = AuditEvent.__table__  # type: ignore[attr-defined]


_T = TypeVar("_T")


async def _all_at_once(*parks: Callable[[], Awaitable[_T]]) -> list[_T | BaseException]:
    outcomes: list[_T | BaseException] = [RuntimeError("not run")] * len(parks)

    async def one(i: int) -> None:
        try:
            outcomes[i] = await parks[i]()
        except Exception as exc:
            outcomes[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(parks)):
            tg.start_soon(one, i)
    return outcomes


async def _created_events(db: Database) -> dict[str, int]:
    async with db.read() as conn:
        query = select(_events.c.request_id, _events.c.seq).where(_events.c.kind == "request.created")
        return {str(r.request_id): int(r.seq) for r in await conn.execute(query)}


async def test_parks_made_together_share_transactions_and_each_is_durable_when_its_caller_hears(
    database_url: str,
) -> None:
    async with replicas(database_url, 1, lambda: START) as (service,):
        service.parks.sizes.clear()

        def park(n: int) -> Callable[[], Awaitable[RequestView]]:
            async def made() -> RequestView:
                view = await service.create(held_cancel(arguments={"orderId": n, "confirm": True}))
                # Told only once committed: another connection reads the request and its creation already.
                assert (await service.get(view.id)).status == Status.PENDING
                assert view.id in await _created_events(service.db)
                return view

            return made

        outcomes = await _all_at_once(*(park(n) for n in range(40)))
        views = [o for o in outcomes if isinstance(o, RequestView)]
        assert len(views) == 40, [o for o in outcomes if not isinstance(o, RequestView)]
        assert len({v.id for v in views}) == 40
        assert sum(size * n for size, n in service.parks.sizes.items()) == 40
        assert sum(service.parks.sizes.values()) < 40  # shared
        created = await _created_events(service.db)
        assert {v.id for v in views} <= set(created)
        report = await service.history.verify()
        assert report.ok, report.describe()


async def test_an_identical_call_or_one_past_the_pending_limit_fails_alone_in_its_batch(database_url: str) -> None:
    async with replicas(database_url, 1, lambda: START) as (service,):
        await service.create(held_cancel(arguments={"orderId": 0, "confirm": True}))
        # Another agent's requests do not count against alpha's limit.
        await service.create(held_cancel(agent="beta", arguments={"orderId": 0, "confirm": True}))

        def park(n: int, agent: str = "alpha") -> Callable[[], Awaitable[RequestView]]:
            call = held_cancel(agent=agent, arguments={"orderId": n, "confirm": True})
            return lambda: service.create(call, max_pending=5)

        # Order 0 is open already and order 1 is asked twice: those fail alone. Alpha then has 1 pending, so of
        # its distinct new calls only four more fit; beta's fit too.
        outcomes = await _all_at_once(
            park(0), park(1), park(1), park(2), park(3), park(4), park(5), park(6), park(7, "beta")
        )
        kinds = [type(o).__name__ for o in outcomes]
        assert isinstance(outcomes[0], AlreadyOpen), kinds
        assert sum(isinstance(o, AlreadyOpen) for o in outcomes) == 2, kinds
        assert sum(isinstance(o, TooManyPending) for o in outcomes[:8]) == 2, kinds
        made = [o for o in outcomes if isinstance(o, RequestView)]
        assert [v.agent for v in made].count("alpha") == 4 and isinstance(outcomes[8], RequestView), kinds
        pending = await service.pending_by_agent()
        assert pending == {"alpha": 5, "beta": 2}
        # Every request made has its creation event; nothing refused left a row or an event.
        created = await _created_events(service.db)
        assert {v.id for v in made} <= set(created)
        assert len(created) == 2 + len(made)
        report = await service.history.verify()
        assert report.ok, report.describe()


async def test_parks_are_refused_and_nothing_is_acknowledged_when_the_database_is_down(database_url: str) -> None:
    async with replicas(database_url, 1, lambda: START) as (service,):
        await service.create(held_cancel(arguments={"orderId": 0, "confirm": True}))
        working = service.db.groups

        @asynccontextmanager
        async def down() -> AsyncIterator[AsyncConnection]:
            raise StoreUnavailable("the database is unavailable: down for the test")
            yield  # pragma: no cover

        def park(n: int) -> Callable[[], Awaitable[RequestView]]:
            return lambda: service.create(held_cancel(arguments={"orderId": n, "confirm": True}))

        service.db.groups = WriteGroups(down)
        try:
            outcomes = await _all_at_once(*(park(n) for n in range(1, 9)))
        finally:
            service.db.groups = working
        assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
        assert await service.pending_by_agent() == {"alpha": 1}


async def test_repeat_reads_asked_together_answer_each_call_as_one_read_would(database_url: str) -> None:
    async with replicas(database_url, 1, lambda: START) as (service,):
        opened = await service.create(held_cancel(arguments={"orderId": 1, "confirm": True}))
        ended = await service.create(held_cancel(arguments={"orderId": 2, "confirm": True}))
        await service.reject(ended.id, APPROVERS[0], "api", "no")
        withdrawn = await service.create(held_cancel(arguments={"orderId": 3, "confirm": True}))
        await service.withdraw(withdrawn.id, "the agent cancelled")
        since = service.clock() - timedelta(minutes=10)

        def ask(n: int, agent: str = "alpha") -> Callable[[], Awaitable[RequestView | None]]:
            digest = hashlib.sha256(canonical_json({"orderId": n, "confirm": True}).encode()).hexdigest()
            return lambda: service.find_repeat(agent, "ibkr_cancel_order", digest, ended_since=since)

        answers = await _all_at_once(ask(1), ask(2), ask(3), ask(4), ask(1, "beta"), ask(2, "beta"))
        ids = [a.id if isinstance(a, RequestView) else a for a in answers]
        assert ids == [opened.id, ended.id, None, None, None, None]
