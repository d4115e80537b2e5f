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
    Status.APPROVED: frozenset({Status.EXECUTING, Status.CANCELLED, Status.EXPIRED}),
    # executing -> approved only when the start is abandoned before anything was forwarded (the agent left
    # in between): the approval stands and the call can still be picked up, and it still runs at most once.
    Status.EXECUTING: frozenset({Status.EXECUTED, Status.FAILED, Status.APPROVED}),
}

TERMINAL: frozenset[Status] = frozenset(
    {Status.EXECUTED, Status.FAILED, Status.REJECTED, Status.EXPIRED, Status.CANCELLED}
)


def can_transition(old: Status, new: Status) -> bool:
    return new in TRANSITIONS.get(old, frozenset())
