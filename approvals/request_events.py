"""The audit events the approval service writes about a request, and what each one binds.

Every event about a request names its agent, tool, upstream and id. Decisions, the start of an
execution and the creation of the request also record the arguments' digest and the policy
version, so the chain alone says what was approved (`approvals.evidence` holds the tables to it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from approvals.approvers import Approver
from approvals.audit import Event, canonical_json
from approvals.edits import apply_edits
from approvals.errors import AlreadyDecided, InvalidDecision
from approvals.states import Status
from approvals.story import describe
from approvals.views import NewRequest, RequestView


def already_decided(view: RequestView) -> AlreadyDecided:
    by = None if view.status == Status.CANCELLED else view.decided_by
    because = None if view.ended_because is None else view.ended_because.value
    return AlreadyDecided(
        view.id, view.status.value, by, view.status_changed_at, ended_because=because, summary=describe(view)
    )


def request_event(view: RequestView, kind: str, outcome: str, message: str, **extra: Any) -> Event:
    """An audit event about one request (the request's entry in the change feed)."""
    return Event(
        kind=kind,
        outcome=outcome,
        message=message,
        agent=view.agent,
        tool=view.tool,
        upstream=view.upstream,
        request_id=view.id,
        **extra,
    )


def refusal_event(view: RequestView, approver: Approver, channel: str, verdict: str, why: str) -> Event:
    text = f"{approver.name} tried to {verdict} through {channel}, refused: {why}"
    return request_event(view, "decision.refused", "refused", text, actor=approver.name, channel=channel)


def decision_event(
    view: RequestView, approver: Approver, channel: str, outcome: str, reason: str | None, text: str
) -> Event:
    detail: dict[str, Any] = {"reason": reason} if reason else {}
    detail.update(bound_to(view))
    extra: dict[str, Any] = {}
    if view.status == Status.APPROVED:
        # The approval is bound to the arguments, the policy version and its pick-up window (evidence.py).
        detail["pickup_until"] = view.deadline.isoformat()
        if view.original_sha256 is not None:
            # Approved as changed: the chain holds the approved arguments and both digests (evidence.py).
            detail["original_arguments_sha256"] = view.original_sha256
            detail["edits"] = [edit.as_json() for edit in view.edits]
            extra["arguments"] = view.arguments_json
    return request_event(
        view, f"request.{outcome}", outcome, text, actor=approver.name, channel=channel, detail=detail, **extra
    )


def edited_values(current: RequestView, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The columns an approval with `changes` writes (none when nothing changes); InvalidDecision when refused."""
    if not changes:
        return {}
    arguments, edits = apply_edits(current.arguments, changes, current.editable)
    if not edits:
        return {}
    if current.quorum > 1:
        raise InvalidDecision(
            f"this request needs {current.quorum} approvals, and every approver must approve the same call: "
            "approve or reject it as asked"
        )
    arguments_json = canonical_json(arguments)
    return {
        "arguments": arguments_json,
        "arguments_sha256": hashlib.sha256(arguments_json.encode()).hexdigest(),
        "original_arguments": current.arguments_json,
        "original_sha256": current.arguments_sha256,
        "edits": canonical_json([edit.as_json() for edit in edits]),
    }


def shown_with(new: NewRequest) -> dict[str, Any]:
    """What approvers are shown beside the arguments, recorded with the request's creation as they saw it."""
    shown: dict[str, Any] = {}
    if new.title is not None:
        shown["title"] = new.title
    if new.agent_reason is not None:
        shown["agent_reason"] = new.agent_reason
    if new.context:
        shown["context"] = [item.as_json() for item in new.context]
    return shown


def terms_of(new: NewRequest) -> dict[str, Any]:
    """What approvers may do besides yes or no, recorded with the request's creation (evidence.py holds edits to it)."""
    terms: dict[str, Any] = {}
    if new.editable:
        terms["editable"] = list(new.editable)
    if new.escalation:
        terms["escalation"] = [step.as_json() for step in new.escalation]
    return terms


def bound_to(view: RequestView) -> dict[str, Any]:
    """What an approval is bound to, recorded in the chain: the arguments' digest and the policy version."""
    bound: dict[str, Any] = {"arguments_sha256": view.arguments_sha256}
    if view.policy_version is not None:
        bound["policy_version"] = view.policy_version
    return bound
