"""A plain approval decided without a read first, its statements run through the driver (both databases).

What the compare-and-set hands back must be the request exactly as stored (the driver's rows read
back like the engine's), and approvals refused or lost in a write group shared with others must
leave nothing behind while the others commit and the chain verifies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from approvals.approvers import Approver, ApproverDirectory
from approvals.db import Database
from approvals.errors import AlreadyDecided, NotAllowed
from approvals.service import ApprovalService
from approvals.states import Status
from approvals.views import NewRequest
from tests.factories import held_cancel
from tests.gateway.fakes import MovableClock

ALICE = Approver("alice", groups=("traders",))
CAROL = Approver("carol", groups=("ops",))


@pytest.fixture
async def service(database_url: str) -> AsyncIterator[ApprovalService]:
    db = Database(database_url, audit_key=b"k" * 32)
    await db.create_schema()
    try:
        yield ApprovalService(db, ApproverDirectory([ALICE, CAROL]), clock=MovableClock())
    finally:
        await db.dispose()


def held(order: int, *, quorum: int = 1) -> NewRequest:
    return held_cancel(
        arguments={"orderId": order, "confirm": True}, approvers=("group:traders",), quorum=quorum, session_id="s"
    )


async def test_the_approved_request_handed_back_is_the_one_stored(service: ApprovalService) -> None:
    request = await service.create(held(1))

    outcome = await service.approve(request.id, ALICE, "api", "looks right")

    stored = await service.get(request.id)
    assert outcome.request == stored
    assert stored.status == Status.APPROVED
    assert (stored.decided_by, stored.decided_via, stored.decision_reason) == ("alice", "api", "looks right")
    assert [(d.approver, d.verdict, d.reason) for d in await service.decisions(request.id)] == [
        ("alice", "approve", "looks right")
    ]
    assert outcome.message == "approved by alice: looks right"


async def test_refused_and_lost_approvals_in_shared_groups_leave_nothing_and_the_rest_commit(
    service: ApprovalService,
) -> None:
    allowed = [await service.create(held(100 + i)) for i in range(12)]
    refused = [await service.create(held(200 + i)) for i in range(6)]
    two = await service.create(held(300, quorum=2))
    outcomes: dict[str, object] = {}

    async def approve(request_id: str, approver: Approver) -> None:
        try:
            outcomes[f"{request_id}:{approver.name}"] = await service.approve(request_id, approver, "api")
        except (NotAllowed, AlreadyDecided) as exc:
            outcomes[f"{request_id}:{approver.name}"] = exc

    async with anyio.create_task_group() as tg:
        for request in allowed:
            tg.start_soon(approve, request.id, ALICE)
            tg.start_soon(approve, request.id, ALICE)  # the same approval twice: one wins, one lost
        for request in refused:
            tg.start_soon(approve, request.id, CAROL)
        tg.start_soon(approve, two.id, ALICE)

    assert max(service.db.groups.sizes) > 1  # the blocks did share transactions
    for request in allowed:
        assert (await service.get(request.id)).status == Status.APPROVED
        assert [d.approver for d in await service.decisions(request.id)] == ["alice"]
    for request in refused:
        assert isinstance(outcomes[f"{request.id}:carol"], NotAllowed)
        assert (await service.get(request.id)).status == Status.PENDING
        assert await service.decisions(request.id) == []
    still = await service.get(two.id)
    assert still.status == Status.PENDING
    assert [d.approver for d in await service.decisions(two.id)] == ["alice"]
    report = await service.history.verify()
    assert report.ok, report.describe()
