"""`countersign db …`: the database schema's revision, and migrating it; and the check `serve` makes first.

Kept apart from gateway/cli.py, which registers these with `add_db_commands(sub)` and calls
`ready_to_serve` before it starts a gateway. Imports of the database stack are deferred, as in
cli.py, so that commands which never touch the database start quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from gateway.cli_common import CONFIG_HELP, config_path

if TYPE_CHECKING:
    from approvals.migrations import SchemaState


def add_db_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = sub.add_parser("db", help="the database schema: show its revision, migrate it").add_subparsers(
        dest="db_command", required=True
    )
    upgrade = db.add_parser("upgrade", help="migrate the database schema to this version's (back it up first)")
    current = db.add_parser("current", help="print the database's schema revision and whether it is this version's")
    for parser in (upgrade, current):
        parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
        parser.add_argument("--database-url", help="database URL (instead of --config)")
    upgrade.set_defaults(func=cmd_db_upgrade)
    current.set_defaults(func=cmd_db_current)


def _database_url(args: argparse.Namespace) -> str:
    from gateway.config import load_settings

    if args.database_url:
        return str(args.database_url)
    # Only [server] is read: the schema needs the database, not the gateway's other secrets.
    return load_settings(config_path(args.config), only=("server",)).database_url


async def _prepare(url: str, *, migrate: bool) -> SchemaState:
    from approvals.db import Database

    db = Database(url)
    try:
        return await db.create_schema(migrate=migrate)
    finally:
        await db.dispose()


async def _state(url: str) -> SchemaState:
    from approvals.db import Database

    db = Database(url)
    try:
        return await db.schema_state()
    finally:
        await db.dispose()


def _upgrade_command(config: str | None, database_url: str | None = None) -> str:
    if config:
        return f"countersign db upgrade --config {config}"
    if database_url:
        return f"countersign db upgrade --database-url {database_url}"
    return "countersign db upgrade"


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from approvals.errors import StoreUnavailable
    from approvals.migrations import SchemaError

    try:
        state = asyncio.run(_prepare(_database_url(args), migrate=True))
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if state.action == "upgraded":
        print(f"upgraded the database schema from {state.upgraded_from} to {state.head} (head)")
    elif state.action == "created":
        print(f"created the database schema at {state.head} (head)")
    elif state.action == "stamped":
        print(f"recorded the existing schema (made before migrations) as revision {state.current} (head)")
    else:
        print(f"the database schema is already at {state.head} (head); nothing to do")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from approvals.errors import StoreUnavailable
    from approvals.migrations import SchemaError, is_known

    try:
        state = asyncio.run(_state(_database_url(args)))
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(state.describe())
    # Exit 1 exactly when `countersign serve` would refuse to start, so a rollout script can ask first.
    if state.revision is None or state.at_head:
        return 0
    if is_known(state.revision):
        print(f"run: {_upgrade_command(args.config, args.database_url)}", file=sys.stderr)
    else:
        print(
            "error: this revision is newer than this version of countersign knows; run the newer version",
            file=sys.stderr,
        )
    return 1


def ready_to_serve(database_url: str, *, migrate: bool, config: str | None) -> int:
    """0 when the database can be served (creating, stamping or, with `migrate`, upgrading it); else say why.

    Checked before the server starts so that an older schema ends `countersign serve` with a
    message and an exit status, rather than with a failed start-up in the server's log.
    """
    from approvals.errors import StoreUnavailable
    from approvals.migrations import SchemaError, SchemaOutdated

    try:
        state = asyncio.run(_prepare(database_url, migrate=migrate))
    except SchemaOutdated as exc:
        print(
            f"error: the database schema is at revision {exc.current}, older than this version's {exc.head}.\n"
            f"Back up the database, then run: {_upgrade_command(config)}\n"
            "(or start with `countersign serve --migrate` to upgrade it as the gateway starts)",
            file=sys.stderr,
        )
        return 2
    except (StoreUnavailable, SchemaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if state.action == "upgraded":
        print(f"upgraded the database schema from {state.upgraded_from} to {state.head}", file=sys.stderr)
    return 0
