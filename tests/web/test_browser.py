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
from typing import TYPE_CHECKING

import anyio
import pytest

from approvals.approvers import Approver
from tests.factories import held_cancel
from tests.harness import ALICE_TOKEN, CAROL_TOKEN, held_call, running_gateway
from tests.web.browser import (
    LAPTOP,
    PHONE,
    PageWatch,
    chromium,
    new_page,
    overflows,
    require_browser,
    screenshot,
    sign_in,
    title_is,
)
from tests.web.support import PASSWORDS, text_of, web_config

if TYPE_CHECKING:
    from playwright.async_api import Locator

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
            await title_is(page, r"^\(1\) ")
            assert "ibkr_cancel_order" in await card.locator(".card-title").inner_text()
            assert "paper" in await card.locator(".card-title").inner_text()
            facts = await card.locator(".facts").inner_text()
            assert "alpha" in facts and "still waiting" in facts
            assert "Cancelling a live order needs a human." in facts
            # The order being cancelled, looked up at the broker when the request was made.
            order = card.locator(".order")
            await order.get_by_text("AAPL").wait_for()
            assert "BUY" in await order.inner_text()
            assert json.loads(await card.locator(".arguments code").inner_text()) == {"orderId": 1001, "confirm": True}

            await card.get_by_role("button", name="Approve").click()
            await card.locator(".result-summary").wait_for()
            assert '"symbol": "AAPL"' in await card.locator(".result-summary").inner_text()
            assert "Executed" in await card.locator(".badge").inner_text()
            assert "Approved by alice and executed." in await card.locator(".story").inner_text()
            assert "Decided by alice via web" in await card.inner_text()
            # Nothing is waiting now: the heading must not read "Waiting for a decision 0" above this card.
            await page.locator("#pending-title", has_text=re.compile(r"^Inbox$")).wait_for()
            assert await page.locator("#pending-count").is_hidden()
            assert await page.locator("#decided-note").is_visible()
            assert await overflows(page) == []
            await screenshot(page, "inbox-executed")

        result = box["result"]
        assert not result.is_error, text_of(result)
        assert result.structured_content["orderId"] == 1001
        assert result.structured_content["trade"]["orderStatus"]["status"] == "Cancelled"
        assert h.book.cancel_calls == 1
        await title_is(page, r"^[^(]")
        assert await page.evaluate("window.__sameDocument") is True

        await page.get_by_role("link", name="Details and timeline").click()
        timeline = page.locator(".timeline")
        for kind in ("request.created", "request.approved", "request.executing", "request.executed"):
            await timeline.get_by_text(kind).wait_for()
        assert "Cancelled" in await page.get_by_role("heading", name="Upstream result").locator("..").inner_text()

        # A phone gets the same card, with buttons one thumb wide.
        phone = await new_page(browser, h.base_url, viewport=PHONE)
        await sign_in(phone, "alice", PASSWORDS["alice"])
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1004, "confirm": True}) as (request, box):
            card = phone.locator(f"#req-{request['id']}")
            await card.locator(".card-title").get_by_text("protective stop").wait_for()
            approve = await card.get_by_role("button", name="Approve").bounding_box()
            assert approve is not None and approve["width"] > PHONE["width"] * 0.7
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
            # Bob's page still cannot poll, and says so.
            await bob.locator("#flash").get_by_text("Cannot reach the gateway").wait_for()
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
        # The agent's two calls, the gateway's lookup of the order the cancel names, the request and its rejection.
        assert "5 events verified" in await page.locator("#chain").inner_text()
        assert "5 matching events" in await page.locator("#result-count").inner_text()

        await page.get_by_label("Tool").fill("ibkr_cancel_order")
        await page.get_by_label("Outcome").select_option("rejected")
        await page.get_by_role("button", name="Filter").click()
        await page.wait_for_url(re.compile(r".*outcome=rejected.*"))
        rows = page.locator("table.events tbody tr")
        assert await rows.count() == 1
        row = await rows.first.inner_text()
        assert "alice" in row and "wrong account" in row and "ibkr_cancel_order" in row
        assert row.count("wrong account") == 1, "the reason is shown once"

        async with page.expect_download() as download_info:
            await page.locator("#export-csv").click()
        exported = await (await download_info.value).path()
        records = list(csv.DictReader(io.StringIO(await anyio.Path(exported).read_text())))
        assert [(r["outcome"], r["actor"], r["request_id"]) for r in records] == [("rejected", "alice", request["id"])]
        detail = json.loads(records[0]["detail"])
        # The reason, and what the decision is bound to: the arguments' digest and the policy version.
        assert detail["reason"] == "wrong account"
        assert detail["arguments_sha256"] == request["arguments_sha256"]
        assert detail["policy_version"] == request["policy_version"]

        async with page.expect_download() as download_info:
            await page.locator("#export-json").click()
        document = json.loads(await anyio.Path(await (await download_info.value).path()).read_text())
        assert document["filter"] == {"tool": "ibkr_cancel_order", "outcome": "rejected"}
        assert [e["seq"] for e in document["events"]] == [int(r["seq"]) for r in records]

        # Text search over arguments finds the held call by its order id, and only it.
        await page.goto("/audit?q=1006")
        texts = await page.locator("table.events tbody tr").all_inner_texts()
        assert len(texts) == 1 and "held" in texts[0].lower()


