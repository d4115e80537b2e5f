"""The inbox, the card and the request page over HTTP: what each approver sees and what the server allows."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import httpx2

from tests.factories import HELD_CANCEL
from tests.harness import held_call, running_gateway
from tests.web.support import browser_client, sign_in, web_config

HX = {"HX-Request": "true"}
CANCEL = HELD_CANCEL


def card_ids(page: str) -> list[str]:
    return re.findall(r'<article id="req-([^"]+)"', page)


def version_of(page: str, request_id: str) -> str:
    match = re.search(rf'hx-get="/inbox/cards/{re.escape(request_id)}\?v=([0-9a-f]+)"', page)
    assert match, "the card does not poll"
    return match.group(1)


async def decide(
    web: httpx2.AsyncClient, token: str, request_id: str, sha: str, verdict: str, reason: str = ""
) -> httpx2.Response:
    return await web.post(
        f"/approvals/{request_id}/{verdict}",
        data={"sha": sha, "view": "inbox", "reason": reason},
        headers={**HX, "X-CSRF-Token": token},
    )


async def test_the_inbox_lists_pending_requests_oldest_expiry_first_with_the_count_in_the_title(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        empty = (await web.get("/inbox")).text
        assert "Nothing is waiting for you" in empty and "<title>Inbox — Countersign</title>" in empty
        later = await h.service.create(CANCEL)
        sooner = await h.service.create(
            replace(CANCEL, arguments={"orderId": 1005, "confirm": True}, timeout_seconds=60)
        )
        decided = await h.service.create(replace(CANCEL, arguments={"orderId": 1006, "confirm": True}))
        await h.service.withdraw(decided.id, "the agent went away")
        page = (await web.get("/inbox")).text
        assert card_ids(page) == [sooner.id, later.id]
        assert "<title>(2) Inbox — Countersign</title>" in page
        assert 'id="nav-count">2<' in page


async def test_polls_answer_204_until_something_changes_and_decided_cards_stay_in_place(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        token = await sign_in(web, "alice")
        first = await h.service.create(CANCEL)
        page = (await web.get("/inbox")).text
        assert (await web.get("/inbox/cards", params={"shown": first.id}, headers=HX)).status_code == 204
        version = version_of(page, first.id)
        assert (await web.get(f"/inbox/cards/{first.id}", params={"v": version}, headers=HX)).status_code == 204

        second = await h.service.create(replace(CANCEL, arguments={"orderId": 1005, "confirm": True}))
        await decide(web, token, first.id, first.arguments_sha256, "reject", "no")
        listing = await web.get("/inbox/cards", params=[("shown", first.id), ("shown", "")], headers=HX)
        assert listing.status_code == 200
        assert card_ids(listing.text) == [first.id, second.id], "the decided card keeps its place"
        assert 'data-status="rejected"' in listing.text

        changed = await web.get(f"/inbox/cards/{first.id}", params={"v": version}, headers=HX)
        assert changed.status_code == 200
        assert "Rejected by alice" in changed.text
        assert "hx-trigger" not in changed.text.split("<header", 1)[0], "a final card stops polling"


async def test_deciding_returns_the_card_with_the_outcome_and_a_late_decision_says_who_was_first(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h:
        request = await h.service.create(CANCEL)
        async with browser_client(h.base_url) as alice, browser_client(h.base_url) as bob:
            alice_token, bob_token = await sign_in(alice, "alice"), await sign_in(bob, "bob")
            first = await decide(alice, alice_token, request.id, request.arguments_sha256, "approve")
            assert first.status_code == 200
            assert f'<article id="req-{request.id}"' in first.text
            assert "Approved by you at" in first.text
            assert 'class="btn btn-approve"' not in first.text

            late = await decide(bob, bob_token, request.id, request.arguments_sha256, "reject", "wait")
            assert late.status_code == 409
            assert f'<article id="req-{request.id}"' in late.text
            assert re.search(r"Already approved by alice at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", late.text)
            assert [d.approver for d in await h.service.decisions(request.id)] == ["alice"]

            # Without JavaScript the same late decision shows the request page, with the same answer.
            plain = await bob.post(
                f"/approvals/{request.id}/approve", data={"csrf_token": bob_token, "sha": request.arguments_sha256}
            )
            assert plain.status_code == 409 and "Already approved by alice" in plain.text
            assert "<html" in plain.text


async def test_a_reason_is_required_to_reject_when_the_policy_says_so_and_digests_must_match(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        token = await sign_in(web, "alice")
        request = await h.service.create(replace(CANCEL, reject_reason_required=True))
        page = (await web.get("/inbox")).text
        assert "(required to reject)" in page and re.search(r'name="reason"[^>]*required', page, re.S)
        missing = await decide(web, token, request.id, request.arguments_sha256, "reject", "   ")
        assert missing.status_code == 422
        assert "requires a reason" in missing.text
        stale = await decide(web, token, request.id, "0" * 64, "approve")
        assert stale.status_code == 409
        assert "not the arguments you were shown" in stale.text
        assert (await h.service.get(request.id)).status.value == "pending"


async def test_an_approver_the_spec_does_not_allow_sees_no_buttons_and_is_refused_and_audited(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        token = await sign_in(web, "carol")
        request = await h.service.create(CANCEL)
        page = (await web.get("/inbox")).text
        assert request.id in page
        assert "btn-approve" not in page and "btn-reject" not in page
        assert "Only group:traders may decide this request" in page
        refused = await decide(web, token, request.id, request.arguments_sha256, "approve")
        assert refused.status_code == 403
        assert "You may not decide this request" in refused.text
        assert (await h.service.get(request.id)).status.value == "pending"
        [event] = await h.service.history.search_events(outcome="refused")
        assert (event.actor, event.channel) == ("carol", "web")


async def test_arguments_are_escaped_everywhere_they_are_shown(tmp_path: Path, sqlite_url: str) -> None:
    hostile = "</code></pre><script>alert(1)</script><img src=x onerror=alert(2)>\"'&"
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        request = await h.service.create(
            replace(CANCEL, arguments={"orderId": 1001, "note": hostile}, reason="<b>held</b>", agent="<i>bot</i>")
        )
        for path in ("/inbox", f"/approvals/{request.id}", "/audit", f"/inbox/cards/{request.id}"):
            body = (await web.get(path)).text
            assert "<script>alert" not in body and "<img src=x" not in body and "<b>held" not in body, path
            assert "<i>bot" not in body, path
        body = (await web.get(f"/approvals/{request.id}")).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


async def test_the_request_page_shows_the_timeline_and_the_upstreams_result(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (request, box):
            await h.api().post(f"/api/approvals/{request['id']}/approve", json={"reason": "flat by close"})
        assert not box["result"].is_error
        page = await web.get(f"/approvals/{request['id']}")
        assert page.status_code == 200
        kinds = re.findall(r'<code class="kind">([a-z.]+)</code>', page.text)
        assert kinds == ["call.lookup", "request.created", "request.approved", "request.executing", "request.executed"]
        assert "Cancel BUY 100 AAPL LMT 185.00, order 1001" in page.text
        assert "Upstream result" in page.text and "&#34;symbol&#34;: &#34;AAPL&#34;" in page.text
        assert "flat by close" in page.text
        assert f'href="/audit?request={request["id"]}"' in page.text

        assert 'hx-trigger="every' not in page.text, "a finished request's page stops polling"

        waiting = await h.service.create(CANCEL)
        live = (await web.get(f"/approvals/{waiting.id}")).text
        version = re.search(rf'hx-get="/approvals/{waiting.id}/detail\?v=([0-9a-f.]+)"', live)
        assert version, "a pending request's page polls"
        detail = f"/approvals/{waiting.id}/detail"
        assert (await web.get(detail, params={"v": version.group(1)}, headers=HX)).status_code == 204
        await h.service.reject(waiting.id, h.gateway.approvers.get("bob"), "api", "not today")
        updated = await web.get(detail, params={"v": version.group(1)}, headers=HX)
        assert updated.status_code == 200 and "not today" in updated.text and "request.rejected" in updated.text

        missing = await web.get("/approvals/apr_does_not_exist")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("text/html")
        assert "No such request" in missing.text


async def test_a_cancel_card_shows_the_order_as_looked_up_when_the_request_was_made(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1004, "confirm": True}) as (stop, _):
            card = (await web.get("/inbox")).text
            assert "Cancel SELL 50 MSFT STP stop 395.00, order 1004 — a protective stop" in card
            assert "<dt>order · status</dt><dd>PreSubmitted</dd>" in card
            assert "<dt>order · oca</dt><dd>OCA_1002</dd>" in card
            # The lookup went through the gateway's own policy and is on the record, under the gateway's name.
            [lookup] = [e for e in await h.service.history.events(request_id=stop["id"]) if e.kind == "call.lookup"]
            assert (lookup.agent, lookup.actor, lookup.tool, lookup.outcome) == (
                "countersign",
                "countersign",
                "ibkr_get_open_orders",
                "allowed",
            )
            assert lookup.detail["rule"] == 'tools["ibkr_get_*"]' and lookup.detail["for_agent"] == "alpha"
            await h.api().post(f"/api/approvals/{stop['id']}/reject", json={})

        async with held_call(h, "ibkr_cancel_order", {"orderId": 4242, "confirm": True}) as (unknown, _):
            card = (await web.get("/inbox")).text
            assert "Cancel order 4242" in card and "<dt>order</dt><dd>nothing found</dd>" in card
            await h.api().post(f"/api/approvals/{unknown['id']}/reject", json={})


async def test_pages_carry_security_headers_and_the_api_is_left_alone(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        page = await web.get("/inbox")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
        asset = await web.get("/static/htmx.min.js")
        assert asset.status_code == 200 and asset.text.startswith("var htmx")
        assert "no-store" not in asset.headers.get("cache-control", "")
        api = await h.api().get("/api/approvals")
        assert "content-security-policy" not in api.headers


async def test_with_a_quorum_of_two_each_approver_sees_the_count_and_the_second_approval_decides(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h:
        request = await h.service.create(replace(CANCEL, quorum=2))
        async with browser_client(h.base_url) as alice, browser_client(h.base_url) as bob:
            alice_token, bob_token = await sign_in(alice, "alice"), await sign_in(bob, "bob")
            first = await decide(alice, alice_token, request.id, request.arguments_sha256, "approve")
            assert first.status_code == 200
            assert "You approved. Waiting for 1 more approval(s)" in first.text
            assert "btn-approve" not in first.text
            bobs_view = (await bob.get("/inbox")).text
            assert "1 of 2 approvals" in bobs_view and "btn-approve" in bobs_view
            second = await decide(bob, bob_token, request.id, request.arguments_sha256, "approve")
            assert "Approved by alice, bob" in second.text
            assert (await h.service.get(request.id)).status.value == "approved"


async def test_a_request_whose_policy_does_not_ask_on_the_web_is_not_in_the_inbox_nor_decided_there(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, browser_client(h.base_url) as web:
        token = await sign_in(web, "alice")
        slack_only = await h.service.create(replace(CANCEL, channels=("slack",)))
        assert slack_only.id not in (await web.get("/inbox")).text
        page = (await web.get(f"/approvals/{slack_only.id}")).text
        assert "asks for decisions in slack, not here" in page and "btn-approve" not in page
        refused = await decide(web, token, slack_only.id, slack_only.arguments_sha256, "approve")
        assert refused.status_code == 403
        assert (await h.service.get(slack_only.id)).status.value == "pending"
