"""One open request per call, and a lease on every execution.

- `open_key`: the call's identity (agent, tool, arguments digest) while the request is pending,
  approved or executing, NULL once it has ended; a unique index lets exactly one open request exist
  per call, so identical calls arriving together make one request. Requests already open get their
  key here, the oldest of each call first; a later duplicate made before this revision keeps NULL
  (it stays decidable as before, it just is not the one a repeat joins).
- `executing_by`, `lease_until`: which gateway process began an execution and until when it holds
  it. Requests already `executing` get no lease, so the first gateway to start ends them as
  `outcome_unknown` (whoever was executing them is not running this revision).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_OPEN = ("pending", "approved", "executing")


def _open_key(agent: str, tool: str, arguments_sha256: str) -> str:
    # The same function as approvals.service.open_key; written out so the revision never changes with the code.
    text = json.dumps([agent, tool, arguments_sha256], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def upgrade() -> None:
    with op.batch_alter_table("approval_request") as batch:
        batch.add_column(sa.Column("open_key", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("executing_by", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    requests = sa.table(
        "approval_request",
        sa.column("id", sa.String),
        sa.column("agent", sa.String),
        sa.column("tool", sa.String),
        sa.column("arguments_sha256", sa.String),
        sa.column("status", sa.String),
        sa.column("created_at", sa.DateTime),
        sa.column("open_key", sa.String),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(requests.c.id, requests.c.agent, requests.c.tool, requests.c.arguments_sha256)
        .where(requests.c.status.in_(_OPEN))
        .order_by(requests.c.created_at, requests.c.id)
    ).all()
    taken: set[str] = set()
    for row in rows:
        key = _open_key(row.agent, row.tool, row.arguments_sha256)
        if key in taken:
            continue
        taken.add(key)
        bind.execute(sa.update(requests).where(requests.c.id == row.id).values(open_key=key))
    with op.batch_alter_table("approval_request") as batch:
        batch.create_index("ix_approval_request_open_key", ["open_key"], unique=True)


def downgrade() -> None:
    # Revision 0002 has no such end state: say what it was in the words that revision knows.
    op.execute(
        "UPDATE approval_request SET status = 'failed', ended_because = 'failed', "
        "error = 'outcome unknown: the gateway stopped while executing it' WHERE status = 'outcome_unknown'"
    )
    with op.batch_alter_table("approval_request") as batch:
        batch.drop_index("ix_approval_request_open_key")
        batch.drop_column("lease_until")
        batch.drop_column("executing_by")
        batch.drop_column("open_key")
