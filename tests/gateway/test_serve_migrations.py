"""`countersign serve` on an older schema: it refuses, naming the command; with `--migrate` it upgrades, once.

An older schema needs a newer countersign, so the test makes one: a copy of this source tree
with one more revision (a NOT NULL column; on SQLite the table is copied and swapped, the way
batch mode alters most things there). That build runs as real `countersign` processes against
the checked-in 0.1.0 database (tests/fixtures).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout, suppress
from pathlib import Path

import anyio
import httpx2
import pytest
from sqlalchemy import text

from approvals import migrations
from approvals.db import Database
from gateway import cli
from tests.fixtures.revision_one import Rows, expected_rows, load_into, rows_in, upgraded

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
NEXT = "next_release"
AGENT_TOKEN = "agent-token-alpha"

NEXT_REVISION = '''"""A later release's revision, made by tests/gateway/test_serve_migrations.py."""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    recreate = "always" if op.get_bind().dialect.name == "sqlite" else "auto"
    with op.batch_alter_table("approval_request", recreate=recreate) as batch:
        batch.add_column(sa.Column("release_note", sa.Text(), nullable=False, server_default="migrated"))


def downgrade() -> None:
    with op.batch_alter_table("approval_request") as batch:
        batch.drop_column("release_note")
'''


@pytest.fixture
def next_release(tmp_path: Path) -> Path:
    """This source tree plus one revision on top of head: what the next countersign would be."""
    build = tmp_path / "next-release"
    for part in ("approvals", "gateway", "templates", "static"):
        shutil.copytree(REPOSITORY / part, build / part, ignore=shutil.ignore_patterns("__pycache__"))
    versions = build / "approvals" / "migrations" / "versions"
    (versions / f"9999_{NEXT}.py").write_text(NEXT_REVISION.format(revision=NEXT, down=migrations.head()))
    return build


AUDIT_KEY = "the-replicas-shared-audit-key-0123456789"


def write_config(folder: Path, database_url: str, port: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.json").write_text('{"version": "1", "default": "deny", "tools": {}}')
    config = folder / "countersign.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\ndatabase_url = "{database_url}"\n'
        f'[policy]\nfile = "policy.json"\n[[agents]]\nname = "alpha"\ntoken = "{AGENT_TOKEN}"\n'
        # Replicas of one database share one audit key.
        f'[audit]\nkey = "{AUDIT_KEY}"\n'
    )
    return config


def countersign(*args: str) -> list[str]:
    # `python -m`, not the installed script, so that PYTHONPATH picks which source tree runs.
    return [sys.executable, "-m", "gateway.cli", *args]


def environment(build: Path) -> dict[str, str]:
    # The copy comes first on the path, ahead of the installed (editable) source tree; the commands
    # also run in it, since `python -m` puts the working directory before everything.
    return {**os.environ, "PYTHONPATH": str(build)}


async def run_next(build: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await anyio.run_process(countersign(*args), env=environment(build), cwd=build, check=False)


async def run_this(*args: str) -> tuple[int, str, str]:
    """This version's `countersign ARGS…`, in a thread (it runs its own event loop)."""
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with redirect_stdout(out), redirect_stderr(err):
            return cli.main(list(args))

    code = await anyio.to_thread.run_sync(call)
    return code, out.getvalue(), err.getvalue()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(build: Path, config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = countersign("serve", "--migrate", "--config", str(config))
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment(build), cwd=build)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    async with httpx2.AsyncClient(timeout=2) as http:
        with anyio.fail_after(30):
            while True:
                if process.poll() is not None:
                    pytest.fail(f"the gateway exited early:\n{await anyio.Path(log).read_text()}")
                with suppress(httpx2.TransportError):
                    response = await http.get(f"http://127.0.0.1:{port}/healthz")
                    if response.status_code == 200:
                        return
                await anyio.sleep(0.1)


def assert_kept(before: Rows, after: Rows) -> None:
    """Every row is still there. The replicas served for a moment: they may have expired requests past their
    deadline or pick-up window (the expiry fields change) and audited that (events after the old ones)."""
    assert after["approval_decision"] == before["approval_decision"]
    assert after["audit_event"][: len(before["audit_event"])] == before["audit_event"]
    expiry = {"status", "status_changed_at", "decided_by", "agent_waiting"}
    assert len(after["approval_request"]) == len(before["approval_request"])
    for old, new in zip(before["approval_request"], after["approval_request"], strict=True):
        if old["status"] in ("pending", "approved") and new["status"] == "expired":
            old = {k: v for k, v in old.items() if k not in expiry}
            new = {k: v for k, v in new.items() if k not in expiry}
        assert new == old


async def release_notes(url: str) -> set[str]:
    db = Database(url)
    try:
        async with db.read() as conn:
            return set((await conn.execute(text("SELECT release_note FROM approval_request"))).scalars())
    finally:
        await db.dispose()


async def test_serve_refuses_an_older_schema_and_serve_migrate_upgrades_it_once_across_replicas(
    tmp_path: Path, database_url: str, next_release: Path
) -> None:
    await load_into(database_url)
    config = write_config(tmp_path / "one", database_url, free_port())

    before = await run_next(next_release, "db", "current", "--config", str(config))
    assert before.returncode == 1
    assert before.stdout.decode().strip() == (
        f"no revision recorded (made before migrations): revision {migrations.REVISION_ONE}; head is {NEXT}"
    )
    assert f"run: countersign db upgrade --config {config}" in before.stderr.decode()

    refused = await run_next(next_release, "serve", "--config", str(config))
    assert refused.returncode == 2
    message = refused.stderr.decode()
    assert f"the database schema is at revision {migrations.REVISION_ONE}, older than this version's {NEXT}" in message
    assert f"Back up the database, then run: countersign db upgrade --config {config}" in message
    assert "countersign serve --migrate" in message
    # Refusing changed nothing but the record of what the database already was.
    current = await run_next(next_release, "db", "current", "--config", str(config))
    assert current.returncode == 1
    assert current.stdout.decode().strip() == f"{migrations.REVISION_ONE}; head is {NEXT}"
    assert await rows_in(database_url) == expected_rows()

    # Two replicas started together with --migrate: both serve, one of them migrated.
    ports = [free_port(), free_port()]
    configs = [write_config(tmp_path / f"replica-{i}", database_url, port) for i, port in enumerate(ports)]
    logs = [tmp_path / f"replica-{i}.log" for i in range(2)]
    with serving(next_release, configs[0], logs[0]) as first, serving(next_release, configs[1], logs[1]) as second:
        await wait_healthy(ports[0], first, logs[0])
        await wait_healthy(ports[1], second, logs[1])
    printed = [await anyio.Path(log).read_text() for log in logs]
    migrated = f"upgraded the database schema from {migrations.REVISION_ONE} to {NEXT}"
    assert len([text for text in printed if migrated in text]) == 1, "\n---\n".join(printed)

    assert_kept(upgraded(expected_rows()), await rows_in(database_url))
    assert await release_notes(database_url) == {"migrated"}
    code, out, _ = await run_this("audit", "verify", "--config", str(configs[0]))
    assert code == 0 and out.startswith("audit chain intact"), out

    # And this version, older than the database now, refuses it rather than guessing.
    code, out, err = await run_this("db", "current", "--database-url", database_url)
    assert (code, out.strip()) == (1, f"{NEXT}; head is {migrations.head()}")
    assert "newer than this version of countersign knows" in err
    code, _, err = await run_this("serve", "--config", str(config))
    assert code == 2
    assert f"the database schema is at revision {NEXT}, which this version of countersign does not know" in err
