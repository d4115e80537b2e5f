"""An approver rejects one agent's pending requests at once (API, CLI, browser), each as a single rejection would be."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.gateway.test_cli import run_beside_server
from tests.harness import BOB_TOKEN, OTHER_AGENT_TOKEN, Harness, running_gateway
from tests.web.browser import PageWatch, chromium, new_page, require_browser, sign_in
from tests.web.support import PASSWORDS, web_config

LIVE_ORDER = {
    "contract": {"symbol": "AAPL", "secType": "STK", "exchange": "SMART", "currency": "USD"},
    "order": {"action": "BUY", "totalQuantity": 10, "orderType": "MKT"},
    "dry_run": False,
}


def policy() -> dict[str, Any]:
    """Cancels held for the traders (alice, bob) on the web; live orders held for carol only."""

    def held(approvers: list[str]) -> dict[str, Any]:
        approval = {"timeout": "15m", "approvers": approvers, "channels": ["web"], "max_hold": "0.05s"}
        return {"require_approval": [{"conditions": [], "reason": "A human decides."}], "approval": approval}

    return {
        "version": "1",
        "default": "deny",
        "tools": {"ibkr_get_*": {}, "ibkr_cancel_order": held(["group:traders"]), "ibkr_place_order": held(["carol"])},
    }


async def flood(h: Harness) -> dict[str, str]:
    """alpha: three cancels and a live order; bravo: one cancel. Returns each request's id by what it asks."""
    async with h.agent() as alpha:
        for order_id in (1, 2, 3):
            await alpha.call_tool("ibkr_cancel_order", {"orderId": order_id, "confirm": True})
        await alpha.call_tool("ibkr_place_order", LIVE_ORDER)
    async with h.agent(OTHER_AGENT_TOKEN) as bravo:
        await bravo.call_tool("ibkr_cancel_order", {"orderId": 1001, "confirm": True})
    pending = await h.pending(5)
    return {
        f"{r['agent']}:{r['tool']}:{r['arguments'].get('orderId', 'live')}": r["id"]
        for r in pending
        if r["status"] == "pending"
    }


async def statuses(h: Harness) -> dict[str, str]:
    return {r["id"]: r["status"] for r in await h.pending_or_all()}


async def test_rejecting_an_agents_requests_through_the_api_decides_each_one_and_reports_the_refused(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=policy(), config=web_config()) as h:
        ids = await flood(h)
        api = h.api()

        response = await api.post("/api/approvals/reject", json={"agent": "alpha", "reason": "a runaway loop"})

        assert response.status_code == 200, response.text
        body = response.json()
        cancels = {ids[f"alpha:ibkr_cancel_order:{n}"] for n in (1, 2, 3)}
        live = ids["alpha:ibkr_place_order:live"]
        assert set(body["rejected"]) == cancels
        assert [r["id"] for r in body["refused"]] == [live]
        assert "not among the approvers" in body["refused"][0]["detail"]
        now = await statuses(h)
        assert {now[i] for i in cancels} == {"rejected"}
        assert now[live] == "pending", "alice may not decide carol's request, in bulk or not"
        assert now[ids["bravo:ibkr_cancel_order:1001"]] == "pending", "another agent's request is untouched"
        rejected = (await api.get(f"/api/approvals/{ids['alpha:ibkr_cancel_order:1']}")).json()
        assert (rejected["decided_by"], rejected["decided_via"], rejected["decision_reason"]) == (
            "alice",
            "api",
            "a runaway loop",
        )

        for bad, problem in (({}, "agent must name"), ({"agent": "alpha", "orderId": 1}, "unknown key")):
            refused = await api.post("/api/approvals/reject", json=bad)
            assert refused.status_code == 400 and problem in refused.json()["detail"]
        assert (await h.api("not-a-token").post("/api/approvals/reject", json={"agent": "alpha"})).status_code == 401


async def test_the_cli_rejects_an_agents_requests_and_exits_1_when_some_were_not(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=policy(), config=web_config()) as h:
        ids = await flood(h)

        connect = ["--url", h.base_url, "--token", BOB_TOKEN]
        code, out, err = await run_beside_server(["approvals", "reject", "--agent", "alpha", *connect])

        assert code == 1, err
        assert "rejected 3 pending request(s) of agent 'alpha'; 1 could not be rejected" in out
        assert f"not rejected: {ids['alpha:ibkr_place_order:live']}" in out
        assert (await statuses(h))[ids["alpha:ibkr_cancel_order:2"]] == "rejected"
        code, _, err = await run_beside_server(["approvals", "reject", "apr_x", "--agent", "alpha", *connect])
        assert code == 2 and "not both" in err


@pytest.mark.browser
async def test_an_approver_filters_the_inbox_by_agent_and_rejects_its_requests_after_confirming(
    tmp_path: Path, sqlite_url: str
) -> None:
    require_browser()
    async with (
        running_gateway(tmp_path, sqlite_url, policy=policy(), config=web_config()) as h,
        chromium(tmp_path) as browser,
    ):
        ids = await flood(h)
        page = await new_page(browser, h.base_url)
        watch = PageWatch(page)
        await sign_in(page, "alice", PASSWORDS["alice"])

        await page.get_by_role("navigation", name="Waiting, by agent").get_by_role("link", name="alpha").click()
        await page.wait_for_url("**/inbox?agent=alpha")
        assert await page.locator(".card").count() == 4
        assert await page.locator(f"#req-{ids['bravo:ibkr_cancel_order:1001']}").count() == 0

        await page.get_by_role("link", name="Reject all 4 from alpha…").click()
        await page.get_by_role("heading", name="Reject all 4 pending requests from alpha?").wait_for()
        assert (await statuses(h))[ids["alpha:ibkr_cancel_order:1"]] == "pending", "nothing happens before confirming"
        await page.get_by_label("Reason").fill("a runaway loop")
        await page.get_by_role("button", name="Reject 4 requests from alpha").click()

        await page.get_by_role("heading", name="Rejected 3 requests from alpha").wait_for()
        refused = await page.locator(".bulk-refused").inner_text()
        assert ids["alpha:ibkr_place_order:live"] in refused and "not among the approvers" in refused
        now = await statuses(h)
        assert [now[ids[f"alpha:ibkr_cancel_order:{n}"]] for n in (1, 2, 3)] == ["rejected"] * 3
        assert now[ids["bravo:ibkr_cancel_order:1001"]] == "pending"
        assert watch.dialogs == [] and watch.errors == []


async def test_the_bulk_reject_form_needs_the_sessions_csrf_token(tmp_path: Path, sqlite_url: str) -> None:
    from tests.web.support import browser_client
    from tests.web.support import sign_in as sign_in_http

    async with running_gateway(tmp_path, sqlite_url, policy=policy(), config=web_config()) as h:
        ids = await flood(h)
        async with browser_client(h.base_url) as web:
            await sign_in_http(web, "alice")
            forged = await web.post("/inbox/reject-agent", data={"agent": "alpha", "csrf_token": "forged"})
            assert forged.status_code == 403
        assert (await statuses(h))[ids["alpha:ibkr_cancel_order:1"]] == "pending"