async def test_the_inbox_request_and_audit_pages_fit_a_laptop_and_a_phone_and_read_as_text(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, chromium(tmp_path) as browser:
        async with h.agent() as agent:
            assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error
            assert (await agent.call_tool("ibkr_global_cancel", {"confirm": True})).is_error
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (executed, box):
            await h.api().post(f"/api/approvals/{executed['id']}/approve", json={"reason": "flat by close"})
        assert not box["result"].is_error
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1005, "confirm": True}) as (rejected, box):
            await h.api().post(f"/api/approvals/{rejected['id']}/reject", json={"reason": "that order is the hedge"})
        assert box["result"].is_error

        async with held_call(h, "ibkr_cancel_order", {"orderId": 1004, "confirm": True}) as (held, box):
            for viewport, suffix in ((LAPTOP, ""), (PHONE, "-phone")):
                page = await new_page(browser, h.base_url, viewport=viewport)
                watch = PageWatch(page)
                await sign_in(page, "alice", PASSWORDS["alice"])
                width = f"at {viewport['width']} px"

                card = page.locator(f"#req-{held['id']}")
                await card.locator(".card-title").get_by_text("protective stop").wait_for()
                assert await overflows(page) == [], f"the inbox {width}"
                if viewport is LAPTOP:
                    instrument = card.locator(".order-facts dd").first
                    assert await instrument.evaluate("el => el.getClientRects().length") == 1, "instrument wraps"
                await screenshot(page, "inbox-held-cancel" if viewport is LAPTOP else "inbox-phone", full_page=True)

                await page.goto(f"/approvals/{held['id']}")
                await page.locator(".card-title").get_by_text("protective stop").wait_for()
                timeline = await page.locator(".timeline").inner_text()
                assert "Expires" in timeline and "Approvals needed" in timeline and "expires_at" not in timeline
                assert await overflows(page) == [], f"the held request's page {width}"
                await screenshot(page, f"request-held-cancel{suffix}", full_page=viewport is LAPTOP)

                await page.goto(f"/approvals/{executed['id']}")
                await page.locator(".timeline").get_by_text("request.executed").wait_for()
                result = await page.locator(".detail-main > .panel pre").first.inner_text()
                assert '"symbol": "AAPL"' in result and "\n" in result and "\\n" not in result
                agent_fact = await page.locator(".facts-wide dt", has_text="Agent").locator("..").inner_text()
                assert "session" not in agent_fact.lower()
                assert await overflows(page) == [], f"the executed request's page {width}"
                await screenshot(page, f"request-executed{suffix}", full_page=viewport is LAPTOP)

                await page.goto("/audit")
                await page.locator(".chain-ok").wait_for()
                assert await overflows(page) == [], f"the audit page {width}"
                rows = page.locator("table.events tbody tr")
                rejected_row = await rows.filter(has_text="request.rejected").inner_text()
                assert rejected_row.count("that order is the hedge") == 1
                executed_row = await rows.filter(has_text="request.executed").inner_text()
                assert "conId" not in executed_row, "the raw result stays folded away"
                if viewport is LAPTOP:
                    first = rows.first
                    assert await first.locator(".time-cell .moment").evaluate("el => el.getClientRects().length") == 1
                    assert await _word_lines(rows.filter(has_text="1004").locator(".args-cell code"), "orderId") == 1
                if viewport is PHONE:
                    # The phone's picture shows the events, not the filter form above them.
                    await page.locator("#result-count").evaluate("el => el.scrollIntoView({block: 'start'})")
                await screenshot(page, f"audit{suffix}", full_page=viewport is LAPTOP)
                assert watch.errors == [] and watch.dialogs == []
            await h.api().post(f"/api/approvals/{held['id']}/reject", json={"reason": "pictures taken"})
        assert box["result"].is_error


async def _word_lines(element: Locator, word: str) -> int:
    """On how many lines the first occurrence of `word` in the element's text is drawn (1 unless it is split)."""
    lines: int = await element.evaluate(
        """(el, word) => {
          const node = el.firstChild, at = node.textContent.indexOf(word);
          const range = document.createRange();
          range.setStart(node, at);
          range.setEnd(node, at + word.length);
          return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
        }""",
        word,
    )
    return lines


async def test_a_plain_text_result_with_long_lines_reads_as_text_and_stays_inside_its_card(
    tmp_path: Path, sqlite_url: str
) -> None:
    # What a FastMCP tool returning a string sends: the text, and the same text wrapped as {"result": …}.
    text = "Read /srv/exports/" + "quarterly_positions_" * 6 + "final.csv:\nsymbol,qty\nAAPL,100\nMSFT,-50"
    result = {"content": [{"type": "text", "text": text}], "structuredContent": {"result": text}, "isError": False}
    async with running_gateway(tmp_path, sqlite_url, config=web_config()) as h, chromium(tmp_path) as browser:
        # A stdio agent's session is named after the agent; the page must not say "alpha session alpha".
        request = await h.service.create(
            held_cancel(tool="fs_read_file", upstream_tool="read_file", arguments={"path": "/srv"}, session_id="alpha")
        )
        await h.service.approve(request.id, Approver("alice", groups=("traders",)), "api")
        await h.service.begin_execution(request.id, request.arguments_sha256)
        await h.service.finish_execution(request.id, ok=True, result=result, error=None, summary=" ".join(text.split()))

        for viewport in (LAPTOP, PHONE):
            page = await new_page(browser, h.base_url, viewport=viewport)
            await sign_in(page, "alice", PASSWORDS["alice"])
            await page.goto(f"/approvals/{request.id}")
            await page.locator(".timeline").get_by_text("request.executed").wait_for()
            shown = await page.locator(".detail-main > .panel pre").first.inner_text()
            assert shown == text, "the text with its own line breaks, not JSON with a literal \\n"
            agent_fact = await page.locator(".facts-wide dt", has_text="Agent").locator("..").inner_text()
            assert "session" not in agent_fact.lower()
            assert await overflows(page) == [], f"the request page at {viewport['width']} px"
            await page.goto("/audit")
            await page.locator(".chain-ok").wait_for()
            assert await overflows(page) == [], f"the audit page at {viewport['width']} px"
