"""Read-only snapshots the service hands to channels, so no caller ever holds an ORM row."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from approvals.audit import as_utc
from approvals.states import TERMINAL, Status


@dataclass(frozen=True)
class NewRequest:
    """Everything needed to park a call."""

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


@dataclass(frozen=True)
class DecisionView:
    approver: str
    channel: str
    verdict: str
    reason: str | None
    at: datetime


@dataclass(frozen=True)
class RequestView:
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
    created_at: datetime
    expires_at: datetime
    status: Status
    status_changed_at: datetime
    decided_by: str | None
    decided_via: str | None
    decision_reason: str | None
    agent_waiting: bool
    result_json: str | None
    error: str | None
    slack_ts: str | None

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
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> RequestView:
        return cls(
            id=row["id"],
            upstream=row["upstream"],
            tool=row["tool"],
            upstream_tool=row["upstream_tool"],
            arguments_json=row["arguments"],
            arguments_sha256=row["arguments_sha256"],
            agent=row["agent"],
            session_id=row["session_id"],
            rule=row["rule"],
            reason=row["reason"],
            approvers=tuple(json.loads(row["approvers"])),
            quorum=row["quorum"],
            channels=tuple(json.loads(row["channels"])),
            timeout_seconds=row["timeout_seconds"],
            reject_reason_required=bool(row["reject_reason_required"]),
            slack_channel=row["slack_channel"],
            pickup_seconds=row["pickup_seconds"],
            run_unattended=bool(row["run_unattended"]),
            created_at=as_utc(row["created_at"]),
            expires_at=as_utc(row["expires_at"]),
            status=Status(row["status"]),
            status_changed_at=as_utc(row["status_changed_at"]),
            decided_by=row["decided_by"],
            decided_via=row["decided_via"],
            decision_reason=row["decision_reason"],
            agent_waiting=bool(row["agent_waiting"]),
            result_json=row["result"],
            error=row["error"],
            slack_ts=row["slack_ts"],
        )


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
