"""Approving with edits: an approver changes an editable argument, and exactly the changed call runs.

Driven through the product's surfaces: an agent's MCP call to the paper broker, the approver API,
`countersign approvals approve --set`, and the web card's form; checked on the broker's side (its
book), in the agent's result and in the audit chain.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import mcp_types as types

from gateway.demo import DEMO_POLICY
from gateway.results import EDITED_META
from tests.gateway.test_cli import run_beside_server
from tests.harness import ALICE_TOKEN, CAROL_TOKEN, Harness, held_call, running_gateway
from tests.web.support import browser_client, sign_in, web_config

ORDER = {
    "contract": {"symbol": "AAPL", "secType": "STK", "exchange": "SMART", "currency": "USD"},
    "order": {"action": "BUY", "totalQuantity": 500, "orderType": "LMT", "lmtPrice": 150},
    "confirm": True,
    "dry_run": False,
    "transmit": True,
}


def editable_policy(**approval: Any) -> dict[str, Any]:
    """The demo's policy, where a live order's quantity and limit price may be changed by the approver."""
    policy = copy.deepcopy(DEMO_POLICY)
    policy["tools"]["ibkr_place_order"]["approval"] = {
        "approvers": ["group:traders"],
        "channels": ["web"],
        "editable": ["order.totalQuantity", "order.lmtPrice"],
        **approval,
    }
    return policy


def text(result: types.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, types.TextContent))


def placed(h: Harness) -> list[tuple[str, float, float | None]]:
    return [(o.action, o.total_quantity, o.lmt_price) for o in h.book.orders.values() if o.status != "Cancelled"]


async def test_an_approval_with_a_changed_quantity_places_the_changed_order_and_tells_the_agent(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url, policy=editable_policy()) as h:
        before = placed(h)
        async with held_call(h, "ibkr_place_order", ORDER) as (request, outcome):
            assert request["editable"] == ["order.totalQuantity", "order.lmtPrice"]
            answer = await h.api().post(
                f"/api/approvals/{request['id']}/approve", json={"edits": {"order.totalQuantity": 50}}
            )
            assert answer.status_code == 200, answer.text
            approved = answer.json()["approval"]
            assert approved["arguments"]["order"]["totalQuantity"] == 50
            assert approved["original_arguments"]["order"]["totalQuantity"] == 500
            assert approved["edits"] == [{"path": "order.totalQuantity", "before": 500, "after": 50}]
            assert "Approved with changes: order.totalQuantity 500 → 50" in approved["terms"]

        result = outcome["result"]
        assert not result.is_error, text(result)
        assert "changed this call before approving it: order.totalQuantity 500 → 50" in text(result)
        meta = (result.meta or {})[EDITED_META]
        assert meta["changes"] == [{"path": "order.totalQuantity", "before": 500, "after": 50}]
        assert meta["original_arguments_sha256"] == request["arguments_sha256"]
        assert meta["arguments_sha256"] == approved["arguments_sha256"] != request["arguments_sha256"]
        # The broker received the changed order, and only that one.
        assert placed(h) == [*before, ("BUY", 50, 150)]

        events = {e.kind: e for e in await h.service.history.events(request_id=request["id"])}
        decided, started = events["request.approved"], events["request.executing"]
        assert decided.detail["original_arguments_sha256"] == request["arguments_sha256"]
        assert decided.detail["arguments_sha256"] == approved["arguments_sha256"]
        assert started.detail["arguments_sha256"] == approved["arguments_sha256"]
        verified = (await h.api().get("/api/audit/verify")).json()
        assert verified["ok"], verified


async def test_an_edit_past_a_deny_rule_is_refused_and_the_request_stays_pending(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=editable_policy()) as h:
        async with held_call(h, "ibkr_place_order", ORDER) as (request, outcome):
            url = f"/api/approvals/{request['id']}/approve"
            past_limit = await h.api().post(url, json={"edits": {"order.totalQuantity": 5000}})
            assert past_limit.status_code == 400
            assert past_limit.json()["detail"] == (
                "the policy refuses the changed call: Orders above 1000 shares are not allowed."
            )
            not_editable = await h.api().post(url, json={"edits": {"contract.symbol": "TSLA"}})
            assert not_editable.status_code == 400
            assert "'contract.symbol' may not be changed" in not_editable.json()["detail"]
            wrong_type = await h.api().post(url, json={"edits": {"order.totalQuantity": "many"}})
            assert wrong_type.status_code == 400
            assert "a value of the wrong type counts against the call" in wrong_type.json()["detail"]

            still = (await h.api().get(f"/api/approvals/{request['id']}")).json()
            assert still["status"] == "pending" and still["arguments"] == ORDER
            refusals = [e for e in still["events"] if e["kind"] == "decision.refused"]
            assert len(refusals) == 3
            assert "Orders above 1000 shares" in refusals[0]["message"]

            # A text value, as typed on a command line, is read as the argument's type.
            code, out, err = await run_beside_server(
                [
                    "approvals",
                    "approve",
                    request["id"],
                    "--set",
                    "order.lmtPrice=149.5",
                    "--url",
                    h.base_url,
                    "--token",
                    ALICE_TOKEN,
                ]
            )
            assert code == 0, err
            assert "with changes (order.lmtPrice 150 → 149.5)" in out
        assert not outcome["result"].is_error
        assert ("BUY", 500, 149.5) in placed(h)


async def test_the_cli_refuses_an_edit_of_an_argument_the_policy_does_not_list(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=editable_policy()) as h:
        async with held_call(h, "ibkr_place_order", ORDER) as (request, outcome):
            where = ["--url", h.base_url, "--token", ALICE_TOKEN]
            code, _, err = await run_beside_server(
                ["approvals", "approve", request["id"], "--set", "transmit=0", *where]
            )
            assert code == 1
            assert "'transmit' may not be changed; this tool's policy lets approvers change: order.totalQuantity" in err
            code, _, err = await run_beside_server(
                ["approvals", "approve", request["id"], "--set", "order.totalQuantity", *where]
            )
            assert code == 2 and "--set takes PATH=VALUE" in err
            await h.api().post(f"/api/approvals/{request['id']}/reject", json={"reason": "no"})
        assert outcome["result"].is_error


async def test_an_approver_outside_the_request_cannot_approve_with_changes_either(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=editable_policy()) as h:
        async with held_call(h, "ibkr_place_order", ORDER) as (request, outcome):
            carol = await h.api(CAROL_TOKEN).post(
                f"/api/approvals/{request['id']}/approve", json={"edits": {"order.totalQuantity": 5}}
            )
            assert carol.status_code == 403
            await h.api().post(f"/api/approvals/{request['id']}/reject", json={"reason": "no"})
        assert outcome["result"].is_error


async def test_the_web_card_offers_the_editable_arguments_and_approves_the_changed_call(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=editable_policy(), config=web_config()) as h:
        async with held_call(h, "ibkr_place_order", ORDER) as (request, outcome), browser_client(h.base_url) as web:
            csrf = await sign_in(web, "alice")
            page = await web.get(f"/approvals/{request['id']}")
            assert 'name="edit:order.totalQuantity" value="500"' in page.text
            assert 'name="edit:order.lmtPrice" value="150"' in page.text
            assert 'name="edit:contract.symbol"' not in page.text
            form = {
                "csrf_token": csrf,
                "sha": request["arguments_sha256"],
                "view": "detail",
                "edit:order.totalQuantity": "2000",
                "edit:order.lmtPrice": "150",
            }
            refused = await web.post(f"/approvals/{request['id']}/approve", data=form)
            assert refused.status_code == 422
            assert "Orders above 1000 shares are not allowed." in refused.text
            form["edit:order.totalQuantity"] = "20"
            done = await web.post(f"/approvals/{request['id']}/approve", data=form)
            assert done.status_code == 303, done.text
            shown = (await web.get(f"/approvals/{request['id']}")).text
            assert "Approved with changes: order.totalQuantity 500 → 20" in shown
            assert "As the agent sent them" in shown
        assert not outcome["result"].is_error
        assert ("BUY", 20, 150) in placed(h)


async def test_a_changed_value_is_read_by_the_schema_and_a_value_outside_it_is_refused(
    tmp_path: Path, sqlite_url: str
) -> None:
    policy = copy.deepcopy(DEMO_POLICY)
    policy["tools"]["ibkr_cancel_order"]["approval"].update(editable=["orderId"], channels=["web"])
    async with running_gateway(tmp_path, sqlite_url, policy=policy) as h:
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (request, outcome):
            url = f"/api/approvals/{request['id']}/approve"
            refused = await h.api().post(url, json={"edits": {"orderId": "the first one"}})
            assert refused.status_code == 400
            assert refused.json()["detail"].startswith("the changed call does not fit the tool's input schema")
            # The schema says orderId is an integer: the text "1003" is the number 1003.
            done = await h.api().post(url, json={"edits": {"orderId": "1003"}})
            assert done.status_code == 200, done.text
            assert done.json()["approval"]["arguments"] == {"orderId": 1003, "confirm": True}
        assert not outcome["result"].is_error
        assert h.book.orders[1003].status == "Cancelled" and h.book.orders[1001].status != "Cancelled"
