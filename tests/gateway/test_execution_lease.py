"""A forwarded call keeps its execution lease while the upstream works, and a quick one never renews it."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import mcp_types as types

from approvals.approvers import Approver, ApproverDirectory
from approvals.db import Database
from approvals.service import ApprovalService, arguments_digest
from approvals.states import Status
from approvals.views import RequestView
from gateway.execution import Executions
from tests.factories import held_cancel
from tests.gateway.fakes import MovableClock, text_result
from tests.harness import wait_for

ALICE = Approver("alice", groups=("traders",))


class Upstream:
    """An upstream whose call answers when the test lets it."""

    name = "paper"
    ready = True

    def __init__(self) -> None:
        self.answer = anyio.Event()
        self.calls = 0

    async def call(self, tool: str, arguments: dict[str, Any], progress: Any = None) -> types.CallToolResult:
        self.calls += 1
        await self.answer.wait()
        return text_result("cancelled")


async def started_request(service: ApprovalService, executions: Executions, order: int) -> RequestView:
    request = await service.create(held_cancel(arguments={"orderId": order, "confirm": True}))
    await service.approve(request.id, ALICE, "api")
    approved = await service.get(request.id)
    started = await executions.begin(approved, arguments_digest(approved.arguments_json))
    assert started is not None and started.lease_until is not None
    return started


async def test_a_call_the_upstream_answers_slowly_keeps_its_lease_until_it_is_recorded(database_url: str) -> None:
    db = Database(database_url)
    await db.create_schema()
    clock = MovableClock()
    try:
        service = ApprovalService(db, ApproverDirectory([ALICE]), clock=clock)
        # A lease of a fifth of a second: renewed every ~70 ms while the upstream has not answered.
        executions = Executions(service, lease=0.2, owner="host:1:abc")
        async with anyio.create_task_group() as tg:
            tg.start_soon(executions.run)
            await anyio.lowlevel.checkpoint()
            started = await started_request(service, executions, 1001)
            first = started.lease_until
            assert first is not None
            clock.advance(3600)  # from now on a renewed lease ends an hour after the first
            upstream = Upstream()
            run = await executions.forward(started, upstream, None)  # type: ignore[arg-type]

            async def renewed() -> bool:
                lease = (await service.get(started.id)).lease_until
                return lease is not None and lease > first

            await wait_for(renewed, within=60)
            assert (await service.get(started.id)).status == Status.EXECUTING
            assert await service.lapsed_executions() == []  # by the service's clock, its lease is current
            upstream.answer.set()
            with anyio.fail_after(60):
                await run.done.wait()
            tg.cancel_scope.cancel()
        assert run.outcome is not None
        recorded, _result = run.outcome
        assert recorded.status == Status.EXECUTED and upstream.calls == 1
    finally:
        await db.dispose()


async def test_a_call_the_upstream_answers_at_once_is_recorded_with_its_first_lease(database_url: str) -> None:
    db = Database(database_url)
    await db.create_schema()
    clock = MovableClock()
    try:
        service = ApprovalService(db, ApproverDirectory([ALICE]), clock=clock)
        executions = Executions(service, lease=600.0, owner="host:1:abc")
        async with anyio.create_task_group() as tg:
            tg.start_soon(executions.run)
            await anyio.lowlevel.checkpoint()
            started = await started_request(service, executions, 1002)
            clock.advance(3600)  # a renewal now would move the lease an hour on
            upstream = Upstream()
            upstream.answer.set()
            run = await executions.forward(started, upstream, None)  # type: ignore[arg-type]
            with anyio.fail_after(60):
                await run.done.wait()
            tg.cancel_scope.cancel()
        final = await service.get(started.id)
        assert final.status == Status.EXECUTED and upstream.calls == 1
        assert final.lease_until == started.lease_until
    finally:
        await db.dispose()
