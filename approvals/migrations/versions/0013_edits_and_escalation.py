"""Approving with edits, and escalation: what a request may be changed in, what it was before, who is asked later.

`editable` lists the argument paths an approver may change; an approval with changes keeps the agent's
call in `original_arguments` / `original_sha256` and the changes in `edits`. `escalation` holds the
steps that make more approvers eligible when nobody decides, `escalated` how many were taken (one
conditional UPDATE per step, so each happens once whatever the number of replicas), and
`remind_before_seconds` the tool's own reminder lead time.

Revision ID: 0013
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("approval_request") as batch:
        batch.add_column(sa.Column("editable", sa.Text(), nullable=True))
        batch.add_column(sa.Column("original_arguments", sa.Text(), nullable=True))
        batch.add_column(sa.Column("original_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("edits", sa.Text(), nullable=True))
        batch.add_column(sa.Column("escalation", sa.Text(), nullable=True))
        batch.add_column(sa.Column("escalated", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("remind_before_seconds", sa.Float(), nullable=True))
        batch.create_index("ix_approval_request_original_sha256", ["original_sha256"])


def downgrade() -> None:
    with op.batch_alter_table("approval_request") as batch:
        batch.drop_index("ix_approval_request_original_sha256")
        batch.drop_column("remind_before_seconds")
        batch.drop_column("escalated")
        batch.drop_column("escalation")
        batch.drop_column("edits")
        batch.drop_column("original_sha256")
        batch.drop_column("original_arguments")
        batch.drop_column("editable")
