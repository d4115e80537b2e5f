"""An approval recorded in the process where the agent waits also records the start of its call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from approvals.approvers import Approver, ApproverDirectory
from approvals.db import Database
from approvals.service import ApprovalService
from approvals.states import Status
from gateway.execution import Executions
from tests.factories import held_cancel
from tests.gateway.fakes import MovableClock
from tests.harness import running_gateway, wait_for

ERAS = ["legacy", "auto"]
ALICE = Approver("alice", groups=("traders",))


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


@pytest.mark.parametrize("mode", ERAS)
async def test_the_approval_and_the_start_of_the_waiting_call_are_recorded_together(
    tmp_path: Path, database_url: str, mode: str
) -> None:
    async with running_gateway(tmp_path, database_url) as h, h.agent(mode=mode) as agent:
        outcome: dict[str, Any] = {}
        progress: list[str] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(message or "")

        async def call() -> None:
            outcome["result"] = await agent.call_tool(
                "ibkr_cancel_order", {"orderId": 1001, "confirm": True}, progress_callback=on_progress
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await h.pending()
            await wait_for(lambda: any("Waiting for approval" in m for m in progress))
            response = await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
            assert response.status_code == 200, response.text
            # The approver is answered with the decision it made.
            assert response.json()["approval"]["status"] == "approved"

        result = outcome["result"]
        assert not result.is_error, text(result)
        assert result.structured_content is not None and result.structured_content["orderId"] == 1001
        assert h.book.cancel_calls == 1
        assert any("executing ibkr_cancel_order" in m for m in progress), progress
        final = (await h.api().get(f"/api/approvals/{request['id']}")).json()
        assert final["status"] == "executed"
        events = {e["kind"]: e for e in final["events"]}
        assert list(events) == [
            "call.lookup",
            "request.created",
            "request.approved",
            "request.executing",
            "request.executed",
        ]
        # One transaction: the start carries the approval's own time.
        assert events["request.executing"]["at"] == events["request.approved"]["at"]


async def test_a_call_that_stops_waiting_gives_back_the_start_its_approval_recorded(database_url: str) -> None:
    db = Database(database_url)
    await db.create_schema()
    try:
        service = ApprovalService(db, ApproverDirectory([ALICE]), clock=MovableClock())
        executions = Executions(service, lease=60.0, owner="host:1:abc")
        request = await service.create(held_cancel(arguments={"orderId": 1001, "confirm": True}))
        gone = [False]
        early = executions.early_start(lambda view: not gone[0])
        service.starts.add(request.id, early)

        await service.approve(request.id, ALICE, "api")
        started = await service.get(request.id)
        assert started.status == Status.EXECUTING and early.won(started)

        # The agent left before anything was forwarded: the approval stands, to be picked up again.
        await early.undo(service)
        again = await service.get(request.id)
        assert again.status == Status.APPROVED and not early.won(again)
        kinds = [e.kind for e in await service.history.events(request_id=request.id)]
        assert kinds == ["request.created", "request.approved", "request.executing", "request.start_abandoned"]

        # An offer whose agent is gone is not taken: the next approval leaves its request approved.
        other = await service.create(held_cancel(arguments={"orderId": 1002, "confirm": True}))
        gone[0] = True
        declined = executions.early_start(lambda view: not gone[0])
        service.starts.add(other.id, declined)
        await service.approve(other.id, ALICE, "api")
        assert (await service.get(other.id)).status == Status.APPROVED
        await declined.undo(service)  # nothing was claimed: nothing to give back
        assert (await service.get(other.id)).status == Status.APPROVED
    finally:
        await db.dispose()
