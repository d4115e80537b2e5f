"""Web sessions stored in the database, so that signing out (or a new password, or a removed approver)
ends a session on every replica at once rather than only in the process that handled it.

Revision ID: 0006
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "web_session",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("approver", sa.String(), nullable=False),
        sa.Column("credential", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_because", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_web_session_approver"), "web_session", ["approver"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_web_session_approver"), table_name="web_session")
    op.drop_table("web_session")
