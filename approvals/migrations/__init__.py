"""Schema migrations: Alembic revisions shipped inside the package, and what a gateway does with them on start.

`prepare` is the one policy every entry point shares (the gateway's start, `countersign db
upgrade`, `serve --migrate`): an empty database is built by the revisions and stamped; a
database made before migrations existed (the tables, no `alembic_version`) is recognised as
revision one and stamped without touching a row; a database at an older revision is upgraded
only when the caller asked for it, because migrating is an operator's decision (take a backup
first), not a side effect of a restart.

These functions take a synchronous connection already inside a transaction that holds the
schema lock (`Database.create_schema` provides one), so a stamp or an upgrade and the
decision to make it are one atomic step, once across replicas.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# Importing Alembic announces each of its autogenerate plugins at INFO: noise in every gateway's log.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from alembic.util.exc import CommandError  # noqa: E402
from sqlalchemy import Connection, inspect, text  # noqa: E402

from approvals.errors import ApprovalError  # noqa: E402

SCRIPT_LOCATION = Path(__file__).resolve().parent
REVISION_ONE = "0001"
VERSION_TABLE = "alembic_version"
# The tables of revision one: finding them without an alembic_version table means pre-Alembic.
REVISION_ONE_TABLES = frozenset({"approval_request", "approval_decision", "audit_event"})


class SchemaError(ApprovalError):
    """The database schema is not one this version of Countersign can serve from."""


class SchemaOutdated(SchemaError):
    """The database is at an older revision; an operator must upgrade it (`countersign db upgrade`)."""

    def __init__(self, current: str, head: str) -> None:
        super().__init__(
            f"the database schema is at revision {current}, older than this version's {head}; "
            "back it up, then run `countersign db upgrade` (or start with `countersign serve --migrate`)"
        )
        self.current = current
        self.head = head


class SchemaUnknown(SchemaError):
    """The database is at a revision this version does not have: a newer Countersign migrated it."""

    def __init__(self, current: str, head: str) -> None:
        super().__init__(
            f"the database schema is at revision {current}, which this version of countersign does not know "
            f"(its newest is {head}); it was migrated by a newer countersign: run that version"
        )
        self.current = current
        self.head = head


class SchemaUnrecognised(SchemaError):
    """Some of Countersign's tables exist but not all, and no revision is recorded."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands. `current` None: no revision recorded (empty, or made before migrations)."""

    current: str | None
    head: str
    # Countersign's tables are there but no revision is recorded: made by the pre-Alembic gateway.
    unstamped: bool = False
    # What `prepare` did: "created", "stamped", "upgraded" or "" (nothing).
    action: str = ""
    upgraded_from: str | None = None

    @property
    def empty(self) -> bool:
        return self.current is None and not self.unstamped

    @property
    def revision(self) -> str | None:
        """The revision the database is at, counting one made before migrations as revision one."""
        return REVISION_ONE if self.unstamped else self.current

    @property
    def at_head(self) -> bool:
        return self.revision == self.head

    def describe(self) -> str:
        if self.unstamped:
            return f"no revision recorded (made before migrations): revision {REVISION_ONE}; head is {self.head}"
        if self.current is None:
            return f"empty: no schema yet (a gateway creates it at {self.head} on start)"
        if self.at_head:
            return f"{self.current} (head)"
        return f"{self.current}; head is {self.head}"


# Made by revisions but described by no model: the audit text search's trigram index (revision 0016) — on SQLite
# an FTS5 table and the tables it keeps its index in, on PostgreSQL GIN indexes. Comparing the models with a
# database leaves them out.
TEXT_INDEX_TABLES = "audit_event_text"
TEXT_INDEX_SUFFIX = "_trgm"


def described_by_models(name: str | None, type_: str, _parents: object = None) -> bool:
    """False for what revisions make outside the models (Alembic's `include_name`)."""
    if name is None:
        return True
    if type_ == "table":
        return not name.startswith(TEXT_INDEX_TABLES)
    if type_ == "index":
        return not name.endswith(TEXT_INDEX_SUFFIX)
    return True


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the packaged revisions; migrations run on `connection` when given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@cache
def _script() -> ScriptDirectory:
    # Parsing the revision files once per process keeps a gateway's start (and every test's) cheap.
    return ScriptDirectory.from_config(config())


def head() -> str:
    revision = _script().get_current_head()
    assert revision is not None, f"no revisions in {SCRIPT_LOCATION / 'versions'}"
    return revision


def is_known(revision: str) -> bool:
    try:
        return _script().get_revision(revision) is not None
    except CommandError:
        return False


def state(connection: Connection) -> SchemaState:
    """Where the database stands, without changing anything."""
    current = _recorded_revision(connection)
    if current is not None:
        return SchemaState(current, head())
    present = REVISION_ONE_TABLES & set(inspect(connection).get_table_names())
    if not present:
        return SchemaState(None, head())
    if present != REVISION_ONE_TABLES:
        raise SchemaUnrecognised(
            f"the database has some of countersign's tables ({', '.join(sorted(present))}) but not "
            f"{', '.join(sorted(REVISION_ONE_TABLES - present))}, and no schema revision: it was not made by "
            "countersign, or only partly; point the gateway at an empty database or restore a backup"
        )
    return SchemaState(None, head(), unstamped=True)


def _recorded_revision(connection: Connection) -> str | None:
    # Read directly rather than through MigrationContext, which logs its set-up at INFO on every start.
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    recorded = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(recorded) > 1:
        raise SchemaUnrecognised(f"the database records several schema revisions ({', '.join(recorded)})")
    return str(recorded[0]) if recorded else None


def prepare(connection: Connection, migrate: bool = False) -> SchemaState:
    """Bring the database to head where that needs no operator's decision, or to head anyway with `migrate`.

    Returns the state afterwards; it is behind head only when `migrate` is false and the
    database was at an older revision (the caller refuses to serve then). Raises SchemaUnknown
    for a revision from a newer Countersign, SchemaUnrecognised for a partial schema.
    """
    before = state(connection)
    target = before.head
    if before.empty:
        command.upgrade(config(connection), target)
        return SchemaState(target, target, action="created")
    action = ""
    current = before.current
    if before.unstamped:
        command.stamp(config(connection), REVISION_ONE)
        current, action = REVISION_ONE, "stamped"
    assert current is not None
    if current == target:
        return SchemaState(current, target, action=action)
    if not is_known(current):
        raise SchemaUnknown(current, target)
    if not migrate:
        return SchemaState(current, target, action=action)
    command.upgrade(config(connection), target)
    _check_foreign_keys(connection)
    return SchemaState(target, target, action="upgraded", upgraded_from=current)


def _check_foreign_keys(connection: Connection) -> None:
    # SQLite migrations run with foreign keys off (batch mode rebuilds tables); prove nothing was orphaned.
    if connection.dialect.name != "sqlite":
        return
    orphans = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if orphans:
        raise SchemaError(f"the migration left rows whose foreign keys point nowhere: {orphans[:5]}")
