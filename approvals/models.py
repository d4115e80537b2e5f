"""Tables: approval requests, decisions and the hash-chained audit log."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Column, DateTime, Index, Text, UniqueConstraint, false
from sqlmodel import Field, SQLModel


def _ts(*, index: bool = False, nullable: bool = False) -> datetime:
    column = Column(DateTime(timezone=True), index=index, nullable=nullable)
    return Field(sa_column=column)  # type: ignore[no-any-return]


class ApprovalRequest(SQLModel, table=True):
    __tablename__ = "approval_request"

    id: str = Field(primary_key=True, max_length=64)
    upstream: str
    tool: str = Field(index=True)
    upstream_tool: str
    arguments: str = Field(sa_column=Column(Text, nullable=False))
    arguments_sha256: str = Field(max_length=64)
    agent: str = Field(index=True)
    session_id: str | None = None
    rule: str
    reason: str = Field(sa_column=Column(Text, nullable=False))
    approvers: str  # JSON list of approver names and "group:NAME" entries; empty = any approver
    quorum: int = 1
    channels: str  # JSON list
    timeout_seconds: float
    reject_reason_required: bool = False
    slack_channel: str | None = None
    # After approval, how long an agent that is not waiting has to come back for the result.
    pickup_seconds: float = 600.0
    # Approved calls may run at once even when no agent is waiting (the result is kept for it).
    run_unattended: bool = False
    # How long one agent call may be held before it returns a pending result (None: until decided),
    # and whether an explicit cancel by the agent keeps the request: fixed when the request is made.
    max_hold_seconds: float | None = None
    keep_on_cancel: bool = False
    created_at: datetime = _ts()
    expires_at: datetime = _ts(index=True)
    status: str = Field(index=True, max_length=16)
    status_changed_at: datetime = _ts()
    decided_by: str | None = None
    decided_via: str | None = None
    decision_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Why it ended (approvals.states.EndReason); None while it has not.
    ended_because: str | None = Field(default=None, max_length=32)
    agent_waiting: bool = True
    result: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    slack_ts: str | None = None
    # The newest change whose Slack update some process has claimed: each change is shown by one process.
    slack_synced_seq: int | None = None
    # Set by whichever process wins the right to send the reminder, so it is sent once.
    reminded_at: datetime | None = _ts(nullable=True)
    # The content hash of the policy that held the call (None: made before policies were versioned).
    policy_version: str | None = Field(default=None, max_length=64)


class Decision(SQLModel, table=True):
    __tablename__ = "approval_decision"
    __table_args__ = (UniqueConstraint("request_id", "approver", "verdict", name="uq_decision_once"),)

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(index=True, foreign_key="approval_request.id")
    approver: str
    channel: str
    verdict: str  # approve | reject
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    at: datetime = _ts()
    # The version of the policy under which the request was held: what this decision was made under.
    policy_version: str | None = Field(default=None, max_length=64)


class AuditEvent(SQLModel, table=True):
    """One append-only row per call and per transition. `hash` covers the row and `prev_hash`.

    `keyed` rows are hashed with HMAC-SHA256 under the audit key, so only a holder of the key can
    rewrite them; rows written before the chain was keyed keep their plain SHA-256.
    """

    __tablename__ = "audit_event"
    # The audit page filters on one of these columns and pages by `seq`, newest first: an index on
    # (column, seq) answers "the next 50 with tool = X before #N" without sorting every match
    # (PostgreSQL; in SQLite the rowid makes a one-column index behave the same). See bench/bench_audit.py.
    __table_args__ = (
        Index("ix_audit_event_at_seq", "at", "seq"),
        Index("ix_audit_event_tool_seq", "tool", "seq"),
        Index("ix_audit_event_agent_seq", "agent", "seq"),
        Index("ix_audit_event_outcome_seq", "outcome", "seq"),
        Index("ix_audit_event_actor_seq", "actor", "seq"),
    )

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: datetime = _ts(index=True)
    kind: str = Field(index=True)
    outcome: str
    agent: str | None = None
    tool: str | None = None
    upstream: str | None = None
    request_id: str | None = Field(default=None, index=True)
    actor: str | None = None
    channel: str | None = None
    message: str = Field(sa_column=Column(Text, nullable=False))
    arguments: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    detail: str = Field(sa_column=Column(Text, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)
    keyed: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
