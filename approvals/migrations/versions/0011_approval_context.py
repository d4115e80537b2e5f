"""What the approver is shown, stored with the request: the policy's context lookups, its sentence, the agent's reason.

Each is written once, when the request is made, so every channel (and the audit) shows the same facts.

Revision ID: 0011
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("approval_request") as batch:
        batch.add_column(sa.Column("title", sa.Text(), nullable=True))
        batch.add_column(sa.Column("agent_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("context", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("approval_request") as batch:
        batch.drop_column("context")
        batch.drop_column("agent_reason")
        batch.drop_column("title")
