"""Indexes for the reads every park makes: the request a repeat belongs to, and the agent's pending count.

- `arguments_sha256`: a repeat of a call looks for the request with its digest (or, once approved with
  changes, whose `original_sha256` is that digest, already indexed); without it the read went through
  every request of the agent.
- (`status`, `agent`) in place of `status` alone: the pending count of one agent (max_pending_per_agent)
  is a range of the index, counted without reading a row; reads by status alone use its first column.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_approval_request_arguments_sha256", "approval_request", ["arguments_sha256"])
    op.create_index("ix_approval_request_status_agent", "approval_request", ["status", "agent"])
    op.drop_index("ix_approval_request_status", table_name="approval_request")


def downgrade() -> None:
    op.create_index("ix_approval_request_status", "approval_request", ["status"])
    op.drop_index("ix_approval_request_status_agent", table_name="approval_request")
    op.drop_index("ix_approval_request_arguments_sha256", table_name="approval_request")
