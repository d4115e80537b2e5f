"""Errors of the approval core. Each boundary (HTTP, CLI, MCP) maps them once."""

from __future__ import annotations

from datetime import datetime


class ApprovalError(Exception):
    """Base class for every error the approval service raises on purpose."""


class RequestNotFound(ApprovalError):
    def __init__(self, request_id: str) -> None:
        super().__init__(f"no approval request with id {request_id!r}")
        self.request_id = request_id


class NotAllowed(ApprovalError):
    """The approver may not decide this request."""

    def __init__(self, approver: str, request_id: str, why: str) -> None:
        super().__init__(f"{approver} may not decide request {request_id}: {why}")
        self.approver = approver
        self.request_id = request_id
        self.why = why


class AlreadyDecided(ApprovalError):
    """The request left the state the caller expected; says who moved it and when."""

    def __init__(
        self,
        request_id: str,
        status: str,
        by: str | None,
        at: datetime | None,
        *,
        ended_because: str | None = None,
        summary: str | None = None,
    ) -> None:
        who = f" by {by}" if by else ""
        when = f" at {at.strftime('%Y-%m-%d %H:%M:%S')} UTC" if at else ""
        super().__init__(f"request {request_id} is already {status}{who}{when}")
        self.request_id = request_id
        self.status = status
        self.by = by
        self.at = at
        self.ended_because = ended_because
        # Where the request stands, in the words every channel uses (approvals.story).
        self.summary = summary


class AlreadyOpen(ApprovalError):
    """The same call (agent, tool, arguments) already has an open request: join it, never make a second."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"this call already has an open request, {request_id}")
        self.request_id = request_id


class InvalidDecision(ApprovalError):
    """The decision itself is malformed, e.g. a missing reason where one is required."""


class ArgumentsChanged(ApprovalError):
    """The arguments about to be forwarded are not the ones that were approved."""


class TooManyPending(ApprovalError):
    """The agent already has as many requests waiting for a decision as one agent may have."""

    def __init__(self, agent: str, limit: int) -> None:
        super().__init__(f"agent {agent!r} already has {limit} requests waiting for a decision")
        self.agent = agent
        self.limit = limit


class StoreUnavailable(ApprovalError):
    """The database could not be reached; callers must fail closed."""


class InvalidTransition(ApprovalError):
    """A use case asked for a transition the state table does not allow: a bug, refused rather than written."""


class Unreadable(ApprovalError):
    """A value stored in the database is not what it must be (not finite JSON, an unknown state): never acted on."""
