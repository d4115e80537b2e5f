"""Sign-in throttling: a guesser locks only their own address out, never the approver."""

from __future__ import annotations

from pathlib import Path

import httpx2

from tests.harness import running_gateway
from tests.web.support import PASSWORDS, browser_client, csrf_of, sign_in, web_config


async def test_failed_sign_ins_from_one_address_never_lock_the_approver_out_from_another(
    tmp_path: Path, sqlite_url: str
) -> None:
    config = web_config(max_failed_signins=3)
    async with (
        running_gateway(tmp_path, sqlite_url, config=config) as h,
        browser_client(h.base_url) as attacker,
        browser_client(h.base_url) as alice,
    ):
        # uvicorn takes the client's address from X-Forwarded-For on loopback, as behind a local proxy.
        attacker.headers["X-Forwarded-For"] = "203.0.113.66"
        alice.headers["X-Forwarded-For"] = "198.51.100.7"
        token = csrf_of((await attacker.get("/signin")).text)

        async def attempt(password: str) -> httpx2.Response:
            return await attacker.post("/signin", data={"name": "alice", "password": password, "csrf_token": token})

        for guess in ("guess", "guess again", "a third guess"):
            assert (await attempt(guess)).status_code == 401
        locked = await attempt(PASSWORDS["alice"])
        assert locked.status_code == 429, "the guessing address is locked out of alice's account"
        assert "Too many failed sign-ins" in locked.text

        await sign_in(alice, "alice")  # from her own address she is not locked out
        assert (await alice.get("/inbox")).status_code == 200
