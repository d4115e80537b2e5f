"""Work shared by replicas: the channels' outbox and the quota slots live in the database.

- `channel_outbox`: per request and channel, the newest change the channel must show and the
  newest it has shown, claimed by one replica at a time with a lease that runs out if it dies.
  It replaces `approval_request.slack_synced_seq`, which claimed each change once but could not
  hand a change over when its claimer died, nor keep two claimers from both posting.
- `quota_slot`: the sliding-window slots of policy `limits`, counted by every replica alike on
  PostgreSQL (SQLite, a single gateway, keeps them in memory; the table is there but unused).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "channel_outbox",
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("wanted_seq", sa.BigInteger(), nullable=False),
        sa.Column("done_seq", sa.BigInteger(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_token", sa.String(length=32), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fence", sa.Integer(), nullable=False),
        sa.Column("shown", sa.String(length=64), nullable=True),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["request_id"], ["approval_request.id"]),
        sa.PrimaryKeyConstraint("channel", "request_id", "kind"),
    )
    op.create_index("ix_channel_outbox_due", "channel_outbox", ["channel", "due_at"])
    op.create_table(
        "quota_slot",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("counter", sa.String(), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("scope_key", sa.String(), nullable=False),
        sa.Column("taken_at", sa.Float(), nullable=False),
        sa.Column("window_seconds", sa.Float(), nullable=False),
        sa.Column("reservation", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_quota_slot_bucket", "quota_slot", ["counter", "scope", "scope_key", "taken_at"])
    op.create_index("ix_quota_slot_reservation", "quota_slot", ["reservation"])
    op.create_index("ix_quota_slot_request_id", "quota_slot", ["request_id"])
    with op.batch_alter_table("approval_request") as batch:
        batch.drop_column("slack_synced_seq")


def downgrade() -> None:
    with op.batch_alter_table("approval_request") as batch:
        batch.add_column(sa.Column("slack_synced_seq", sa.Integer(), nullable=True))
    op.drop_index("ix_quota_slot_request_id", table_name="quota_slot")
    op.drop_index("ix_quota_slot_reservation", table_name="quota_slot")
    op.drop_index("ix_quota_slot_bucket", table_name="quota_slot")
    op.drop_table("quota_slot")
    op.drop_index("ix_channel_outbox_due", table_name="channel_outbox")
    op.drop_table("channel_outbox")
