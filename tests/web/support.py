"""Helpers for the web tests: approvers with passwords, a gateway configured for the web, signing in over HTTP."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx2
import mcp_types as types
from argon2 import PasswordHasher

from tests.harness import ALICE_TOKEN, BOB_TOKEN, CAROL_TOKEN

# Cheap parameters keep the tests fast; the hash format (and the verification path) is the real one.
_HASHER = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}
SESSION_SECRET = "test-session-secret-0123456789abcdef"


def approvers() -> list[dict[str, Any]]:
    tokens = {"alice": ALICE_TOKEN, "bob": BOB_TOKEN, "carol": CAROL_TOKEN}
    groups = {"alice": ["traders"], "bob": ["traders"], "carol": ["ops"]}
    return [
        {
            "name": name,
            "email": f"{name}@example.com",
            "groups": groups[name],
            "api_token": tokens[name],
            "password_hash": _HASHER.hash(password),
        }
        for name, password in PASSWORDS.items()
    ]


def web_config(**web: Any) -> dict[str, Any]:
    """`config=` for running_gateway: approvers who can sign in, and a fast-refreshing inbox."""
    settings: dict[str, Any] = {
        "session_secret": SESSION_SECRET,
        "refresh_interval": 0.25,
        "failed_signin_delay": 0,
        **web,
    }
    return {"approvers": approvers(), "web": settings}


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(page: str) -> str:
    match = _CSRF.search(page)
    assert match, "the page carries no CSRF token"
    return html.unescape(match.group(1))


def browser_client(base_url: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=base_url, timeout=30.0, follow_redirects=False)


async def sign_in(client: httpx2.AsyncClient, name: str, password: str | None = None) -> str:
    """Sign in through the form like a browser does; returns the session's CSRF token."""
    form = await client.get("/signin")
    assert form.status_code == 200, form.text
    response = await client.post(
        "/signin",
        data={
            "name": name,
            "password": password or PASSWORDS[name],
            "csrf_token": csrf_of(form.text),
            "next": "/inbox",
        },
    )
    assert response.status_code == 303, response.text
    inbox = await client.get("/inbox")
    assert inbox.status_code == 200, inbox.text
    return csrf_of(inbox.text)


def text_of(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))
