"""Standing approvals: the offer a request carries, and the grants approvers make from it.

- `approval_request.grant_offer`: the longest grant and most calls the policy allowed for the call, and
  its key arguments (JSON), fixed when the request is made.
- `approval_grant`: one row per grant; `uses` is counted by a conditional UPDATE on every replica.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("approval_request") as batch:
        batch.add_column(sa.Column("grant_offer", sa.Text(), nullable=True))
    op.create_table(
        "approval_grant",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("tool", sa.String(), nullable=False),
        sa.Column("key_names", sa.Text(), nullable=True),
        sa.Column("key_sha256", sa.String(length=64), nullable=False),
        sa.Column("arguments", sa.Text(), nullable=False),
        sa.Column("approver", sa.String(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(), nullable=True),
        sa.Column("policy_version", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["request_id"], ["approval_request.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_approval_grant_match", "approval_grant", ["agent", "tool", "key_sha256"])
    op.create_index("ix_approval_grant_request_id", "approval_grant", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_approval_grant_request_id", table_name="approval_grant")
    op.drop_index("ix_approval_grant_match", table_name="approval_grant")
    op.drop_table("approval_grant")
    with op.batch_alter_table("approval_request") as batch:
        batch.drop_column("grant_offer")
