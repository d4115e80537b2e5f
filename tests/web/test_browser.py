"""The inbox and audit history in a real browser: Debian's Chromium driven by Playwright (async API).

Each test serves the paper broker and the gateway on loopback in the test's own loop, and real MCP
agents make the calls, so what the page shows is what the agent gets.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import anyio
import pytest

from tests.harness import ALICE_TOKEN, CAROL_TOKEN, held_call, running_gateway
from tests.web.browser import PHONE, PageWatch, chromium, new_page, require_browser, screenshot, sign_in
from tests.web.support import PASSWORDS, text_of, web_config

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def _browser() -> None:
    require_browser()


async def test_a_held_cancel_appears_without_a_reload_and_approving_it_returns_the_brokers_result(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, chromium(tmp_path) as browser:
        page = await new_page(browser, h.base_url)
        watch = PageWatch(page)
        await sign_in(page, "alice", PASSWORDS["alice"], shot="signin")
        await page.get_by_text("Nothing is waiting for you").wait_for()
        await screenshot(page, "inbox-empty")
        # Survives only if the page is never reloaded.
        await page.evaluate("window.__sameDocument = true")

        async with held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (request, box):
            card = page.locator(f"#req-{request['id']}")
            await card.wait_for()
            assert await page.evaluate("window.__sameDocument") is True
            await page.wait_for_function("document.title.startsWith('(1) ')")
            assert "ibkr_cancel_order" in await card.locator(".card-title").inner_text()
            assert "paper" in await card.locator(".card-title").inner_text()
            facts = await card.locator(".facts").inner_text()
            assert "alpha" in facts and "still waiting" in facts
            assert "Cancelling a live order needs a human." in facts
            # The order being cancelled, looked up at the broker.
            order = card.locator(".order")
            await order.get_by_text("AAPL").wait_for()
            assert "BUY" in await order.inner_text()
            assert json.loads(await card.locator(".arguments code").inner_text()) == {"orderId": 1001, "confirm": True}
            await screenshot(page, "inbox-held-cancel")

            await card.get_by_role("button", name="Approve").click()
            await card.locator(".result-summary").wait_for()
            assert "Order 1001 is now Cancelled." in await card.locator(".result-summary").inner_text()
            assert "Executed" in await card.locator(".badge").inner_text()
            assert "Approved by alice and executed." in await card.locator(".story").inner_text()
            assert "Decided by alice via web" in await card.inner_text()
            await screenshot(page, "inbox-executed")

        result = box["result"]
        assert not result.is_error, text_of(result)
        assert result.structured_content["orderId"] == 1001
        assert result.structured_content["trade"]["orderStatus"]["status"] == "Cancelled"
        assert h.book.cancel_calls == 1
        await page.wait_for_function("!document.title.startsWith('(')")
        assert await page.evaluate("window.__sameDocument") is True

        await page.get_by_role("link", name="Details and timeline").click()
        timeline = page.locator(".timeline")
        for kind in ("request.created", "request.approved", "request.executing", "request.executed"):
            await timeline.get_by_text(kind).wait_for()
        assert "Cancelled" in await page.get_by_role("heading", name="Upstream result").locator("..").inner_text()
        await screenshot(page, "request-page", full_page=True)

        # A phone gets the same card, with buttons one thumb wide.
        phone = await new_page(browser, h.base_url, viewport=PHONE)
        await sign_in(phone, "alice", PASSWORDS["alice"])
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1004, "confirm": True}) as (request, box):
            card = phone.locator(f"#req-{request['id']}")
            await card.locator(".order").get_by_text("protective stop").wait_for()
            approve = await card.get_by_role("button", name="Approve").bounding_box()
            assert approve is not None and approve["width"] > PHONE["width"] * 0.7
            await screenshot(phone, "inbox-phone")
            await card.get_by_label("Reason").fill("keep the stop")
            await card.get_by_role("button", name="Reject").click()
            await card.locator(".story").get_by_text("keep the stop").wait_for()
        assert watch.errors == [] and watch.dialogs == []


async def test_a_rejection_reaches_the_agent_and_a_second_browser_is_told_it_was_already_decided(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, chromium(tmp_path) as browser:
        alice = await new_page(browser, h.base_url)
        bob = await new_page(browser, h.base_url)
        await sign_in(alice, "alice", PASSWORDS["alice"])
        await sign_in(bob, "bob", PASSWORDS["bob"])

        async with held_call(h, "ibkr_cancel_order", {"orderId": 1005, "confirm": True}) as (request, box):
            await bob.reload()
            bob_card = bob.locator(f"#req-{request['id']}")
            await bob_card.wait_for()

            # Bob's page goes stale (a slow phone, a laptop lid): it stops hearing about changes.
            async def offline(route: object) -> None:
                from playwright.async_api import Route

                assert isinstance(route, Route)
                await route.abort()

            await bob.route(re.compile(r".*/inbox/cards.*"), offline)

            alice_card = alice.locator(f"#req-{request['id']}")
            await alice_card.get_by_label("Reason").fill("that order is the hedge for TSLA")
            await alice_card.get_by_role("button", name="Reject").click()
            await alice_card.locator(".story").wait_for()
            assert (
                "Rejected by alice: that order is the hedge for TSLA."
                in await alice_card.locator(".story").inner_text()
            )
            assert "Decided by alice via web" in await alice_card.inner_text()

            await bob_card.get_by_role("button", name="Approve").click()
            notice = bob_card.locator(".notice")
            await notice.get_by_text("Already rejected by alice at").wait_for()
            assert "not recorded" in await notice.inner_text()
            assert "Rejected" in await bob_card.locator(".badge").inner_text()
            await screenshot(bob, "inbox-already-decided")

        result = box["result"]
        assert result.is_error
        assert text_of(result) == (
            "[APPROVAL REJECTED] Rejected by alice: that order is the hedge for TSLA. The call was not executed."
        )
        assert h.book.cancel_calls == 0
        decisions = await h.service.decisions(request["id"])
        assert [(d.approver, d.verdict) for d in decisions] == [("alice", "reject")]


async def test_hostile_arguments_render_as_text_outsiders_get_no_buttons_and_forged_posts_are_refused(
    tmp_path: Path, sqlite_url: str
) -> None:
    hostile = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2; alert(1)">'
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, chromium(tmp_path) as browser:
        alice = await new_page(browser, h.base_url)
        carol = await new_page(browser, h.base_url)
        alice_watch, carol_watch = PageWatch(alice), PageWatch(carol)
        await sign_in(alice, "alice", PASSWORDS["alice"])
        await sign_in(carol, "carol", PASSWORDS["carol"])

        async with held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True, "note": hostile}) as (
            request,
            box,
        ):
            card = alice.locator(f"#req-{request['id']}")
            await card.wait_for()
            shown = json.loads(await card.locator(".arguments code").inner_text())
            assert shown["note"] == hostile
            assert await card.locator(".arguments img, .arguments script").count() == 0
            assert await alice.evaluate("window.__pwned") is None

            # Carol is an approver, but not one this tool's approval spec allows.
            carol_card = carol.locator(f"#req-{request['id']}")
            await carol_card.wait_for()
            assert await carol_card.get_by_role("button").count() == 0
            assert "you are not among them" in await carol_card.inner_text()
            await screenshot(carol, "inbox-not-allowed")
            refused = await h.api(CAROL_TOKEN).post(f"/api/approvals/{request['id']}/approve", json={})
            assert refused.status_code == 403, refused.text
            csrf = await carol.locator('input[name="csrf_token"]').first.input_value()
            forged = await carol.request.post(
                f"/approvals/{request['id']}/approve",
                form={"csrf_token": csrf, "sha": request["arguments_sha256"], "view": "inbox"},
            )
            assert forged.status == 403

            # Without the CSRF token even Alice's own session is refused.
            no_token = await alice.request.post(
                f"/approvals/{request['id']}/approve", form={"sha": request["arguments_sha256"], "view": "inbox"}
            )
            assert no_token.status == 403
            assert "CSRF" in await no_token.text()
            assert (await h.service.get(request["id"])).status.value == "pending"

            await h.api(ALICE_TOKEN).post(f"/api/approvals/{request['id']}/reject", json={"reason": "test over"})
        assert box["result"].is_error
        assert await alice.evaluate("window.__pwned") is None
        for watch in (alice_watch, carol_watch):
            assert watch.dialogs == [] and watch.errors == []
        refusals = await h.service.history.search_events(outcome="refused")
        assert [(e.actor, e.request_id) for e in refusals] == [("carol", request["id"]), ("carol", request["id"])]


async def test_the_audit_page_filters_and_exports_what_the_agent_and_the_approver_did(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, chromium(tmp_path) as browser:
        async with h.agent() as agent:
            assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error
            assert (await agent.call_tool("ibkr_global_cancel", {"confirm": True})).is_error
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1006, "confirm": True}) as (request, box):
            await h.api().post(f"/api/approvals/{request['id']}/reject", json={"reason": "wrong account"})
        assert box["result"].is_error

        page = await new_page(browser, h.base_url)
        await sign_in(page, "alice", PASSWORDS["alice"])
        await page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit history").click()
        await page.locator(".chain-ok").get_by_text("Chain intact").wait_for()
        assert "4 events verified" in await page.locator("#chain").inner_text()
        assert "4 matching events" in await page.locator("#result-count").inner_text()

        await page.get_by_label("Tool").fill("ibkr_cancel_order")
        await page.get_by_label("Outcome").select_option("rejected")
        await page.get_by_role("button", name="Filter").click()
        await page.wait_for_url(re.compile(r".*outcome=rejected.*"))
        rows = page.locator("table.events tbody tr")
        assert await rows.count() == 1
        row = await rows.first.inner_text()
        assert "alice" in row and "wrong account" in row and "ibkr_cancel_order" in row
        await screenshot(page, "audit", full_page=True)

        async with page.expect_download() as download_info:
            await page.locator("#export-csv").click()
        exported = await (await download_info.value).path()
        records = list(csv.DictReader(io.StringIO(await anyio.Path(exported).read_text())))
        assert [(r["outcome"], r["actor"], r["request_id"]) for r in records] == [("rejected", "alice", request["id"])]
        assert json.loads(records[0]["detail"]) == {"reason": "wrong account"}

        async with page.expect_download() as download_info:
            await page.locator("#export-json").click()
        document = json.loads(await anyio.Path(await (await download_info.value).path()).read_text())
        assert document["filter"] == {"tool": "ibkr_cancel_order", "outcome": "rejected"}
        assert [e["seq"] for e in document["events"]] == [int(r["seq"]) for r in records]

        # Text search over arguments finds the held call by its order id, and only it.
        await page.goto("/audit?q=1006")
        texts = await page.locator("table.events tbody tr").all_inner_texts()
        assert len(texts) == 1 and "held" in texts[0].lower()
