"""The Alembic environment.

Countersign runs migrations on a connection it hands over in `config.attributes["connection"]`
(inside the transaction that holds the schema lock). A developer's `alembic` command (see
docs/configuration.md, "Adding a revision") has none: it names a database with
`-x url=…` or $COUNTERSIGN_DATABASE_URL and gets the same locked connection from `Database`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from approvals import (
    migrations,
    models,  # noqa: F401  (registers the tables on SQLModel.metadata)
)


def render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render SQLModel's string type as plain `sa.String`, so revisions need nothing but sqlalchemy."""
    if kind == "type" and isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite alters most things only by copying the table; batch operations do that and are
        # plain ALTERs on PostgreSQL, so autogenerate writes them for both.
        render_as_batch=True,
        render_item=render_item,
        compare_type=True,
        include_name=migrations.described_by_models,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_connection(url: str) -> None:
    from approvals.db import Database

    db = Database(url)
    try:
        async with db.schema_transaction() as conn:
            await conn.run_sync(run_on)
    finally:
        await db.dispose()


def database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("COUNTERSIGN_DATABASE_URL")
    if not url:
        raise SystemExit("name the database: alembic -x url=sqlite:///dev.db … (or set COUNTERSIGN_DATABASE_URL)")
    return url


if context.is_offline_mode():
    # `alembic upgrade --sql`: print the SQL for a DBA instead of running it.
    from approvals.db import normalise_url

    context.configure(
        url=normalise_url(database_url()),
        target_metadata=SQLModel.metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    handed_over = context.config.attributes.get("connection")
    if handed_over is not None:
        run_on(handed_over)
    else:
        asyncio.run(run_with_own_connection(database_url()))
