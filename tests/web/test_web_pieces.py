"""The web channel's pure pieces, without a server: settings, sessions, throttling, time parsing, headers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from approvals.approvers import Approver, ApproverDirectory
from approvals.db import Database
from approvals.service import utcnow
from gateway.config import ConfigError, parse_settings
from gateway.config_channels import WebSettings
from gateway.web.audit_views import QueryError, _spreadsheet_safe, parse_moment
from gateway.web.auth import Authenticator, Session, SessionCodec, SignInThrottle, credential_key
from gateway.web.pages import local_path
from gateway.web.security import SecurityHeaders
from gateway.web.sessions import SessionStore
from gateway.web.templating import asset_dir, pretty_json, span

SECRET = "x" * 40


def test_web_settings_are_checked_when_the_file_is_read() -> None:
    def web(**section: object) -> WebSettings:
        return parse_settings({"web": section}, source="t.toml", environ={}).web

    assert web().enabled and web().session_secret == ""
    assert web(session_max_age="8h").session_max_age == 8 * 3600
    with pytest.raises(ConfigError, match=r"web: .*trusted_proxies"):
        web(trusted_header="X-Forwarded-User")
    with pytest.raises(ConfigError, match=r"web.trusted_proxies: .*not an IP address"):
        web(trusted_header="X-Forwarded-User", trusted_proxies=["proxy.internal"])
    with pytest.raises(ConfigError, match="at least 32 characters"):
        web(session_secret="short")
    with pytest.raises(ConfigError, match="unknown key"):
        web(sesion_secret=SECRET)
    from_env = parse_settings({}, source="t.toml", environ={"COUNTERSIGN_SESSION_SECRET": SECRET})
    assert from_env.web.session_secret == SECRET
    assert SECRET not in repr(from_env.web)


def test_a_session_cookie_holds_only_the_signed_id_and_expires() -> None:
    codec = SessionCodec(SECRET, max_age=3600)
    cookie = codec.dumps("the-session-id")
    assert codec.loads(cookie) == "the-session-id"
    assert "alice" not in cookie
    assert SessionCodec("y" * 40, 3600).loads(cookie) is None
    assert SessionCodec(SECRET, max_age=-1).loads(cookie) is None
    assert codec.loads("garbage") is None


def test_a_session_is_not_this_configurations_when_the_approvers_password_changed_or_they_were_removed() -> None:
    hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    alice = Approver("alice", password_hash=hasher.hash("one"))
    session = Session(sid="s", csrf="c", approver="alice", key=credential_key(alice))
    store = SessionStore(Database("sqlite://"), utcnow)
    auth = Authenticator(WebSettings(session_secret=SECRET), ApproverDirectory([alice]), store, secure_cookies=False)
    assert auth.from_session(session) == alice
    changed = Approver("alice", password_hash=hasher.hash("two"))
    for directory in (ApproverDirectory([changed]), ApproverDirectory([])):
        later = Authenticator(WebSettings(session_secret=SECRET), directory, store, secure_cookies=False)
        assert later.from_session(session) is None


async def test_checking_a_password_needs_the_right_one_and_a_configured_hash() -> None:
    hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    directory = ApproverDirectory([Approver("alice", password_hash=hasher.hash("right")), Approver("apionly")])
    auth = Authenticator(
        WebSettings(session_secret=SECRET), directory, SessionStore(Database("sqlite://"), utcnow), secure_cookies=False
    )
    assert (await auth.check_password("alice", "right")) is not None
    assert await auth.check_password("alice", "wrong") is None
    assert await auth.check_password("apionly", "") is None
    assert await auth.check_password("nobody", "right") is None


def test_the_throttle_locks_a_key_after_too_many_failures_and_forgets_them_after_the_window() -> None:
    now = [1000.0]
    throttle = SignInThrottle(3, window=60, clock=lambda: now[0])
    keys = ("name:alice", "address:10.0.0.1")
    for _ in range(2):
        throttle.failed(keys)
        assert throttle.retry_after(keys) == 0
    now[0] += 10
    throttle.failed(keys)
    assert throttle.retry_after(keys) == pytest.approx(50)
    assert throttle.retry_after(["name:bob", "address:10.0.0.1"]) == pytest.approx(50)
    assert throttle.retry_after(["name:bob", "address:10.0.0.2"]) == 0
    now[0] += 50.5
    assert throttle.retry_after(keys) == 0


def test_only_local_paths_are_followed_after_sign_in() -> None:
    assert local_path("/approvals/apr_1?x=1") == "/approvals/apr_1?x=1"
    for hostile in ("https://evil.example", "//evil.example", "/\\evil.example", "", None, "inbox"):
        assert local_path(hostile) == "/inbox"


def test_times_in_the_audit_filter_are_read_as_utc_and_cover_the_unit_given() -> None:
    assert parse_moment("2025-06-01", end=False) == datetime(2025, 6, 1, tzinfo=UTC)
    assert parse_moment("2025-06-01", end=True) == datetime(2025, 6, 2, tzinfo=UTC)
    assert parse_moment("2025-06-01T14:05", end=True) == datetime(2025, 6, 1, 14, 6, tzinfo=UTC)
    assert parse_moment("2025-06-01 14:05:07", end=True) == datetime(2025, 6, 1, 14, 5, 8, tzinfo=UTC)
    assert parse_moment("2025-06-01T16:00+02:00", end=False) == datetime(2025, 6, 1, 14, 0, tzinfo=UTC)
    assert parse_moment(" ", end=False) is None
    with pytest.raises(QueryError, match="not a date"):
        parse_moment("yesterday", end=False)


def test_csv_cells_that_a_spreadsheet_would_run_are_defused() -> None:
    assert _spreadsheet_safe('=HYPERLINK("http://x")') == '\'=HYPERLINK("http://x")'
    assert _spreadsheet_safe("@SUM(A1)") == "'@SUM(A1)"
    assert _spreadsheet_safe('{"orderId": 1}') == '{"orderId": 1}'


def test_display_helpers() -> None:
    assert span(5) == "5s" and span(192) == "3m 12s" and span(3900) == "1h 5m" and span(90000) == "1d 1h"
    assert pretty_json('{"a":[1]}') == '{\n  "a": [\n    1\n  ]\n}'
    assert pretty_json("not json <b>") == "not json <b>"


def test_templates_and_static_files_are_found_and_reference_nothing_outside() -> None:
    templates, static = asset_dir("templates"), asset_dir("static")
    assert (templates / "base.html").is_file() and (static / "htmx.min.js").is_file()
    for page in Path(templates).rglob("*.html"):
        text = page.read_text()
        assert "http://" not in text and "https://" not in text, f"{page.name} loads something from outside"
    assert "2.0.11" in (static / "VENDORED.md").read_text()


def test_security_headers_cover_the_web_paths_only() -> None:
    headers = SecurityHeaders(app=None, prefixes=("/inbox", "/audit", "/static"))  # type: ignore[arg-type]
    assert headers.applies("/") and headers.applies("/inbox") and headers.applies("/audit/export.csv")
    assert not headers.applies("/api/approvals") and not headers.applies("/mcp") and not headers.applies("/inboxes")
