"""Tables: approval requests, decisions, the hash-chained audit log, the channels' outbox and quota slots."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, Text, UniqueConstraint, false
from sqlmodel import Field, SQLModel


def _ts(*, index: bool = False, nullable: bool = False) -> datetime:
    column = Column(DateTime(timezone=True), index=index, nullable=nullable)
    return Field(sa_column=column)  # type: ignore[no-any-return]


class ApprovalRequest(SQLModel, table=True):
    __tablename__ = "approval_request"
    # A park counts the agent's pending requests (max_pending_per_agent): a range of this index, counted without
    # reading a row; it also serves every read by status alone (migration 0017).
    __table_args__ = (Index("ix_approval_request_status_agent", "status", "agent"),)

    id: str = Field(primary_key=True, max_length=64)
    upstream: str
    tool: str = Field(index=True)
    upstream_tool: str
    arguments: str = Field(sa_column=Column(Text, nullable=False))
    # Indexed, like `original_sha256`: a repeat of a call finds the request it belongs to (reads.find_repeat).
    arguments_sha256: str = Field(max_length=64, index=True)
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
    status: str = Field(max_length=16)
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
    # Set by whichever process wins the right to send the reminder, so it is sent once.
    reminded_at: datetime | None = _ts(nullable=True)
    # The call's identity (agent, tool, arguments digest) while the request is open (approvals.states.OPEN),
    # NULL once it ends: the unique index lets one open request exist per call, however many arrive at once.
    open_key: str | None = Field(default=None, max_length=64, unique=True, index=True)
    # Which gateway process began the execution, and until when its lease holds: it renews the lease while
    # it waits for the upstream, so a request whose lease ran out was left behind by a process that died.
    executing_by: str | None = Field(default=None, max_length=200)
    lease_until: datetime | None = _ts(nullable=True)
    # The content hash of the policy that held the call (None: made before policies were versioned).
    policy_version: str | None = Field(default=None, max_length=64)
    # What approvers are shown beside the arguments, fixed when the request is made: the policy's sentence for
    # it, the agent's own reason, and the results of the policy's context lookups (a JSON list).
    title: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    agent_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    context: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The standing approval the policy offered for this call (approvals.grant_terms.GrantOffer, JSON); None: none.
    grant_offer: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Which argument paths an approver may change (a JSON list; None: none). Once approved with changes,
    # `arguments` holds the approved (edited) call; the agent's own call and the changes are kept here.
    editable: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    original_arguments: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    original_sha256: str | None = Field(default=None, max_length=64, index=True)
    edits: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Who else is asked when nobody decides (a JSON list of steps), how many steps were taken, and the tool's
    # own reminder lead time (None: the channel's).
    escalation: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    escalated: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    remind_before_seconds: float | None = None


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
        # The activity chart counts each outcome per time bucket: index ranges, counted without reading a row.
        Index("ix_audit_event_outcome_at", "outcome", "at"),
        Index("ix_audit_event_tool_seq", "tool", "seq"),
        Index("ix_audit_event_agent_seq", "agent", "seq"),
        Index("ix_audit_event_outcome_seq", "outcome", "seq"),
        Index("ix_audit_event_actor_seq", "actor", "seq"),
    )

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: datetime = _ts()
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


class WebSession(SQLModel, table=True):
    """A signed-in web session, kept where every replica reads it, so ending it ends it everywhere at once.

    The browser's cookie holds only the signed session id; `id` here is that id's SHA-256, so a
    copy of this table signs nobody in.
    """

    __tablename__ = "web_session"

    id: str = Field(primary_key=True, max_length=64)
    approver: str = Field(index=True)
    # A fingerprint of the approver's password hash at sign-in: a new password ends the session.
    credential: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts()
    expires_at: datetime = _ts()
    ended_at: datetime | None = _ts(nullable=True)
    # "signed out", "password changed", "approver removed"; None while it stands.
    ended_because: str | None = Field(default=None, max_length=32)


class OutboxItem(SQLModel, table=True):
    """Work a channel owes one request (its message kept true, its reminder), claimed by one replica at a time.

    `wanted_seq` is the newest change the channel must show, `done_seq` the newest it has shown; the
    item is due while `done_seq < wanted_seq` and `due_at` has come. A replica claims it by writing a
    fresh `lease_token` and `lease_until`; when that replica dies the lease runs out and another one
    takes the item over. See approvals/outbox.py.
    """

    __tablename__ = "channel_outbox"
    __table_args__ = (Index("ix_channel_outbox_due", "channel", "due_at"),)

    channel: str = Field(primary_key=True, max_length=32)
    request_id: str = Field(primary_key=True, max_length=64, foreign_key="approval_request.id")
    kind: str = Field(primary_key=True, max_length=16)
    wanted_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    done_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    # When the work may start; None while there is nothing to do (so the due index holds only live work).
    due_at: datetime | None = _ts(nullable=True)
    lease_token: str | None = Field(default=None, max_length=32)
    lease_until: datetime | None = _ts(nullable=True)
    # Bumped by a replica that wrote to the channel after losing its lease: the holder's work is then redone.
    fence: int = 0
    # A digest of what the channel shows now, so a change that alters nothing visible costs no call.
    shown: str | None = Field(default=None, max_length=64)
    # When a post went out whose answer was not recorded (the poster may have died): look before posting again.
    attempted_at: datetime | None = _ts(nullable=True)


class QuotaSlot(SQLModel, table=True):
    """One call counted against one quota bucket, shared by every replica (PostgreSQL; see gateway/shared_quotas.py).

    Times are seconds since the epoch, the way the limiter counts them.
    """

    __tablename__ = "quota_slot"
    __table_args__ = (Index("ix_quota_slot_bucket", "counter", "scope", "scope_key", "taken_at"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    counter: str
    scope: str = Field(max_length=16)
    scope_key: str
    taken_at: float
    # The longest window of the limits that took it: it counts as held (`usage`) that long.
    window_seconds: float
    reservation: str = Field(index=True, max_length=32)
    # Set while the call that took it is parked on a request: given back if the request ends unexecuted.
    request_id: str | None = Field(default=None, index=True, max_length=64)


class ApprovalGrant(SQLModel, table=True):
    """A standing approval: calls of one agent and tool with the same key arguments run without asking.

    Made with the approval of `request_id`, by `approver`. `uses` is counted by one conditional UPDATE
    per call (approvals/grants.py), so a revoked, used-up or expired grant stops on every replica at once.
    """

    __tablename__ = "approval_grant"
    __table_args__ = (Index("ix_approval_grant_match", "agent", "tool", "key_sha256"),)

    id: str = Field(primary_key=True, max_length=64)
    request_id: str = Field(index=True, max_length=64, foreign_key="approval_request.id")
    agent: str
    tool: str
    # The argument names the grant is keyed by (JSON list), or NULL for all of them.
    key_names: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    key_sha256: str = Field(max_length=64)
    # The approved call's arguments, shown to approvers beside the key.
    arguments: str = Field(sa_column=Column(Text, nullable=False))
    approver: str
    channel: str = Field(max_length=16)
    created_at: datetime = _ts()
    expires_at: datetime = _ts()
    max_uses: int
    uses: int = 0
    revoked_at: datetime | None = _ts(nullable=True)
    revoked_by: str | None = None
    policy_version: str | None = Field(default=None, max_length=64)
