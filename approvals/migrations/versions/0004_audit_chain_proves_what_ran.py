"""An audit chain that proves what ran: keyed events, and the policy version on requests and decisions.

- `audit_event.keyed`: the row's hash is an HMAC under the audit key. Every row already in the
  log stays unkeyed (false) and keeps verifying by its plain SHA-256; the gateway keys every row it
  appends from its first start at this revision, so the chain records where keying began.
- `approval_request.policy_version`, `approval_decision.policy_version`: the content hash of the
  policy that held the call; NULL for rows made before.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_event") as batch:
        batch.add_column(sa.Column("keyed", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("approval_request") as batch:
        batch.add_column(sa.Column("policy_version", sa.String(length=64), nullable=True))
    with op.batch_alter_table("approval_decision") as batch:
        batch.add_column(sa.Column("policy_version", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Keyed rows cannot be verified by an older version: downgrading gives up that proof (back up first).
    with op.batch_alter_table("approval_decision") as batch:
        batch.drop_column("policy_version")
    with op.batch_alter_table("approval_request") as batch:
        batch.drop_column("policy_version")
    with op.batch_alter_table("audit_event") as batch:
        batch.drop_column("keyed")
