"""Requests that carry their own hold settings, say why they ended, and claim their side effects.

- `max_hold_seconds`, `keep_on_cancel`: the hold settings, fixed when the request is made, so the
  current policy is never consulted again for an existing request.
- `ended_because`: why a terminal request ended, stored by the compare-and-set that ended it.
  Existing terminal rows are filled in from what they already say; the pre-0002 sentinel
  `decided_by = 'timeout'` becomes `ended_because = 'timed_out'` with nobody as the decider.
- `reminded_at`, `slack_synced_seq`: claims that let exactly one process send a reminder, and show
  each change on Slack, however many processes hear it.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("approval_request") as batch:
        batch.add_column(sa.Column("max_hold_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("keep_on_cancel", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("ended_because", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("reminded_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("slack_synced_seq", sa.Integer(), nullable=True))
    op.execute(
        """
        UPDATE approval_request SET ended_because = CASE
            WHEN status = 'executed' THEN 'executed'
            WHEN status = 'failed' THEN 'failed'
            WHEN status = 'rejected' THEN 'rejected'
            WHEN status = 'cancelled' THEN 'withdrawn'
            WHEN status = 'expired' AND (decided_by IS NULL OR decided_by = 'timeout') THEN 'timed_out'
            WHEN status = 'expired' THEN 'not_picked_up'
        END
        WHERE status IN ('executed', 'failed', 'rejected', 'cancelled', 'expired')
        """
    )
    op.execute("UPDATE approval_request SET decided_by = NULL WHERE decided_by = 'timeout'")
    # Requests that were pending before this revision keep their reminder unsent; Slack shows every
    # change again from the next one on.


def downgrade() -> None:
    op.execute(
        "UPDATE approval_request SET decided_by = 'timeout' WHERE ended_because = 'timed_out' AND decided_by IS NULL"
    )
    with op.batch_alter_table("approval_request") as batch:
        batch.drop_column("slack_synced_seq")
        batch.drop_column("reminded_at")
        batch.drop_column("ended_because")
        batch.drop_column("keep_on_cancel")
        batch.drop_column("max_hold_seconds")
