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


TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.APPROVED, Status.REJECTED, Status.EXPIRED, Status.CANCELLED}),
    # An approved call is forwarded only for an agent that is still there to receive the result;
    # if the agent went away before execution began, the approval lapses instead of running blind.
    # approved -> failed only when the stored request no longer matches what the audit chain recorded
    # for it (its arguments, policy version or approval were changed in the database): never run.
    Status.APPROVED: frozenset({Status.EXECUTING, Status.CANCELLED, Status.EXPIRED, Status.FAILED}),
    # executing -> approved only when the start is abandoned before anything was forwarded (the agent left
    # in between): the approval stands and the call can still be picked up, and it still runs at most once.
    Status.EXECUTING: frozenset({Status.EXECUTED, Status.FAILED, Status.APPROVED}),
}

TERMINAL: frozenset[Status] = frozenset(
    {Status.EXECUTED, Status.FAILED, Status.REJECTED, Status.EXPIRED, Status.CANCELLED}
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
    NOT_AS_APPROVED = "not_as_approved"  # the stored request differs from what the audit chain says was approved


# The end reasons each terminal state can have.
END_REASONS: Mapping[Status, frozenset[EndReason]] = {
    Status.EXECUTED: frozenset({EndReason.EXECUTED}),
    Status.FAILED: frozenset({EndReason.FAILED, EndReason.NOT_AS_APPROVED}),
    Status.REJECTED: frozenset({EndReason.REJECTED}),
    Status.EXPIRED: frozenset({EndReason.TIMED_OUT, EndReason.NOT_PICKED_UP}),
    Status.CANCELLED: frozenset({EndReason.WITHDRAWN}),
}


def can_transition(old: Status, new: Status) -> bool:
    return new in TRANSITIONS.get(old, frozenset())
