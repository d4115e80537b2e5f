"""Web sessions live in the database: ending one on any replica ends it on every replica at once.

Two gateways on one database and one session secret, as replicas behind a load balancer: a
browser signed in through one is signed in on the other; signing out on either, a new password
or a removed approver (once a replica starts with the new configuration) ends it on both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import select

from approvals.models import WebSession
from gateway.app import Gateway
from gateway.config import ApproverSettings, Settings
from tests.harness import Harness, running_gateway, serve_asgi
from tests.web.support import _HASHER, browser_client, csrf_of, sign_in, web_config

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@asynccontextmanager
async def replica(h: Harness, settings: Settings | None = None) -> AsyncIterator[str]:
    """Another gateway on the same database (and, unless given other settings, the same configuration)."""
    other = Gateway(settings or h.settings)
    async with serve_asgi(other.asgi()) as base_url:
        assert await other.upstreams.wait_connected(15)
        yield base_url


async def signed_in_on(client: httpx2.AsyncClient, base_url: str) -> bool:
    """Whether the client's cookie is a standing session on the replica at `base_url`."""
    response = await client.get(f"{base_url}/inbox")
    if response.status_code == 200:
        return True
    assert response.status_code == 303 and response.headers["location"].startswith("/signin"), response.text
    return False


async def test_signing_out_on_one_replica_ends_the_session_on_the_other(tmp_path: Path, database_url: str) -> None:
    async with (
        running_gateway(tmp_path, database_url, config=web_config()) as a,
        replica(a) as b_url,
        browser_client(a.base_url) as browser,
    ):
        await sign_in(browser, "alice")
        assert await signed_in_on(browser, b_url), "one sign-in serves every replica"
        cookie = browser.cookies["countersign_session"]
        assert "alice" not in cookie and len(cookie) < 120, "the cookie carries the session id only"

        # Sign out through B; the cookie still held by another tab (or an attacker) is dead on A too.
        page = await browser.get(f"{b_url}/inbox")
        out = await browser.post(f"{b_url}/signout", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 303
        async with browser_client(a.base_url) as replay:
            replay.cookies.set("countersign_session", cookie)
            assert not await signed_in_on(replay, a.base_url)
            assert not await signed_in_on(replay, b_url)

        async with a.gateway.db.read() as conn:
            [row] = (await conn.execute(select(WebSession.__table__))).mappings().all()  # type: ignore[attr-defined]
        assert (row["approver"], row["ended_because"]) == ("alice", "signed out")
        assert row["id"] not in cookie, "the table holds a digest of the id, not the id"


def with_alice(settings: Settings, password_hash: str | None) -> Settings:
    """The same settings with alice's password changed, or (None) alice removed."""
    approvers: list[ApproverSettings] = []
    for approver in settings.approvers:
        if approver.name != "alice":
            approvers.append(approver)
        elif password_hash is not None:
            approvers.append(approver.model_copy(update={"password_hash": password_hash}))
    return settings.model_copy(update={"approvers": tuple(approvers)})


@pytest.mark.parametrize("change", ["password changed", "approver removed"])
async def test_a_replica_started_with_a_new_password_or_without_the_approver_ends_the_session_on_every_replica(
    tmp_path: Path, database_url: str, change: str
) -> None:
    async with (
        running_gateway(tmp_path, database_url, config=web_config()) as a,
        browser_client(a.base_url) as browser,
        browser_client(a.base_url) as bobs,
    ):
        await sign_in(browser, "alice")
        await sign_in(bobs, "bob")
        new_hash = _HASHER.hash("a-new-password") if change == "password changed" else None
        # A rolling update: B starts with the new configuration while A still runs with the old one.
        async with replica(a, with_alice(a.settings, new_hash)) as b_url:
            assert not await signed_in_on(browser, b_url)
            assert not await signed_in_on(browser, a.base_url), "A's configuration still admits her, the row does not"
            async with a.gateway.db.read() as conn:
                rows = (await conn.execute(select(WebSession.__table__))).mappings().all()  # type: ignore[attr-defined]
            assert {(r["approver"], r["ended_because"]) for r in rows} == {("alice", change), ("bob", None)}
            if new_hash is not None:
                async with browser_client(b_url) as fresh:
                    await sign_in(fresh, "alice", "a-new-password")
                    assert await signed_in_on(fresh, b_url)
