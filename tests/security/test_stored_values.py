"""Every surface answers for every request the database can hold; a committed decision is reported as done.

Also found: a decision that had committed was answered with a 500 when showing the request afterwards
failed, so the approver believed nothing was decided.

Findings: one request whose stored arguments held a non-finite number made `GET /api/approvals`,
`show`, `approve` and `reject` answer 500 for everyone (while the decision was in fact committed),
until the request left the newest 100. The rows below are written straight into the database, as
an older version or someone with access to the database could have left them; intake refuses such
values today, so this is the only way they get there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import insert

from approvals.db import Database
from approvals.models import ApprovalRequest, AuditEvent
from gateway import api as api_module
from gateway.web import WebChannel
from tests.gateway.test_cli import run_beside_server
from tests.harness import ALICE_TOKEN, Harness, held_call
from tests.security.support import gateway_with_slack
from tests.web.support import browser_client, csrf_of, sign_in

DEEP = 100_000

# Stored `arguments` texts no current intake would write, each as a request that is still pending.
AWKWARD_ARGUMENTS: Mapping[str, str] = {
    "non_finite": '{"orderId": NaN, "limit": Infinity, "floor": -Infinity}',
    "huge_integer": '{"orderId": 1' + "0" * 5000 + "}",
    "deep": '{"orderId": ' + "[" * DEEP + "]" * DEEP + "}",
    "lone_surrogates": '{"orderId": 1001, "note": "\\ud800 and \\udfff"}',
    "not_json": "orderId=1001",
    "not_an_object": "[1001, 1002]",
}


def row(request_id: str, **values: Any) -> dict[str, Any]:
    # Read the clock when the row is made, not when the module is collected: a long run would find it expired.
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "id": request_id,
        "upstream": "paper",
        "tool": "ibkr_cancel_order",
        "upstream_tool": "ibkr_cancel_order",
        "arguments": '{"orderId": 1001, "confirm": true}',
        "arguments_sha256": "0" * 64,
        "agent": "alpha",
        "session_id": None,
        "rule": 'tools["ibkr_cancel_order"].require_approval[0]',
        "reason": "A human decides.",
        "approvers": '["group:traders"]',
        "quorum": 1,
        "channels": '["web", "slack"]',
        "timeout_seconds": 900.0,
        "reject_reason_required": False,
        "slack_channel": None,
        "pickup_seconds": 600.0,
        "run_unattended": False,
        "max_hold_seconds": None,
        "keep_on_cancel": False,
        "created_at": now - timedelta(minutes=1),
        "expires_at": now + timedelta(minutes=14),
        "status": "pending",
        "status_changed_at": now - timedelta(minutes=1),
        "decided_by": None,
        "decided_via": None,
        "decision_reason": None,
        "ended_because": None,
        "agent_waiting": False,
        "result": None,
        "error": None,
        "slack_ts": None,
        "slack_synced_seq": None,
        "reminded_at": None,
    }
    return {**base, **values}


def awkward_rows() -> list[dict[str, Any]]:
    rows = [row(f"apr_{name}", arguments=text) for name, text in AWKWARD_ARGUMENTS.items()]
    rows += [
        row("apr_unknown_status", status="paused"),
        row("apr_unknown_ending", status="cancelled", ended_because="vanished"),
        row("apr_bad_lists", approvers="group:traders", channels="web and slack"),
        row(
            "apr_non_finite_result",
            status="executed",
            ended_because="executed",
            decided_by="alice",
            result='{"content": [{"type": "text", "text": "ok"}], "structuredContent": {"filled": NaN}}',
        ),
        row("apr_bad_result", status="failed", ended_because="failed", decided_by="alice", result="{oops"),
    ]
    return rows


def awkward_events() -> list[dict[str, Any]]:
    def event(seq: int, **values: Any) -> dict[str, Any]:
        base = {
            "seq": seq,
            "at": datetime.now(UTC) - timedelta(minutes=1),
            "kind": "call.denied",
            "outcome": "denied",
            "agent": "alpha",
            "tool": "ibkr_cancel_order",
            "upstream": "paper",
            "request_id": None,
            "actor": None,
            "channel": None,
            "message": "stored by hand",
            "arguments": None,
            "detail": "{}",
            "prev_hash": "0" * 64,
            "hash": "0" * 64,
        }
        return {**base, **values}

    return [
        event(1, arguments=AWKWARD_ARGUMENTS["non_finite"], detail='{"limit": Infinity}'),
        event(2, arguments=AWKWARD_ARGUMENTS["lone_surrogates"], detail="[not json"),
        event(3, arguments=AWKWARD_ARGUMENTS["deep"], detail='"a string"', request_id="apr_deep"),
        event(4, arguments=AWKWARD_ARGUMENTS["huge_integer"], request_id="apr_huge_integer"),
    ]


@asynccontextmanager
async def gateway_over_awkward_rows(tmp_path: Path, url: str) -> AsyncIterator[tuple[Harness, Any]]:
    database = Database(url)
    await database.create_schema()
    async with database.write() as conn:
        await conn.execute(insert(ApprovalRequest.__table__), awkward_rows())  # type: ignore[attr-defined]
        await conn.execute(insert(AuditEvent.__table__), awkward_events())  # type: ignore[attr-defined]
    await database.dispose()
    async with gateway_with_slack(tmp_path, url) as (h, slack):
        yield h, slack


def answered(response: httpx2.Response) -> bool:
    return response.status_code < 500


async def test_every_surface_answers_for_every_request_the_database_can_hold(tmp_path: Path, sqlite_url: str) -> None:
    ids = [r["id"] for r in awkward_rows()]
    async with gateway_over_awkward_rows(tmp_path, sqlite_url) as (h, slack):
        api = h.api()
        listed = await api.get("/api/approvals", params={"status": "", "limit": "1000"})
        assert listed.status_code == 200, listed.text
        assert {a["id"] for a in listed.json()["approvals"]} == set(ids)
        pending = await api.get("/api/approvals", params={"status": "pending"})
        assert pending.status_code == 200, pending.text
        shown: dict[str, Any] = {}
        for request_id in ids:
            response = await api.get(f"/api/approvals/{request_id}")
            assert response.status_code == 200, (request_id, response.text)
            shown[request_id] = response.json()
            # Each says what cannot be read, in the one story every channel tells.
            assert shown[request_id]["damage"], request_id
            assert shown[request_id]["summary"].startswith("Its stored record cannot be read ("), request_id
        assert shown["apr_non_finite"]["arguments"] == {
            "orderId": "NaN (not a finite number)",
            "limit": "Infinity (not a finite number)",
            "floor": "-Infinity (not a finite number)",
        }
        assert shown["apr_lone_surrogates"]["arguments"]["note"] == "\\ud800 and \\udfff"
        assert shown["apr_deep"]["arguments"].endswith(f"({len(AWKWARD_ARGUMENTS['deep']):,} characters in all)")
        assert "'paused' is unknown here" in shown["apr_unknown_status"]["summary"]
        events = await api.get("/api/audit")
        assert events.status_code == 200, events.text

        async with browser_client(h.base_url) as browser:
            csrf = await sign_in(browser, "alice")
            for path in ("/inbox", "/inbox/cards", "/audit", "/audit/export.csv", "/audit/export.json"):
                page = await browser.get(path)
                assert page.status_code == 200, (path, page.text[:500])
            for request_id in ids:
                for path in (
                    f"/approvals/{request_id}",
                    f"/approvals/{request_id}/detail",
                    f"/inbox/cards/{request_id}",
                ):
                    page = await browser.get(path)
                    assert page.status_code in (200, 204), (path, page.status_code, page.text[:500])
                audit = await browser.get("/audit", params={"request_id": request_id})
                assert audit.status_code == 200, (request_id, audit.text[:500])
            # Deciding on the web: each answers with a page, never a server error.
            for request_id in ids[:3]:
                decided = await browser.post(
                    f"/approvals/{request_id}/reject",
                    data={"csrf_token": csrf, "reason": "odd arguments", "sha": "0" * 64},
                )
                assert decided.status_code == 303, (request_id, decided.text[:500])
                csrf = csrf_of((await browser.get("/inbox")).text)

        # The approver API decides the rest: such a request can be rejected, never approved.
        for request_id in ids[3:]:
            approved = await api.post(f"/api/approvals/{request_id}/approve")
            assert answered(approved), (request_id, approved.text)
            rejected = await api.post(f"/api/approvals/{request_id}/reject", json={"reason": "odd"})
            assert answered(rejected), (request_id, rejected.text)
            if shown[request_id]["status"] == "pending":
                assert approved.status_code == 400 and "never approved or run" in approved.json()["detail"]
                assert rejected.status_code == 200, rejected.text
        for request_id in ids:
            if shown[request_id]["status"] == "pending":
                assert (await api.get(f"/api/approvals/{request_id}")).json()["status"] == "rejected", request_id

        # The CLI prints them; Slack showed every pending request that wants it.
        connect = ["--url", h.base_url, "--token", ALICE_TOKEN]
        code, out, err = await run_beside_server(["approvals", "list", "--status", "all", "--limit", "100", *connect])
        assert code == 0, err
        assert all(request_id in out for request_id in ids)
        for request_id in ids:
            code, out, err = await run_beside_server(["approvals", "show", request_id, *connect])
            assert code == 0, (request_id, err)
            assert request_id in out

        slack_pending = ["apr_non_finite", "apr_huge_integer", "apr_deep", "apr_lone_surrogates", "apr_not_json"]
        slack_pending += ["apr_not_an_object"]
        await slack.wait_until(lambda: len(slack.calls_to("chat.postMessage")) >= len(slack_pending), within=20)


# ---- a decision that committed is reported as done


async def test_a_committed_decision_is_reported_as_done_even_when_showing_it_fails(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("drawing the request failed")

    cancel = {"orderId": 1001, "confirm": True}
    async with gateway_with_slack(tmp_path, sqlite_url) as (h, _):
        # The approver API: the decision commits, then turning the request into JSON fails.
        async with held_call(h, "ibkr_cancel_order", cancel) as (request, box):
            with monkeypatch.context() as patch:
                patch.setattr(api_module, "request_json", broken)
                approved = await h.api().post(f"/api/approvals/{request['id']}/approve")
            assert approved.status_code == 200, approved.text
            assert approved.json()["decided"] is True
            assert approved.json()["approval"] == {"id": request["id"], "status": "approved", "decided_by": "alice"}
        assert not box["result"].is_error

        # The web inbox: the decision commits, then drawing the card fails.
        web = next(c for c in h.gateway.channels if isinstance(c, WebChannel))
        async with (
            held_call(h, "ibkr_cancel_order", {**cancel, "orderId": 1002}) as (request, box),
            browser_client(h.base_url) as browser,
        ):
            csrf = await sign_in(browser, "bob")
            sha = (await h.api().get(f"/api/approvals/{request['id']}")).json()["arguments_sha256"]
            with monkeypatch.context() as patch:
                patch.setattr(web.inbox, "card", broken)
                rejected = await browser.post(
                    f"/approvals/{request['id']}/reject",
                    data={"csrf_token": csrf, "reason": "not now", "sha": sha},
                    headers={"HX-Request": "true"},
                )
            assert rejected.status_code == 200, rejected.text
            assert "Rejected by you" in rejected.text and "reload it" in rejected.text
        assert box["result"].is_error and "[APPROVAL REJECTED]" in box["result"].content[0].text
