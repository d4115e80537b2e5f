"""The hash-chained audit log, verified by `countersign audit verify` on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from sqlalchemy import select, text

from approvals import audit
from approvals.approvers import Approver, ApproverDirectory
from approvals.audit import Event
from approvals.db import Database
from approvals.models import AuditEvent
from approvals.service import ApprovalService
from gateway import cli
from tests.factories import HELD_CANCEL

ALICE = Approver("alice", groups=("traders",))
EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]


async def write_history(url: str) -> int:
    """A small but real history: allowed and denied calls, and a held call that alice approves."""
    db = Database(url)
    try:
        await db.create_schema()
        service = ApprovalService(db, ApproverDirectory([ALICE]))
        await service.record(
            Event(kind="call.allowed", outcome="allowed", message="forwarded", agent="alpha", tool="ibkr_get_portfolio")
        )
        await service.record(
            Event(kind="call.denied", outcome="denied", message="[POLICY DENIED] hidden", agent="alpha", tool="x")
        )
        request = await service.create(HELD_CANCEL)
        await service.approve(request.id, ALICE, "api", "checked with the desk")
        await service.record(
            Event(kind="call.allowed", outcome="allowed", message="forwarded", agent="bravo", tool="ibkr_get_orders")
        )
        async with db.read() as conn:
            return await audit.count(conn)
    finally:
        await db.dispose()


async def run_sql(url: str, statement: str) -> None:
    db = Database(url)
    try:
        async with db.write() as conn:
            await conn.execute(text(statement))
    finally:
        await db.dispose()


async def countersign(capsys: pytest.CaptureFixture[str], args: Sequence[str]) -> tuple[int, str]:
    """Run the CLI in a worker thread (it runs its own event loop); return its exit code and all its output."""
    code = await anyio.to_thread.run_sync(cli.main, list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


async def test_an_intact_chain_verifies_and_reports_how_many_events_it_checked(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    events = await write_history(database_url)
    assert events == 5

    code, output = await countersign(capsys, ["audit", "verify", "--database-url", database_url])

    assert code == 0, output
    assert "audit chain intact: 5 events verified" in output
    # The whole head hash, to keep outside the database: a shortened one could not catch a truncation.
    head = output.split(", head #5 ", 1)[1].split(";")[0]
    db = Database(database_url)
    try:
        async with db.read() as conn:
            last = (await conn.execute(select(EVENTS.c.hash).order_by(EVENTS.c.seq.desc()).limit(1))).scalar_one()
    finally:
        await db.dispose()
    assert head == last and len(head) == 64


async def test_a_row_whose_message_was_edited_is_named_by_its_sequence_number(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_history(database_url)
    await run_sql(database_url, "UPDATE audit_event SET message = 'nothing to see here' WHERE seq = 3")

    code, output = await countersign(capsys, ["audit", "verify", "--database-url", database_url])

    assert code == 1, output
    assert "BROKEN at event #3" in output
    assert "the row was altered" in output
    assert "2 verified before it" in output


async def test_a_deleted_row_in_the_middle_is_reported_as_a_gap(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_history(database_url)
    await run_sql(database_url, "DELETE FROM audit_event WHERE seq = 4")

    code, output = await countersign(capsys, ["audit", "verify", "--database-url", database_url])

    assert code == 1, output
    assert "BROKEN at event #4" in output
    assert "event #4 is missing (next present is #5)" in output


async def test_an_edited_row_given_a_fresh_hash_still_breaks_the_link_to_the_next_event(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_history(database_url)
    db = Database(database_url)
    try:
        async with db.write() as conn:
            row = dict((await conn.execute(select(EVENTS).where(EVENTS.c.seq == 2))).mappings().one())
            row["message"] = "forwarded"
            # A forger who knows the hashing scheme re-hashes the row they edited.
            forged = audit.row_digest(row, None)
            await conn.execute(
                text("UPDATE audit_event SET message = :m, hash = :h WHERE seq = 2"),
                {"m": row["message"], "h": forged},
            )
    finally:
        await db.dispose()

    code, output = await countersign(capsys, ["audit", "verify", "--database-url", database_url])

    assert code == 1, output
    assert "BROKEN at event #3" in output
    assert "prev_hash does not match" in output


async def test_verify_finds_the_database_through_the_config_file_without_the_gateways_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_history(f"sqlite:///{tmp_path / 'data' / 'countersign.db'}")
    config = tmp_path / "countersign.toml"
    config.write_text(
        '[server]\ndatabase_url = "sqlite:///data/countersign.db"\n\n'
        '[[agents]]\nname = "alpha"\ntoken = "${AN_AGENT_SECRET_THE_AUDITOR_LACKS}"\n'
    )

    code, output = await countersign(capsys, ["audit", "verify", "--config", str(config)])

    assert code == 0, output
    assert "5 events verified" in output


async def test_verifying_a_database_without_an_audit_log_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sqlite3.connect(tmp_path / "empty.db").close()
    url = f"sqlite:///{tmp_path / 'empty.db'}"

    code, output = await countersign(capsys, ["audit", "verify", "--database-url", url])

    assert code == 2, output
    assert "no audit log" in output
    assert "Traceback" not in output


async def test_verifying_a_database_file_that_does_not_exist_says_so_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo.db"

    code, output = await countersign(capsys, ["audit", "verify", "--database-url", f"sqlite:///{missing}"])

    assert (code, output.strip()) == (2, f"error: no database file at {missing}")
    assert not missing.exists()


async def test_verifying_an_unreachable_database_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket_nobody_listens_on() as port:
        url = f"postgresql://postgres@127.0.0.1:{port}/nothing"
        code, output = await countersign(capsys, ["audit", "verify", "--database-url", url])

    assert code == 2, output
    assert "database is unavailable" in output
    assert "Traceback" not in output


@contextmanager
def socket_nobody_listens_on() -> Iterator[int]:
    """A loopback port that is bound (so nothing else takes it) but not listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
