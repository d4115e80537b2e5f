"""A request's terms beyond yes or no, in the words and shapes every channel shows: what an approver may
change (and what one did change), and who else is asked when nobody decides.

Like `approvals.story`, one place, so the web card, Slack, the API, the CLI and the agent agree.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from approvals.edits import describe_edits
from approvals.states import Status
from approvals.views import RequestView


def edited_line(view: RequestView) -> str | None:
    """``Approved with changes: order.totalQuantity 500 → 50`` once an approver changed the call."""
    if not view.edits:
        return None
    return f"Approved with changes: {describe_edits(view.edits)}"


def escalation_lines(view: RequestView) -> list[str]:
    """Each escalation step: taken (who joined), or still ahead (when, if nobody decides before)."""
    lines = []
    for index, step in enumerate(view.escalation):
        at = view.created_at + timedelta(seconds=step.after_seconds)
        who = ", ".join(step.approvers)
        if index < view.escalated:
            lines.append(f"Escalated at {at:%H:%M:%S} UTC: {who} may decide too")
        elif view.status == Status.PENDING:
            lines.append(f"Escalates at {at:%H:%M:%S} UTC to {who} if nobody has decided by then")
    return lines


def terms_json(view: RequestView) -> dict[str, Any]:
    """The terms as the approver API (and the CLI on top of it) returns them."""
    return {
        "editable": list(view.editable),
        "original_arguments": view.original_arguments_shown,
        "original_arguments_sha256": view.original_sha256,
        "edits": [edit.as_json() for edit in view.edits],
        "escalation": [
            {
                **step.as_json(),
                "at": (view.created_at + timedelta(seconds=step.after_seconds)).isoformat(),
                "taken": index < view.escalated,
            }
            for index, step in enumerate(view.escalation)
        ],
        "remind_before_seconds": view.remind_before_seconds,
        # The same facts as sentences (the CLI prints them as they are).
        "terms": terms_lines(view),
    }


def terms_lines(view: RequestView) -> list[str]:
    """Every sentence above, in the order channels show them."""
    lines = [line] if (line := edited_line(view)) else []
    if view.editable and view.status == Status.PENDING:
        lines.append(f"Approvers may change: {', '.join(view.editable)}")
    return [*lines, *escalation_lines(view)]
