"""Keeping the audit chain honest across restarts: its key, the newest head seen, and telling the head.

The chain's events are keyed (approvals.audit): the key comes from `[audit] key` (or
COUNTERSIGN_AUDIT_KEY), else from a key file, generated with 0600 permissions on a first start
beside an SQLite database (so the demo needs no set-up) or where `[audit] key_file` says; a
shared database (PostgreSQL) needs one of them configured, since replicas must share the key.
A gateway also keeps the newest head it has seen in a small state file outside the database;
on start it refuses a database whose chain does not hold that head (emptied, replaced or
restored from an older backup) unless told to accept it, which is audited. The head is written
to the log at start, at stop and every `head_interval`, so it can be kept elsewhere and given
to `countersign audit verify --expect-head`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio

from approvals import audit
from approvals.audit import Event, Head
from approvals.database_url import parse_database_url
from approvals.db import Database
from gateway.audit_settings import KEY_ENV, MIN_KEY_LENGTH
from gateway.config import Settings
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

ACCEPT_FLAG = "--accept-audit-rollback"


class AuditStartRefused(GatewayError):
    """The gateway must not start on this audit log (wrong key, missing key, rolled back)."""


@dataclass(frozen=True)
class AuditFiles:
    key_file: Path
    state_file: Path


def audit_files(settings: Settings) -> AuditFiles:
    """Where the key file and the state file are: as configured, else beside the SQLite database
    (countersign.db.audit-key, .audit-head), else beside the configuration file."""
    sqlite_file = parse_database_url(settings.database_url).sqlite_file
    stem = Path(sqlite_file) if sqlite_file else Path(settings.base_dir) / "countersign"
    configured = settings.audit
    return AuditFiles(
        settings.resolve(configured.key_file) if configured.key_file else Path(f"{stem}.audit-key"),
        settings.resolve(configured.state_file) if configured.state_file else Path(f"{stem}.audit-head"),
    )


def read_key_file(path: Path) -> bytes | None:
    """The key a key file holds; None when there is no such file. Raises AuditStartRefused for a bad one."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditStartRefused(f"cannot read the audit key file {path}: {exc}") from exc
    if len(text) < MIN_KEY_LENGTH:
        raise AuditStartRefused(f"the audit key file {path} holds fewer than {MIN_KEY_LENGTH} characters")
    return text.encode()


def configured_key(settings: Settings) -> tuple[bytes | None, str]:
    """The key the settings give (None: none yet) and where it comes from, for messages."""
    if settings.audit.key:
        return settings.audit.key.encode(), f"[audit] key or {KEY_ENV}"
    path = audit_files(settings).key_file
    return read_key_file(path), f"the key file {path}"


