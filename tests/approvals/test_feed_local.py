"""The change feed delivers what its own process committed without reading it back, and still every change,
once, in order, when other processes (and events outside the request blocks) write in between (both databases)."""

from __future__ import annotations

import hashlib

import anyio
from sqlalchemy import select

from approvals.audit import Event, canonical_json
from approvals.execution import Start
from approvals.feed import Change
from approvals.models import AuditEvent
from approvals.service import ApprovalService
from approvals.views import RequestView
from tests.approvals.test_races import APPROVERS, START, replicas
from tests.factories import held_cancel

_events = AuditEvent.__table__  # type: ignore[attr-defined]


class Heard:
    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.want = 0
        self.enough = anyio.Event()

    async def request_changed(self, change: Change) -> None:
        self.changes.append(change)
        if self.want and len(self.changes) >= self.want:
            self.enough.set()


class Waiter:
    def __init__(self, view: RequestView) -> None:
        self.sha = hashlib.sha256(canonical_json(view.arguments).encode()).hexdigest()

    def claim(self, view: RequestView) -> Start | None:
        return Start("here:1", 60.0, self.sha)

    def started(self, view: RequestView | None) -> None:
        pass


async def feed_rows(service: ApprovalService, after: int) -> list[tuple[int, str, str]]:
    query = (
        select(_events.c.seq, _events.c.kind, _events.c.request_id)
        .where(_events.c.seq > after, _events.c.request_id.is_not(None), _events.c.kind.like("request.%"))
        .order_by(_events.c.seq)
    )
    async with service.db.read() as conn:
        return [(r.seq, r.kind, r.request_id) for r in (await conn.execute(query)).all()]


async def test_every_change_is_heard_once_in_order_with_the_request_as_it_left_it(database_url: str) -> None:
    async with replicas(database_url, 2, lambda: START) as (here, there):
        heard = Heard()
        here.feed.subscribe(heard)
        here.feed.poll_interval = 0.05
        await here.feed.start()
        after = here.feed.cursor or 0
        ours = [await here.create(held_cancel(arguments={"orderId": n, "confirm": True})) for n in range(8)]
        theirs = [await there.create(held_cancel(arguments={"orderId": 100 + n, "confirm": True})) for n in range(8)]
        for view in ours[:4]:
            here.starts.add(view.id, Waiter(view))
        result = {"content": [{"type": "text", "text": "ok"}]}

        async def decide_here(view: RequestView, started: bool) -> None:
            await here.approve(view.id, APPROVERS[0], "api")
            if started:
                await here.finish_execution(view.id, ok=True, result=result, error=None, summary="ok")

        async with anyio.create_task_group() as tg:
            tg.start_soon(here.feed.run)
            async with anyio.create_task_group() as deciding:
                for n, view in enumerate(ours):
                    deciding.start_soon(decide_here, view, n < 4)
                for view in theirs:
                    deciding.start_soon(there.reject, view.id, APPROVERS[1], "api", "no")
                # Events outside the request blocks, written in between: gaps the feed must read past.
                for n in range(3):
                    deciding.start_soon(here.record, Event(kind="call.allowed", outcome="allowed", message=f"{n}"))
            expected = await feed_rows(here, after)
            heard.want = len(expected)
            if len(heard.changes) >= heard.want:
                heard.enough.set()
            with anyio.fail_after(30):
                await heard.enough.wait()
            await anyio.sleep(0.2)  # nothing more may come
            tg.cancel_scope.cancel()

        assert [(c.seq, c.kind, c.request_id) for c in heard.changes] == expected
        for change in heard.changes:
            # The request as the change left it, or later: never before it.
            assert change.request.id == change.request_id
            if change.kind == "request.executed":
                assert change.request.status.value == "executed"
            if change.kind == "request.rejected":
                assert change.request.status.value == "rejected"
        final = {c.request_id: c.request.status.value for c in heard.changes}
        assert [final[v.id] for v in ours] == ["executed"] * 4 + ["approved"] * 4
        assert {final[v.id] for v in theirs} == {"rejected"}
