"""Signing in, sessions, CSRF and the trusted proxy header, over HTTP against the live gateway."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2
import pytest

from tests.factories import HELD_CANCEL
from tests.harness import running_gateway
from tests.web.support import PASSWORDS, browser_client, csrf_of, sign_in, web_config

CANCEL = HELD_CANCEL


def session_cookie(response: httpx2.Response) -> str:
    [header] = [v for k, v in response.headers.multi_items() if k == "set-cookie" and "countersign_session=" in v]
    return header


async def test_every_page_but_sign_in_sends_an_anonymous_visitor_to_sign_in(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        for path in ("/inbox", "/audit", "/approvals/apr_x", "/audit/export.csv", "/audit/export.json"):
            response = await web.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/signin?next="), path
        assert (await web.get("/")).headers["location"] == "/inbox"
        assert (await web.get("/signin")).status_code == 200
        # An htmx poll from a page whose session ended sends that page through sign-in.
        poll = await web.get(
            "/inbox/cards", headers={"HX-Request": "true", "HX-Current-URL": f"{h.base_url}/approvals/apr_x"}
        )
        assert poll.status_code == 401
        assert poll.headers["hx-redirect"] == "/signin?next=/approvals/apr_x"
        post = await web.post("/approvals/apr_x/approve", data={"csrf_token": "x"})
        assert post.status_code == 401
        # A crafted next= never leads off the site.
        form = await web.get("/signin", params={"next": "//evil.example/x"})
        assert 'name="next" value="/inbox"' in form.text


async def test_signing_in_sets_a_signed_httponly_samesite_cookie_and_signing_out_ends_it(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        form = await web.get("/signin?next=/audit")
        anonymous = web.cookies["countersign_session"]
        response = await web.post(
            "/signin",
            data={"name": "alice", "password": PASSWORDS["alice"], "csrf_token": csrf_of(form.text), "next": "/audit"},
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/audit"
        cookie = session_cookie(response).lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
        signed_in = web.cookies["countersign_session"]
        assert signed_in != anonymous

        inbox = await web.get("/inbox")
        assert csrf_of(inbox.text) != csrf_of(form.text), "signing in issues a new CSRF token (no fixation)"
        assert inbox.status_code == 200
        assert 'class="who-name"' in inbox.text and ">alice<" in inbox.text
        assert (await web.get("/signin")).status_code == 303, "a signed-in visitor is sent on"

        out = await web.post("/signout", data={"csrf_token": csrf_of(inbox.text)})
        assert out.status_code == 303 and out.headers["location"] == "/signin?signed_out=1"
        assert "countersign_session=" in out.headers["set-cookie"]
        # The old cookie, replayed, is no longer a session.
        async with browser_client(h.base_url) as replay:
            replay.cookies.set("countersign_session", signed_in)
            assert (await replay.get("/inbox")).status_code == 303


async def test_a_wrong_password_is_refused_slowly_and_repeated_failures_lock_out_their_address(
    tmp_path: Path, sqlite_url: str
) -> None:
    config = web_config(failed_signin_delay=0.3, max_failed_signins=3)
    async with running_gateway(tmp_path, sqlite_url, config=config) as h, browser_client(h.base_url) as web:
        token = csrf_of((await web.get("/signin")).text)

        async def attempt(name: str, password: str) -> httpx2.Response:
            return await web.post("/signin", data={"name": name, "password": password, "csrf_token": token})

        started = time.monotonic()
        wrong = await attempt("alice", "guess")
        assert time.monotonic() - started >= 0.3
        assert wrong.status_code == 401
        assert "Wrong name or password." in wrong.text
        unknown = await attempt("mallory", "guess")
        assert unknown.status_code == 401 and "Wrong name or password." in unknown.text
        assert (await attempt("alice", "guess again")).status_code == 401
        assert (await attempt("alice", "a third guess")).status_code == 401

        locked = await attempt("alice", PASSWORDS["alice"])
        assert locked.status_code == 429
        assert "Too many failed sign-ins" in locked.text
        assert int(locked.headers["retry-after"]) > 60
        # Spraying other names from the same address soon locks the address for every name.
        for n in range(5):
            assert (await attempt(f"someone{n}", "guess")).status_code == 401
        assert (await attempt("bob", PASSWORDS["bob"])).status_code == 429
        assert (await web.get("/inbox")).status_code == 303, "no attempt signed anyone in"


async def test_a_tampered_or_foreign_cookie_is_no_session(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        value = web.cookies["countersign_session"]
        payload, _, signature = value.rpartition(".")
        tampered = payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
        for forged in (tampered, "not-a-session", ""):
            async with browser_client(h.base_url) as other:
                other.cookies.set("countersign_session", forged)
                assert (await other.get("/inbox")).status_code == 303

    # A cookie signed with another gateway's secret is worthless here.
    async with (
        running_gateway(
            tmp_path, sqlite_url, config=web_config(session_secret="another-secret-0123456789abcdefXYZ")
        ) as h2,
        browser_client(h2.base_url) as other,
    ):
        other.cookies.set("countersign_session", value)
        assert (await other.get("/inbox")).status_code == 303


async def test_a_post_without_the_sessions_csrf_token_is_refused_and_changes_nothing(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h:
        request = await h.service.create(CANCEL)
        async with browser_client(h.base_url) as alice, browser_client(h.base_url) as bob:
            token = await sign_in(alice, "alice")
            bobs_token = await sign_in(bob, "bob")
            url = f"/approvals/{request.id}/approve"
            base = {"sha": request.arguments_sha256, "view": "inbox"}
            for data, headers in (
                (base, {}),
                ({**base, "csrf_token": "wrong"}, {}),
                ({**base, "csrf_token": bobs_token}, {}),
                (base, {"X-CSRF-Token": ""}),
                ({**base, "csrf_token": token}, {"Sec-Fetch-Site": "cross-site"}),
            ):
                refused = await alice.post(url, data=data, headers=headers)
                assert refused.status_code == 403, (data, headers)
                assert "CSRF" in refused.text
            htmx = await alice.post(url, data=base, headers={"HX-Request": "true"})
            assert htmx.status_code == 403 and htmx.headers["hx-refresh"] == "true"
            assert (await h.service.get(request.id)).status.value == "pending"
            # The header htmx sends is as good as the form field.
            accepted = await alice.post(url, data=base, headers={"X-CSRF-Token": token, "HX-Request": "true"})
            assert accepted.status_code == 200, accepted.text
            assert (await h.service.get(request.id)).status.value == "approved"

        # Signing in needs the form's token too (no login CSRF).
        async with browser_client(h.base_url) as web:
            await web.get("/signin")
            forged = await web.post("/signin", data={"name": "alice", "password": PASSWORDS["alice"]})
            assert forged.status_code == 403
            assert "countersign_session" in web.cookies
            assert (await web.get("/inbox")).status_code == 303


@pytest.mark.parametrize(
    ("proxies", "honoured"), [(["127.0.0.1/32"], True), (["10.0.0.0/8", "192.168.1.7"], False)], ids=["trusted", "not"]
)
async def test_the_trusted_header_is_honoured_only_from_a_trusted_proxy(
    tmp_path: Path, sqlite_url: str, proxies: list[str], honoured: bool
) -> None:
    config = web_config(trusted_header="X-Forwarded-User", trusted_proxies=proxies)
    async with running_gateway(tmp_path, sqlite_url, config=config) as h:
        request = await h.service.create(CANCEL)
        async with browser_client(h.base_url) as web:
            web.headers["X-Forwarded-User"] = "bob"
            page = await web.get("/inbox")
            if not honoured:
                assert page.status_code == 303 and page.headers["location"].startswith("/signin")
                return
            assert page.status_code == 200
            assert ">bob<" in page.text
            assert 'action="/signout"' not in page.text, "sign-out happens at the proxy"
            # The proxy-signed-in approver still needs the CSRF token from the cookie the page set.
            decided = await web.post(
                f"/approvals/{request.id}/reject",
                data={"csrf_token": csrf_of(page.text), "sha": request.arguments_sha256, "reason": "no"},
            )
            assert decided.status_code == 303
            assert (await h.service.get(request.id)).decided_by == "bob"

            web.headers["X-Forwarded-User"] = "carol@example.com"
            assert ">carol<" in (await web.get("/inbox")).text
            web.headers["X-Forwarded-User"] = "mallory"
            stranger = await web.get("/inbox")
            assert stranger.status_code == 403
            assert "not a configured approver" in stranger.text
