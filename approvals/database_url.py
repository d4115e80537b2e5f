"""Database URLs as people write them, parsed once: which engine, which async driver, which SQLite file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_SQLITE = frozenset({"sqlite", "sqlite+aiosqlite", "sqlite+pysqlite"})
_POSTGRES = frozenset({"postgres", "postgresql", "postgresql+asyncpg", "postgresql+psycopg", "postgresql+psycopg2"})
EXAMPLES = "sqlite:///countersign.db or postgresql://user@host/dbname"


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database URL. `url` names the async driver the gateway uses (aiosqlite or asyncpg)."""

    url: str
    is_sqlite: bool
    # The SQLite file, as written (relative paths are relative to the configuration file); None otherwise.
    sqlite_file: str | None
    # The URL as the person wrote it (their scheme), for messages and for settings read back.
    written: str

    def resolved(self, base_dir: Path) -> DatabaseUrl:
        """The same database with a relative SQLite path taken relative to `base_dir`."""
        if self.sqlite_file is None or Path(self.sqlite_file).is_absolute():
            return self
        path = str(base_dir / self.sqlite_file)
        return DatabaseUrl(_with_path(self.url, path), True, path, _with_path(self.written, path))


def _with_path(url: str, path: str) -> str:
    return make_url(url).set(database=path).render_as_string(hide_password=False)


def parse_database_url(url: str) -> DatabaseUrl:
    """Accept the URLs people paste (postgres://, postgresql://, sqlite:///…); ValueError says what is accepted."""
    scheme = url.partition("://")[0]
    if "://" not in url or scheme not in _SQLITE | _POSTGRES:
        raise ValueError(f"expected a SQLite or PostgreSQL URL such as {EXAMPLES}, not {scheme or url!r}")
    written = url
    if scheme == "postgres":
        url = "postgresql" + url[len("postgres") :]
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"not a database URL ({exc}); expected one such as {EXAMPLES}") from None
    if scheme in _SQLITE:
        database = parsed.database or ""
        file = None if database in ("", ":memory:") else database
        driver = parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
        return DatabaseUrl(driver, True, file, written)
    driver = parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    return DatabaseUrl(driver, False, None, written)
