"""One story of where a request stands and how it ended, in sentences every channel shows as they are.

The agent's result, the Slack message, the web card, the API and the audit log all take their
words from here, so they can never disagree about what happened. Plain text: each channel
escapes it for its own medium.
"""

from __future__ import annotations

import json
from typing import Any

from approvals.durations import format_duration
from approvals.states import EndReason, Status
from approvals.views import RequestView

NOT_EXECUTED = "the call was not executed"


def who_decides(view: RequestView) -> str:
    """The approvers a request waits for, as people read them: "group:traders", "2 of alice, bob"."""
    people = ", ".join(view.approvers) if view.approvers else "any approver"
    return people if view.quorum <= 1 else f"{view.quorum} of {people}"


def clock_time(view: RequestView, which: str) -> str:
    moment = view.pickup_deadline if which == "pickup" else view.expires_at
    assert moment is not None
    return f"{moment:%H:%M:%S} UTC"


def title(view: RequestView) -> str:
    """What the call would do, as a sentence: the policy's summary for it, else a plain one naming the tool."""
    return view.title or f"Call {view.tool} on {view.upstream}"


def context_lines(view: RequestView) -> list[tuple[str, str]]:
    """The looked-up facts as (label, text) pairs, the same in every channel; a failed lookup says why."""
    lines: list[tuple[str, str]] = []
    for item in view.context:
        if item.problem is not None:
            lines.append((item.name, f"context unavailable: {item.problem}"))
        elif isinstance(item.value, dict) and item.value:
            # A field the selection found empty (a stop price on a limit order) says nothing: left out.
            shown = [
                (f"{item.name} · {key}", fact_text(value)) for key, value in item.value.items() if value is not None
            ]
            lines.extend(shown or [(item.name, "nothing found")])
        else:
            lines.append((item.name, fact_text(item.value)))
    return lines


def fact_text(value: Any) -> str:
    """A looked-up value as people read it: 100 not 100.0, nothing found as such, structures as compact JSON."""
    if value is None:
        return "nothing found"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return f"{int(value)}"
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def headline(view: RequestView) -> str:
    """A word or two for a badge: "Waiting", "Approved", "Executed", "Not picked up", ..."""
    if view.damage:
        return "Unreadable"
    if view.status == Status.APPROVED and not view.agent_waiting and not view.run_unattended:
        return "Approved, agent away"
    if view.ended_because == EndReason.NOT_PICKED_UP:
        return "Not picked up"
    if view.ended_because == EndReason.WITHDRAWN:
        return "Withdrawn"
    if view.ended_because == EndReason.POLICY_WITHDRAWN:
        return "Withdrawn by policy"
    return {
        Status.PENDING: "Waiting",
        Status.APPROVED: "Approved",
        Status.EXECUTING: "Executing",
        Status.EXECUTED: "Executed",
        Status.FAILED: "Failed",
        Status.REJECTED: "Rejected",
        Status.EXPIRED: "Expired",
        Status.CANCELLED: "Withdrawn",
        Status.OUTCOME_UNKNOWN: "Outcome unknown",
    }[view.status]


def describe(view: RequestView) -> str:
    """Where the request stands, or how it ended, in one or two sentences."""
    if view.damage:
        return damaged(view)
    if view.is_terminal:
        return ending(view)
    approved = f"Approved by {view.decided_by}"
    if view.status == Status.PENDING:
        text = f"Waiting for approval by {who_decides(view)} until {clock_time(view, 'expires')}."
        if not view.agent_waiting:
            text += " The agent is not waiting; it can come back for the outcome."
        return text
    if view.status == Status.EXECUTING:
        return f"{approved}; executing {view.upstream_tool} on {view.upstream} now."
    if view.run_unattended:
        return f"{approved}; it runs without waiting for the agent."
    if view.agent_waiting:
        return f"{approved}; forwarding it to {view.upstream} for the waiting agent."
    return f"{approved}; it runs when the agent comes back, until {clock_time(view, 'pickup')}."


def ending(view: RequestView) -> str:
    """How a request ended, for everyone: the agent (after its tag), approvers, the API and the audit log."""
    if view.damage:
        return damaged(view)
    because = view.ended_because
    approved_by = view.decided_by or "an approver"
    if because == EndReason.EXECUTED:
        return f"Approved by {approved_by} and executed."
    if because == EndReason.FAILED:
        return f"Approved by {approved_by}; the upstream answered with an error: {view.error or 'no detail'}."
    if because == EndReason.REJECTED:
        said = f": {view.decision_reason}" if view.decision_reason else "; no reason given"
        stop = "" if said.endswith((".", "!", "?")) else "."
        return f"Rejected by {view.decided_by}{said}{stop} The call was not executed."
    if because == EndReason.TIMED_OUT:
        return f"Nobody decided within {format_duration(view.timeout_seconds)}; {NOT_EXECUTED}."
    if because == EndReason.NOT_PICKED_UP:
        window = format_duration(view.pickup_seconds)
        return f"Approved by {approved_by}, but the agent did not come back for it within {window}; {NOT_EXECUTED}."
    if because == EndReason.INTERRUPTED:
        return (
            f"Approved by {approved_by}, but the gateway stopped while executing it, so whether {view.upstream} "
            f"carried out {view.tool} is unknown. Check before trying it again: it is not retried."
        )
    if because == EndReason.WITHDRAWN:
        after = f" after approval by {view.decided_by}" if view.decided_by else ""
        return f"Withdrawn by the agent{after}; {NOT_EXECUTED}."
    if because == EndReason.NOT_AS_APPROVED:
        return (
            f"Approved by {approved_by}, but the request stored in the database no longer matches what the audit "
            f"log recorded for it ({view.error or 'no detail'}); {NOT_EXECUTED}."
        )
    if because == EndReason.POLICY_WITHDRAWN:
        return policy_withdrawn(view)
    return f"Ended as {view.status.value}."


def policy_withdrawn(view: RequestView) -> str:
    """A policy change denies or hides the call now; the rule's message is kept in the request's `error`."""
    rule = (view.error or "the policy no longer allows it").rstrip(".")
    after = f" after approval by {view.decided_by}" if view.decided_by else ""
    return f"Withdrawn by a policy change{after}: {rule}. {NOT_EXECUTED[0].upper()}{NOT_EXECUTED[1:]}."


def damaged(view: RequestView) -> str:
    """A request whose stored record cannot be read (approvals.stored): what is wrong, and that it never runs."""
    what = "; ".join(view.damage)
    if view.status == Status.PENDING:
        return f"Its stored record cannot be read ({what}): it can be rejected, but never approved or run."
    return f"Its stored record cannot be read ({what}); it is shown as stored and is never run."
