"""Revision one: the schema as the gateway created it before migrations existed (0.1.0).

Written out table by table rather than derived from the models, so that changing the models
never changes what this revision builds. A database made by the pre-Alembic `create_all` has
exactly these tables, indexes and constraints; such a database is stamped with this revision
without being touched. Names are left to the database where `create_all` left them (primary
keys, the foreign key), so that both kinds of database agree.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "approval_request",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("upstream", sa.String(), nullable=False),
        sa.Column("tool", sa.String(), nullable=False),
        sa.Column("upstream_tool", sa.String(), nullable=False),
        sa.Column("arguments", sa.Text(), nullable=False),
        sa.Column("arguments_sha256", sa.String(length=64), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("session_id", sa.String(), nullable=True),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("approvers", sa.String(), nullable=False),
        sa.Column("quorum", sa.Integer(), nullable=False),
        sa.Column("channels", sa.String(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=False),
        sa.Column("reject_reason_required", sa.Boolean(), nullable=False),
        sa.Column("slack_channel", sa.String(), nullable=True),
        sa.Column("pickup_seconds", sa.Float(), nullable=False),
        sa.Column("run_unattended", sa.Boolean(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("expires_at", _ts(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_changed_at", _ts(), nullable=False),
        sa.Column("decided_by", sa.String(), nullable=True),
        sa.Column("decided_via", sa.String(), nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("agent_waiting", sa.Boolean(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("slack_ts", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("agent", "expires_at", "status", "tool"):
        op.create_index(f"ix_approval_request_{column}", "approval_request", [column])

    op.create_table(
        "audit_event",
        # Numbered by the appender under the chain lock, never by the database.
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("agent", sa.String(), nullable=True),
        sa.Column("tool", sa.String(), nullable=True),
        sa.Column("upstream", sa.String(), nullable=True),
        sa.Column("request_id", sa.String(), nullable=True),
        sa.Column("actor", sa.String(), nullable=True),
        sa.Column("channel", sa.String(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("arguments", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    for column in ("at", "kind", "request_id"):
        op.create_index(f"ix_audit_event_{column}", "audit_event", [column])
    for column in ("actor", "agent", "at", "outcome", "tool"):
        op.create_index(f"ix_audit_event_{column}_seq", "audit_event", [column, "seq"])

    op.create_table(
        "approval_decision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("approver", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["approval_request.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id", "approver", "verdict", name="uq_decision_once"),
    )
    op.create_index("ix_approval_decision_request_id", "approval_decision", ["request_id"])


def downgrade() -> None:
    op.drop_table("approval_decision")
    op.drop_table("audit_event")
    op.drop_table("approval_request")
