"""Group commit of request transitions: decisions made together share transactions, and each still stands alone."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from approvals.db import Database
from approvals.errors import AlreadyDecided
from approvals.states import Status
from approvals.write_groups import WriteGroups
from tests.approvals.test_races import APPROVERS, START, replicas
from tests.factories import held_cancel


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
        # Eleven decisions written (the decided request was refused before writing), in fewer transactions.
        assert sum(size * n for size, n in service.db.groups.sizes.items()) == 11
        assert sum(service.db.groups.sizes.values()) < 11
        report = await service.history.verify()
        assert report.ok, report.describe()


def test_a_group_bound_below_one_is_refused(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'cs.db'}")
    with pytest.raises(ValueError, match="max_group must be at least 1, not 0"):
        WriteGroups(db.write, max_group=0)
