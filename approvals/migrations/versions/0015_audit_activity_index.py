"""The audit log's time index also holds each event's outcome, so the activity chart reads the index alone.

The chart counts events per time bucket and outcome over a time range; with the outcome in the
index entry, a week of a busy gateway is one pass over the index range instead of a row lookup per
event. It replaces the index on `at` alone, which it covers.

Revision ID: 0015
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision: str = "0015"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_audit_event_at_outcome", "audit_event", ["at", "outcome"])
    op.drop_index("ix_audit_event_at", table_name="audit_event")


def downgrade() -> None:
    op.create_index("ix_audit_event_at", "audit_event", ["at"])
    op.drop_index("ix_audit_event_at_outcome", table_name="audit_event")
