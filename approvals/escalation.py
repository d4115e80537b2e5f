"""Escalation: when nobody has decided a request after a while, more approvers become eligible.

The steps are fixed when the request is made (the tool's `approval.escalate`). Step N is due
`after_seconds` after the request was made; taking it is one conditional UPDATE (`escalated = N`
→ `N + 1`, still pending) plus its audit event, so each step is taken once however many replicas'
timers fire, and every channel hears it through the change feed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update

from approvals import audit
from approvals.audit import canonical_json
from approvals.durations import format_duration
from approvals.models import ApprovalRequest
from approvals.reads import load
from approvals.states import Status
from approvals.transitions import Transitions, request_event
from approvals.views import EscalationStep, RequestView

__all__ = ["EscalationCases", "EscalationStep", "due_step", "steps_json"]

_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]


def steps_json(steps: Sequence[EscalationStep]) -> str | None:
    return canonical_json([step.as_json() for step in steps]) if steps else None


@dataclass(frozen=True)
class DueStep:
    """The next step a pending request takes, and when."""

    index: int
    step: EscalationStep
    at: datetime


def due_step(view: RequestView) -> DueStep | None:
    """The request's next escalation step while it is pending; None when there is none left."""
    if view.status != Status.PENDING or view.escalated >= len(view.escalation):
        return None
    step = view.escalation[view.escalated]
    return DueStep(view.escalated, step, view.created_at + timedelta(seconds=step.after_seconds))


class EscalationCases(Transitions):
    async def escalate(self, request_id: str) -> RequestView | None:
        """Take the request's next step if it is due and nobody took it yet; the escalated request, or None."""
        now = self.clock()
        async with self._write() as conn:
            current = await load(conn, request_id)
            due = due_step(current)
            if due is None or due.at > now:
                return None
            added = [name for name in due.step.approvers if name not in current.approvers]
            eligible = [*current.approvers, *added]
            taken = await conn.execute(
                update(_requests)
                .where(
                    _requests.c.id == request_id,
                    _requests.c.status == Status.PENDING.value,
                    _requests.c.escalated == due.index,
                )
                .values(escalated=due.index + 1, approvers=canonical_json(eligible))
            )
            if taken.rowcount != 1:
                return None
            moved = await load(conn, request_id)
            text = (
                f"escalated: nobody decided within {format_duration(due.step.after_seconds)}, so "
                f"{', '.join(due.step.approvers)} may decide it too"
            )
            detail: dict[str, Any] = {"step": due.index + 1, "added": list(due.step.approvers), "approvers": eligible}
            await audit.append(conn, request_event(moved, "request.escalated", "escalated", text, detail=detail), now)
        return moved
