"""The approval request's states and the transitions allowed between them, as data."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    EXECUTING = "executing"
    EXECUTED = "executed"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    # The gateway running the call stopped (crashed, was killed) after execution began and before its
    # outcome was recorded: the upstream may or may not have run it. An end state, never retried.
    OUTCOME_UNKNOWN = "outcome_unknown"


# The states in which a request is the one open request for its call (agent, tool, arguments): a repeat
# of the call joins it, and the database lets no second one exist (approval_request.open_key).
OPEN: frozenset[Status] = frozenset({Status.PENDING, Status.APPROVED, Status.EXECUTING})


TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.APPROVED, Status.REJECTED, Status.EXPIRED, Status.CANCELLED}),
    # An approved call is forwarded only for an agent that is still there to receive the result;
    # if the agent went away before execution began, the approval lapses instead of running blind.
    # approved -> failed only when the stored request no longer matches what the audit chain recorded
    # for it (its arguments, policy version or approval were changed in the database): never run.
    Status.APPROVED: frozenset({Status.EXECUTING, Status.CANCELLED, Status.EXPIRED, Status.FAILED}),
    # executing -> approved only when the start is abandoned before anything was forwarded (the agent left
    # in between): the approval stands and the call can still be picked up, and it still runs at most once.
    # executing -> outcome_unknown when whoever began the execution stopped renewing its lease (it died):
    # nobody can say whether the upstream ran it, so it is neither retried nor reported as not run.
    Status.EXECUTING: frozenset({Status.EXECUTED, Status.FAILED, Status.APPROVED, Status.OUTCOME_UNKNOWN}),
}

TERMINAL: frozenset[Status] = frozenset(
    {Status.EXECUTED, Status.FAILED, Status.REJECTED, Status.EXPIRED, Status.CANCELLED, Status.OUTCOME_UNKNOWN}
)


class EndReason(StrEnum):
    """Why a request reached its terminal state: stored in the same compare-and-set that ends it.

    The status says what became of the call; this says why, so every channel tells one story.
    """

    EXECUTED = "executed"  # approved and run; the upstream answered
    FAILED = "failed"  # approved and run; the upstream answered with an error (or could not be reached)
    REJECTED = "rejected"  # an approver said no
    TIMED_OUT = "timed_out"  # nobody decided before the request expired
    NOT_PICKED_UP = "not_picked_up"  # approved, but the agent never came back for it within the pick-up window
    WITHDRAWN = "withdrawn"  # the agent cancelled its call
    # A policy change now denies or hides the call, before it ran (the request's `error` holds the rule's message).
    POLICY_WITHDRAWN = "policy_withdrawn"
    INTERRUPTED = "interrupted"  # the gateway executing it stopped before recording what the upstream did
    NOT_AS_APPROVED = "not_as_approved"  # the stored request differs from what the audit chain says was approved


# The end reasons each terminal state can have.
END_REASONS: Mapping[Status, frozenset[EndReason]] = {
    Status.EXECUTED: frozenset({EndReason.EXECUTED}),
    Status.FAILED: frozenset({EndReason.FAILED, EndReason.NOT_AS_APPROVED}),
    Status.REJECTED: frozenset({EndReason.REJECTED}),
    Status.EXPIRED: frozenset({EndReason.TIMED_OUT, EndReason.NOT_PICKED_UP}),
    Status.CANCELLED: frozenset({EndReason.WITHDRAWN, EndReason.POLICY_WITHDRAWN}),
    Status.OUTCOME_UNKNOWN: frozenset({EndReason.INTERRUPTED}),
}


def can_transition(old: Status, new: Status) -> bool:
    return new in TRANSITIONS.get(old, frozenset())
