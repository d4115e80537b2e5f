"""The audit events the approval service writes about a request, and what each one binds.

Every event about a request names its agent, tool, upstream and id. Decisions, the start of an
execution and the creation of the request also record the arguments' digest and the policy
version, so the chain alone says what was approved (`approvals.evidence` holds the tables to it).
"""

from __future__ import annotations

from typing import Any

from approvals.approvers import Approver
from approvals.audit import Event
from approvals.errors import AlreadyDecided
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
    if view.status == Status.APPROVED:
        # The approval is bound to the arguments, the policy version and its pick-up window (evidence.py).
        detail["pickup_until"] = view.deadline.isoformat()
    return request_event(view, f"request.{outcome}", outcome, text, actor=approver.name, channel=channel, detail=detail)


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


def bound_to(view: RequestView) -> dict[str, Any]:
    """What an approval is bound to, recorded in the chain: the arguments' digest and the policy version."""
    bound: dict[str, Any] = {"arguments_sha256": view.arguments_sha256}
    if view.policy_version is not None:
        bound["policy_version"] = view.policy_version
    return bound