def _generate_key(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another gateway beside this one generated it first: both use that one.
        existing = read_key_file(path)
        assert existing is not None
        return existing
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(key + "\n")
    log.warning(
        "no audit key configured: generated one in %s (mode 0600). Keep a copy apart from the database: "
        "without it the audit log cannot be verified. Set [audit] key or %s to choose the key; replicas "
        "sharing a database must share it.",
        path,
        KEY_ENV,
    )
    return key.encode()


# ---- the state file: the newest head this gateway saw


def read_state(path: Path) -> Head | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Head(int(data["seq"]), str(data["hash"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditStartRefused(
            f"the audit state file {path} cannot be read ({exc}); it records the newest audit event this gateway "
            f"saw. Restore it, or remove it and start with {ACCEPT_FLAG} to trust the database as it is"
        ) from exc


def write_state(path: Path, head: Head, *, force: bool = False) -> None:
    """Record `head` unless a later one is recorded already (`force`: after an accepted rollback)."""
    try:
        current = None if force else read_state(path)
    except AuditStartRefused:
        current = None
    if current is not None and current.seq > head.seq:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    temporary.write_text(json.dumps({"seq": head.seq, "hash": head.hash}) + "\n", encoding="utf-8")
    os.replace(temporary, path)


# ---- at start


async def open_chain(
    settings: Settings, db: Database, *, accept_rollback: bool = False, clock: Callable[[], datetime] | None = None
) -> Head | None:
    """Give `db` its audit key and check the chain before anything is written; the head it starts from.

    Raises AuditStartRefused, saying what to do, when the chain is keyed and there is no key,
    when its newest event was not written with this key, or when the chain does not hold the
    head recorded in the state file (unless `accept_rollback`, which is audited).
    """
    files = audit_files(settings)
    async with db.read() as conn:
        newest = await audit.head(conn)
        newest_row = None if newest is None else await audit.event_at(conn, newest.seq)
    key, source = configured_key(settings)
    if key is None:
        if newest_row is not None and newest_row["keyed"]:
            raise AuditStartRefused(
                f"the audit log is keyed, but no audit key is configured ([audit] key or {KEY_ENV}) and the key "
                f"file {files.key_file} does not exist: restore the key file or configure the key"
            )
        if parse_database_url(settings.database_url).sqlite_file is None and not settings.audit.key_file:
            # Replicas of a shared database would each make up a key of their own: the chain needs one.
            raise AuditStartRefused(
                f"no audit key is configured: with a shared database every replica must use the same key. Set "
                f"[audit] key (or {KEY_ENV}) to a secret of at least {MIN_KEY_LENGTH} characters, or [audit] "
                "key_file to a file the replicas share (generated there if it does not exist)"
            )
        key, source = _generate_key(files.key_file), f"the key file {files.key_file}"
    if newest_row is not None and newest_row["keyed"] and not audit.authentic(newest_row, key):
        raise AuditStartRefused(
            f"the newest audit event (#{newest_row['seq']}) was not written with the audit key from {source}: "
            "the key changed (replicas sharing a database must share one key) or the event was altered; "
            "configure the key the log was written with, and run `countersign audit verify`"
        )
    db.audit_key = key
    seen = read_state(files.state_file)
    problem = None if seen is None else await _missing_head(db, seen, newest)
    if problem is not None:
        assert seen is not None
        if not accept_rollback:
            raise AuditStartRefused(
                f"refusing to start: {problem}, but this gateway has seen the audit log reach {seen} (recorded in "
                f"{files.state_file}). The database was emptied, replaced or restored from an older backup, or "
                f"events were removed. If that is intended, start once with `countersign serve {ACCEPT_FLAG}` "
                "(the acceptance is audited); otherwise restore the database."
            )
        message = f"started on an audit log that does not hold {seen}, the newest head seen before ({problem})"
        detail = {"expected_seq": seen.seq, "expected_hash": seen.hash}
        event = Event(kind="audit.rollback_accepted", outcome="accepted", message=message, detail=detail)
        async with db.write() as conn:
            await audit.append(conn, event, (clock or _utcnow)())
            newest = await audit.head(conn)
        log.warning("audit: %s; accepted with %s", message, ACCEPT_FLAG)
    if newest is not None:
        write_state(files.state_file, newest, force=problem is not None)
    log.info("audit head at start: %s", newest or "none (the log is empty)")
    return newest


async def _missing_head(db: Database, seen: Head, newest: Head | None) -> str | None:
    """How the chain fails to hold `seen`; None when it holds it."""
    if newest is None:
        return "the database's audit log is empty"
    if newest.seq < seen.seq:
        return f"the database's audit log ends at {newest}"
    async with db.read() as conn:
        row = await audit.event_at(conn, seen.seq)
    if row is None or row["hash"] != seen.hash:
        return f"its event #{seen.seq} is not that event"
    return None


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ---- telling the head


async def publish_head(settings: Settings, db: Database, when: str) -> Head | None:
    """Write the newest head to the log and to the state file."""
    async with db.read() as conn:
        newest = await audit.head(conn)
    if newest is not None:
        write_state(audit_files(settings).state_file, newest)
    log.info("audit head %s: %s", when, newest or "none (the log is empty)")
    return newest


async def publish_heads(settings: Settings, db: Database) -> None:
    """Every `[audit] head_interval`, for as long as the gateway runs."""
    while True:
        await anyio.sleep(settings.audit.head_interval)
        try:
            await publish_head(settings, db, "now")
        except Exception as exc:
            log.warning("could not read the audit head to publish it: %s", exc)
