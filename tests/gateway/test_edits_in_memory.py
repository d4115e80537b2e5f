"""Approving with changes in memory: the changed call is what the audit chain binds, whatever the row says.

The whole call path runs with an in-process MCP client, a fake upstream and a clock the test moves
(tests/gateway/test_calls.py); the database row is altered directly, as an attacker with write
access to it could.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import update

from approvals.audit import canonical_json
from approvals.models import ApprovalRequest
from approvals.states import EndReason, Status
from gateway.results import EDITED_META
from tests.gateway.test_calls import ALICE, CANCEL, core, text


async def test_a_repeat_and_the_wait_tool_return_the_changed_calls_result_with_its_changes(tmp_path: Path) -> None:
    # The wait tool waits at most the hold; a second leaves the approved call's execution time on a busy machine.
    async with core(tmp_path, approval={"max_hold": "1s", "editable": ["orderId"]}) as c, c.agent() as agent:
        pending = await agent.call_tool("cancel_order", CANCEL)
        approval_id = pending.structured_content["approval_id"]  # type: ignore[index]
        await c.gateway.edited.approve(approval_id, ALICE, "api", None, {"orderId": "7"})
        result = await agent.call_tool("countersign_approval_wait", {"approval_id": approval_id})
        assert "orderId 1001 → 7" in text(result) and "cancelled 7 on paper" in text(result)
        # The agent's own call again, within the repeat window: the changed call's outcome, nothing run twice.
        again = await agent.call_tool("cancel_order", CANCEL)
        assert "cancelled 7 on paper" in text(again)
        assert (again.meta or {})[EDITED_META]["changes"] == [{"path": "orderId", "before": 1001, "after": 7}]
        status = await agent.call_tool("countersign_approval_status", {"approval_id": approval_id})
        assert status.structured_content["arguments"] == {"orderId": 7}  # type: ignore[index]
    assert c.upstreams.upstreams[0].calls == [("cancel_order", {"orderId": 7})]


async def test_arguments_altered_in_the_database_after_an_approval_with_changes_never_run(tmp_path: Path) -> None:
    async with core(tmp_path, approval={"max_hold": "0.2s", "editable": ["orderId"]}) as c, c.agent() as agent:
        pending = await agent.call_tool("cancel_order", CANCEL)
        approval_id = pending.structured_content["approval_id"]  # type: ignore[index]
        await c.gateway.edited.approve(approval_id, ALICE, "api", None, {"orderId": 7})
        altered = canonical_json({"orderId": 9})
        async with c.gateway.db.write() as conn:
            await conn.execute(
                update(ApprovalRequest.__table__)  # type: ignore[attr-defined]
                .where(ApprovalRequest.__table__.c.id == approval_id)  # type: ignore[attr-defined]
                .values(arguments=altered, arguments_sha256=hashlib.sha256(altered.encode()).hexdigest())
            )
        result = await agent.call_tool("countersign_approval_wait", {"approval_id": approval_id})
        assert result.is_error and text(result).startswith("[GATEWAY ERROR]")
        ended = await c.service.get(approval_id)
        assert (ended.status, ended.ended_because) == (Status.FAILED, EndReason.NOT_AS_APPROVED)
        assert "approved with changes" in (ended.error or "")
    assert c.upstreams.upstreams[0].calls == []
