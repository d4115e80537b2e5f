"""`countersign audit verify`, and the audit check `serve` and `demo` make before they start.

Kept apart from gateway/cli.py, which registers `add_audit` and calls `audit_ready`. Imports of
the database stack are deferred, as in cli.py, so that other commands start quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from approvals.database_url import parse_database_url
from gateway.cli_common import CONFIG_HELP, command, read_settings
from gateway.config import Settings, parse_settings

if TYPE_CHECKING:
    from approvals.audit import ChainReport
    from gateway.cli_common import Subparsers

ACCEPT_ROLLBACK_HELP = (
    "start even though the audit log does not hold the newest head this gateway saw (a restored backup); audited"
)


def add_audit(sub: Subparsers) -> None:
    audit = sub.add_parser("audit", help="audit log tools", description="Audit log tools.")
    commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = command(
        commands,
        "verify",
        "verify the audit hash chain and the tables against it, and print its head; report the first broken link",
        cmd_audit_verify,
    )
    verify.add_argument(
        "--config", metavar="FILE", help=f"read [server] database_url and [audit] from this {CONFIG_HELP}"
    )
    verify.add_argument("--database-url", metavar="URL", help="the database to verify (instead of --config)")
    verify.add_argument(
        "--key-file",
        metavar="FILE",
        help="the audit key (default: [audit] key, $COUNTERSIGN_AUDIT_KEY, or the key file beside the database)",
    )
    verify.add_argument(
        "--expect-head",
        metavar="HASH",
        help="a head printed earlier (HASH or SEQ:HASH): fail unless the chain still holds it (catches truncation)",
    )


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from approvals.audit import Head
    from approvals.db import Database
    from approvals.errors import StoreUnavailable
    from gateway.audit_keeper import AuditStartRefused

    try:
        expect = None if args.expect_head is None else Head.parse(args.expect_head)
    except ValueError as exc:
        print(f"error: --expect-head: {exc}", file=sys.stderr)
        return 2
    # Only [server] and [audit] are read: verifying needs the database and the key, not the gateway's other secrets.
    if args.database_url:
        settings = parse_settings({"server": {"database_url": args.database_url}}, source="--database-url")
    else:
        settings = read_settings(args.config, only=("server", "audit"))
    missing = _missing_sqlite_file(settings.database_url)
    if missing is not None:
        # Opening it would create an empty database and report on that instead of the one meant.
        print(f"error: no database file at {missing}", file=sys.stderr)
        return 2
    try:
        key = _key(settings, args.key_file)
    except (AuditStartRefused, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def run() -> ChainReport | None:
        from approvals import audit
        from approvals.evidence import verify_log

        db = Database(settings.database_url)
        try:
            async with db.read() as conn:
                if not await audit.exists(conn):
                    return None
                return await verify_log(conn, key, expect=expect)
        finally:
            await db.dispose()

    try:
        report = asyncio.run(run())
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report is None:
        print("error: this database holds no audit log (no gateway has run against it)", file=sys.stderr)
        return 2
    if report.key_missing:
        print(
            f"error: the audit chain is keyed from event #{report.first_broken_seq} on and no audit key was given: "
            "pass --key-file, set COUNTERSIGN_AUDIT_KEY, or --config a file whose [audit] names the key",
            file=sys.stderr,
        )
        return 2
    print(report.describe())
    return 0 if report.ok else 1


def _key(settings: Settings, key_file: str | None) -> bytes | None:
    from gateway.audit_keeper import configured_key, read_key_file

    if key_file is None:
        return configured_key(settings)[0]
    key = read_key_file(Path(key_file))
    if key is None:
        raise FileNotFoundError(f"--key-file: no file at {key_file}")
    return key


def _missing_sqlite_file(url: str) -> Path | None:
    """The file an SQLite URL names when that file does not exist; None for other databases."""
    file = parse_database_url(url).sqlite_file
    return None if file is None or Path(file).exists() else Path(file)


def audit_ready(settings: Settings, *, accept_rollback: bool) -> int:
    """0 when the gateway may start on this audit log (gateway.audit_keeper.open_chain); else say why.

    Checked before the server starts, like the schema, so a refusal ends `countersign serve`
    with its message and an exit status rather than a failed start-up in the server's log.
    """
    from approvals.db import Database
    from approvals.errors import StoreUnavailable
    from gateway.audit_keeper import AuditStartRefused, open_chain

    async def run() -> None:
        db = Database(settings.database_url)
        try:
            await open_chain(settings, db, accept_rollback=accept_rollback)
        finally:
            await db.dispose()

    try:
        asyncio.run(run())
    except (AuditStartRefused, StoreUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
