"""Schema migrations: a 0.1.0 database upgrades to head with every row and the audit chain intact.

The 0.1.0 database is checked in (tests/fixtures, made by the real service before migrations
existed); on PostgreSQL the same rows are loaded into revision one's tables. Everything is
driven through `countersign db …`, `countersign audit verify` and a running gateway.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, MetaData
from sqlmodel import SQLModel

from approvals import migrations
from approvals.approvers import Approver, ApproverDirectory
from approvals.db import Database
from approvals.service import ApprovalService
from approvals.states import Status
from gateway import cli
from gateway.audit_keeper import audit_files
from tests.fixtures.make_revision_one import SQLITE_FIXTURE
from tests.fixtures.revision_one import expected_rows, load_into, rows_in, upgraded
from tests.harness import running_gateway


async def run(*args: str) -> tuple[int, str, str]:
    """`countersign ARGS…` in a thread (it runs its own event loop); its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with redirect_stdout(out), redirect_stderr(err):
            return cli.main(list(args))

    code = await anyio.to_thread.run_sync(call)
    return code, out.getvalue(), err.getvalue()


async def test_a_database_made_before_migrations_upgrades_to_head_with_every_row_and_the_chain_intact(
    database_url: str,
) -> None:
    await load_into(database_url)
    fixture = expected_rows()
    events = len(fixture["audit_event"])
    head_hash = fixture["audit_event"][-1]["hash"]

    code, out, _ = await run("db", "current", "--database-url", database_url)
    # Exit 1 once there is a revision after the first: then serve would refuse this database.
    assert code == (0 if migrations.head() == migrations.REVISION_ONE else 1)
    assert out.strip() == (
        f"no revision recorded (made before migrations): revision {migrations.REVISION_ONE}; "
        f"head is {migrations.head()}"
    )

    code, out, err = await run("db", "upgrade", "--database-url", database_url)
    assert code == 0, err
    assert f"{migrations.head()} (head)" in out

    code, out, _ = await run("db", "current", "--database-url", database_url)
    assert (code, out.strip()) == (0, f"{migrations.head()} (head)")
    assert await rows_in(database_url) == upgraded(fixture)
    code, out, _ = await run("audit", "verify", "--database-url", database_url)
    assert code == 0
    assert out.strip() == (
        f"audit chain intact: {events} events verified, head #{events} {head_hash}; "
        "no event is keyed (checked by plain SHA-256 only)"
    )

    # The upgraded database is one the service works on: the half-approved quorum request completes.
    db = Database(database_url)
    try:
        [quorum] = [r for r in fixture["approval_request"] if r["quorum"] == 2]
        # A minute after the fixture made it: well within its hour, whenever the test runs.
        when = datetime.fromisoformat(quorum["created_at"]) + timedelta(minutes=1)
        bob = Approver("bob", groups=("traders",))
        service = ApprovalService(db, ApproverDirectory([bob]), clock=lambda: when)
        outcome = await service.approve(quorum["id"], bob, "api")
        assert outcome.request.status == Status.APPROVED
        report = await service.history.verify()
        assert report.ok and report.checked > events, report.describe()
        # Revision 0002 says why each ended request ended, from what the row already said.
        ended = {
            r["id"]: (r["status"], r["decided_by"]) for r in fixture["approval_request"] if r["status"] != "pending"
        }
        for request_id, (status, decided_by) in ended.items():
            view = await service.get(request_id)
            if status == "approved":
                assert view.ended_because is None
            elif status == "expired":
                assert view.ended_because == ("timed_out" if decided_by in (None, "timeout") else "not_picked_up")
            else:
                assert view.ended_because == {"cancelled": "withdrawn"}.get(status, status), (status, view)
    finally:
        await db.dispose()


async def test_upgrading_a_database_already_at_head_changes_nothing(database_url: str) -> None:
    await load_into(database_url)
    assert (await run("db", "upgrade", "--database-url", database_url))[0] == 0
    code, out, _ = await run("db", "upgrade", "--database-url", database_url)
    assert (code, out.strip()) == (0, f"the database schema is already at {migrations.head()} (head); nothing to do")
    assert await rows_in(database_url) == upgraded(expected_rows())


async def test_db_upgrade_creates_an_empty_database_at_head(database_url: str) -> None:
    code, out, _ = await run("db", "current", "--database-url", database_url)
    assert (code, out.strip()) == (0, f"empty: no schema yet (a gateway creates it at {migrations.head()} on start)")
    code, out, _ = await run("db", "upgrade", "--database-url", database_url)
    assert (code, out.strip()) == (0, f"created the database schema at {migrations.head()} (head)")
    code, out, _ = await run("db", "current", "--database-url", database_url)
    assert (code, out.strip()) == (0, f"{migrations.head()} (head)")


async def test_a_gateway_serves_a_database_made_before_migrations_once_it_is_upgraded(
    tmp_path: Path, database_url: str
) -> None:
    await load_into(database_url)
    assert (await run("db", "upgrade", "--database-url", database_url))[0] == 0
    pending = {r["id"] for r in expected_rows()["approval_request"] if r["status"] == "pending"}
    async with running_gateway(tmp_path, database_url) as h:
        # From its start on, the gateway keys the events it appends (the older ones stay as they were).
        key_file = audit_files(h.settings).key_file
        served = {r.id: r for r in await h.service.list_requests(limit=100)}
        assert pending <= set(served)
        # The gateway re-arms the old rows' timeouts at start and expires those already past due.
        for request_id in pending:
            request = served[request_id]
            overdue = request.expires_at <= datetime.now(UTC)
            assert request.status == (Status.EXPIRED if overdue else Status.PENDING), request
    code, out, _ = await run("db", "current", "--database-url", database_url)
    assert (code, out.strip()) == (0, f"{migrations.head()} (head)")
    code, out, _ = await run("audit", "verify", "--database-url", database_url, "--key-file", str(key_file))
    assert code == 0 and out.startswith("audit chain intact"), out
    events = len(expected_rows()["audit_event"])
    assert f"events #1-#{events} predate the audit key" in out


def _differences(conn: Connection) -> list[object]:
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "include_name": migrations.described_by_models}
    )
    return list(compare_metadata(context, SQLModel.metadata))


async def test_the_revisions_build_exactly_the_tables_the_models_describe(database_url: str) -> None:
    """Fails when a model changes without a revision beside it (docs/configuration.md, "Adding a revision")."""
    db = Database(database_url)
    try:
        await db.create_schema()
        async with db.read() as conn:
            assert await conn.run_sync(_differences) == []
    finally:
        await db.dispose()


def _reflected(conn: Connection) -> MetaData:
    metadata = MetaData()
    metadata.reflect(conn, only=sorted(migrations.REVISION_ONE_TABLES))
    return metadata


async def test_revision_one_is_the_schema_the_gateway_made_before_migrations(tmp_path: Path) -> None:
    """What revision one builds and what 0.1.0's create_all built agree, so stamping the latter is honest."""
    made_then = Database(f"sqlite:///{SQLITE_FIXTURE}")
    built_now = Database(f"sqlite:///{tmp_path / 'revision-one.db'}")
    try:
        async with made_then.read() as conn:
            then = await conn.run_sync(_reflected)
        async with built_now.schema_transaction() as conn:
            await conn.run_sync(lambda sync: command.upgrade(migrations.config(sync), migrations.REVISION_ONE))
        async with built_now.read() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), then)
            )
        assert differences == []
    finally:
        await made_then.dispose()
        await built_now.dispose()
