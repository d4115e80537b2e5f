"""Shared fixtures: a database URL per backend (SQLite always; PostgreSQL when reachable)."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("COUNTERSIGN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> str | None:
    """None when PostgreSQL answers; otherwise why not (shown as the skip reason)."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed"

    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}"
    return None


_PG_PROBLEM = _pg_reachable()


def skip_unless_present(kind: str, problem: str | None) -> None:
    """Skip with the reason when a service is absent; in CI (COUNTERSIGN_REQUIRE names it) fail instead.

    Kinds: postgres, chromium, node (tests/node), node22 (the conformance suite in tests/conformance),
    haproxy; `.ci/run` requires them all.
    """
    if problem is None:
        return
    required = {k.strip() for k in os.environ.get("COUNTERSIGN_REQUIRE", "").split(",")}
    if kind in required:
        pytest.fail(f"{kind} is required here (COUNTERSIGN_REQUIRE) but absent: {problem}")
    pytest.skip(problem)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'countersign.db'}"


async def _create_pg_database() -> str:
    import asyncpg

    name = f"cs_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def _drop_pg_database(name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def pg_url(name: str) -> str:
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    skip_unless_present("postgres", _PG_PROBLEM)
    name = await _create_pg_database()
    try:
        yield pg_url(name)
    finally:
        await _drop_pg_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Runs the test once on SQLite and once on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'countersign.db'}"
        return
    skip_unless_present("postgres", _PG_PROBLEM)
    name = await _create_pg_database()
    try:
        yield pg_url(name)
    finally:
        await _drop_pg_database(name)


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Traffic to loopback servers must never be sent to a proxy from the environment.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    yield
