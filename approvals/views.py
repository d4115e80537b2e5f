"""Read-only snapshots the service hands to channels, so no caller ever holds an ORM row."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from approvals.audit import as_utc
from approvals.states import TERMINAL, EndReason, Status


@dataclass(frozen=True)
class NewRequest:
    """Everything needed to park a call, and later to carry it out without consulting anything else."""

    upstream: str
    tool: str
    upstream_tool: str
    arguments: Mapping[str, Any]
    agent: str
    rule: str
    reason: str
    timeout_seconds: float
    approvers: tuple[str, ...] = ()
    quorum: int = 1
    channels: tuple[str, ...] = ("web", "slack")
    reject_reason_required: bool = False
    slack_channel: str | None = None
    session_id: str | None = None
    pickup_seconds: float = 600.0
    run_unattended: bool = False
    max_hold_seconds: float | None = None
    keep_on_cancel: bool = False
    # The content hash of the policy that held the call: the approval is bound to it.
    policy_version: str | None = None


@dataclass(frozen=True)
class DecisionView:
    approver: str
    channel: str
    verdict: str
    reason: str | None
    at: datetime


def _tuple(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


@dataclass(frozen=True)
class RequestView:
    """One approval request as stored. The fields are listed here once; `from_row` maps them from the columns."""

    id: str
    upstream: str
    tool: str
    upstream_tool: str
    arguments_json: str
    arguments_sha256: str
    agent: str
    session_id: str | None
    rule: str
    reason: str
    approvers: tuple[str, ...]
    quorum: int
    channels: tuple[str, ...]
    timeout_seconds: float
    reject_reason_required: bool
    slack_channel: str | None
    pickup_seconds: float
    run_unattended: bool
    max_hold_seconds: float | None
    keep_on_cancel: bool
    created_at: datetime
    expires_at: datetime
    status: Status
    status_changed_at: datetime
    decided_by: str | None
    decided_via: str | None
    decision_reason: str | None
    ended_because: EndReason | None
    agent_waiting: bool
    result_json: str | None
    error: str | None
    slack_ts: str | None
    slack_synced_seq: int | None
    reminded_at: datetime | None
    policy_version: str | None

    @property
    def arguments(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.arguments_json)
        return loaded

    @property
    def result(self) -> dict[str, Any] | None:
        if self.result_json is None:
            return None
        loaded: dict[str, Any] = json.loads(self.result_json)
        return loaded

    @property
    def pickup_deadline(self) -> datetime | None:
        """Until when an approved call waits for its agent to come back; None unless approved."""
        if self.status != Status.APPROVED:
            return None
        return self.status_changed_at + timedelta(seconds=self.pickup_seconds)

    @property
    def deadline(self) -> datetime:
        """When the request's current wait ends: its expiry while pending, its pick-up window once approved."""
        return self.pickup_deadline or self.expires_at

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> RequestView:
        values: dict[str, Any] = {}
        for name in _REQUEST_FIELDS:
            raw = row[_COLUMN_OF.get(name, name)]
            load = _LOAD.get(name)
            values[name] = raw if raw is None or load is None else load(raw)
        return cls(**values)


_REQUEST_FIELDS = tuple(f.name for f in fields(RequestView))
# Where a field's column has another name, and how a column's value becomes the field's (None stays None).
_COLUMN_OF = {"arguments_json": "arguments", "result_json": "result"}
_LOAD: dict[str, Callable[[Any], Any]] = {
    "approvers": _tuple,
    "channels": _tuple,
    "reject_reason_required": bool,
    "run_unattended": bool,
    "keep_on_cancel": bool,
    "agent_waiting": bool,
    "status": Status,
    "ended_because": EndReason,
    **{name: as_utc for name in ("created_at", "expires_at", "status_changed_at", "reminded_at")},
}


@dataclass(frozen=True)
class DecisionOutcome:
    request: RequestView
    approvals: int
    needed: int
    message: str

    @property
    def decided(self) -> bool:
        return self.request.status != Status.PENDING


@dataclass(frozen=True)
class AuditEventView:
    seq: int
    at: datetime
    kind: str
    outcome: str
    agent: str | None
    tool: str | None
    upstream: str | None
    request_id: str | None
    actor: str | None
    channel: str | None
    message: str
    arguments: str | None
    detail: dict[str, Any]
    hash: str

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> AuditEventView:
        return cls(
            seq=row["seq"],
            at=as_utc(row["at"]),
            kind=row["kind"],
            outcome=row["outcome"],
            agent=row["agent"],
            tool=row["tool"],
            upstream=row["upstream"],
            request_id=row["request_id"],
            actor=row["actor"],
            channel=row["channel"],
            message=row["message"],
            arguments=row["arguments"],
            detail=json.loads(row["detail"]),
            hash=row["hash"],
        )
