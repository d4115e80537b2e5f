"""An index on (outcome, at) for the audit page's activity chart, in place of the one on `at` alone.

The chart counts each outcome per time bucket over a range: with this index every count is a
range of index entries, counted without reading a row. The index on `at` alone is dropped:
(at, seq) serves every query that used it, so appends keep the same number of indexes.

Revision ID: 0015
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision: str = "0015"
down_revision: str | None = "0013"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_audit_event_outcome_at", "audit_event", ["outcome", "at"])
    op.drop_index("ix_audit_event_at", table_name="audit_event")


def downgrade() -> None:
    op.create_index("ix_audit_event_at", "audit_event", ["at"])
    op.drop_index("ix_audit_event_outcome_at", table_name="audit_event")
