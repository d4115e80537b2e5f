"""A policy change that now denies or hides a tool ends the requests parked for it; it never loosens one.

Finding: requests already parked for a tool that a reload then denied or hid stayed open, were
approved and executed. Now every pending or approved-not-started request whose call the new policy
refuses ends as "withdrawn by a policy change" — on the replica that reloads, and on any replica
that starts with the new policy — while a reload that loosens leaves every request needing its decision.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types

from approvals.states import Status
from tests.audit_key import SHARED_AUDIT_KEY
from tests.harness import AGENT_TOKEN, Harness, held_call, running_gateway, wait_for
from tests.security.support import gateway_with_slack, held_policy, message_for
from tests.web.support import browser_client, sign_in

CANCEL = {"orderId": 1001, "confirm": True}
HEDGE = "Order 1001 hedges the desk's book; it is never cancelled."


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def rewrite(path: Path, document: dict[str, Any]) -> str:
    """Replace the policy file as an operator would; the new file's version (its SHA-256)."""
    path.write_text(json.dumps(document))
    stat = path.stat()  # visible even on file systems with coarse mtimes
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def never_cancel_1001() -> dict[str, Any]:
    stricter = held_policy()
    stricter["tools"]["ibkr_cancel_order"]["deny_if"] = [
        {"conditions": [{"path": "args.orderId", "op": "eq", "value": 1001}], "on_deny": HEDGE}
    ]
    return stricter


async def show(h: Harness, request_id: str) -> dict[str, Any]:
    response = await h.api().get(f"/api/approvals/{request_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_reload_that_denies_a_parked_call_withdraws_it_and_every_channel_says_so(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with (
        gateway_with_slack(tmp_path, sqlite_url) as (h, slack),
        held_call(h, "ibkr_cancel_order", CANCEL) as (hedge, hedge_box),
        held_call(h, "ibkr_cancel_order", {**CANCEL, "orderId": 1002}) as (other, other_box),
    ):
        message = await message_for(slack, hedge["id"])
        version = rewrite(h.policy_file, never_cancel_1001())

        # The held agent is answered at once: the policy now forbids the call it is waiting for.
        await wait_for(lambda: "result" in hedge_box, within=15)
        answer = hedge_box["result"]
        assert answer.is_error
        assert text(answer) == f"[POLICY DENIED] Withdrawn by a policy change: {HEDGE.rstrip('.')}. " + (
            "The call was not executed."
        )

        ended = await show(h, hedge["id"])
        assert (ended["status"], ended["ended_because"]) == ("cancelled", "policy_withdrawn")
        assert ended["summary"] == text(answer).removeprefix("[POLICY DENIED] ")
        [withdrawal] = [e for e in ended["events"] if e["kind"] == "request.cancelled"]
        assert withdrawal["detail"] == {"policy_version": version, "rule": 'tools["ibkr_cancel_order"].deny_if[0]'}
        assert withdrawal["message"] == ended["summary"]
        loaded = [e for e in (await h.api().get("/api/audit")).json()["events"] if e["kind"] == "policy.loaded"]
        assert loaded and loaded[0]["detail"]["policy_version"] == version

        # Slack and the web tell the same story, and offer no decision any more.
        await slack.message_shows(message, "Withdrawn by a policy change")
        assert message.buttons() == {}
        async with browser_client(h.base_url) as browser:
            await sign_in(browser, "alice")
            page = await browser.get(f"/approvals/{hedge['id']}")
            assert page.status_code == 200 and "Withdrawn by a policy change" in page.text
            assert f"/approvals/{hedge['id']}/approve" not in page.text

        # Only the call the new rule names was withdrawn: order 1002 still waits, and can still be decided.
        assert (await show(h, other["id"]))["status"] == "pending"
        assert "result" not in other_box
        rejected = await h.api().post(f"/api/approvals/{other['id']}/reject", json={"reason": "not today"})
        assert rejected.status_code == 200, rejected.text
    assert text(other_box["result"]).startswith("[APPROVAL REJECTED]")
    assert h.book.orders[1001].status != "Cancelled"


async def test_an_approved_call_not_yet_run_is_withdrawn_when_the_tool_is_hidden(
    tmp_path: Path, sqlite_url: str
) -> None:
    # The agent gives up waiting at once: its approved request waits for it to come back.
    config = {"agents": [{"name": "alpha", "token": AGENT_TOKEN, "max_hold": "1s"}]}
    async with running_gateway(tmp_path, sqlite_url, policy=held_policy(), config=config) as h, h.agent() as agent:
        parked = await agent.call_tool("ibkr_cancel_order", CANCEL)
        assert text(parked).startswith("[APPROVAL PENDING]")
        request_id = parked.structured_content["approval_id"]  # type: ignore[index]
        approved = await h.api().post(f"/api/approvals/{request_id}/approve")
        assert approved.json()["approval"]["status"] == "approved"

        hidden = copy.deepcopy(held_policy())
        hidden["hide"] = ["ibkr_cancel_order"]
        rewrite(h.policy_file, hidden)

        async def withdrawn() -> bool:
            return (await show(h, request_id))["status"] == "cancelled"

        await wait_for(withdrawn, within=15)
        ended = await show(h, request_id)
        assert ended["ended_because"] == "policy_withdrawn"
        assert ended["summary"].startswith("Withdrawn by a policy change after approval by alice: ")
        came_back = await agent.call_tool("countersign_approval_wait", {"approval_id": request_id})
        assert text(came_back).startswith("[POLICY DENIED] Withdrawn by a policy change")
    assert h.book.orders[1001].status != "Cancelled"


async def test_a_reload_that_loosens_leaves_every_parked_call_needing_its_decision(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=held_policy()) as h:
        async with held_call(h, "ibkr_cancel_order", CANCEL) as (request, box):
            looser = held_policy()
            looser["tools"]["ibkr_cancel_order"] = {}  # now allowed outright
            version = rewrite(h.policy_file, looser)

            async def reloaded() -> bool:
                events = (await h.api().get("/api/audit")).json()["events"]
                return any(e["kind"] == "policy.loaded" and e["detail"]["policy_version"] == version for e in events)

            await wait_for(reloaded, within=15)
            with anyio.move_on_after(1):
                await wait_for(lambda: "result" in box, within=5)
            assert "result" not in box  # the held call still waits for a human
            still = await show(h, request["id"])
            assert still["status"] == "pending" and h.book.orders[1001].status != "Cancelled"
            decided = await h.api().post(f"/api/approvals/{request['id']}/approve")
            assert decided.status_code == 200
        assert not box["result"].is_error
        assert (await show(h, request["id"]))["status"] == Status.EXECUTED.value


async def test_a_replica_starting_with_a_stricter_policy_withdraws_what_it_denies(
    tmp_path: Path, sqlite_url: str
) -> None:
    # Two gateways, one after the other, on one database: they share its audit key.
    config = {"agents": [{"name": "alpha", "token": AGENT_TOKEN, "max_hold": "1s"}], "audit": {"key": SHARED_AUDIT_KEY}}
    for replica in ("one", "two"):
        (tmp_path / replica).mkdir()
    async with running_gateway(tmp_path / "one", sqlite_url, policy=held_policy(), config=config) as h:
        async with h.agent() as agent:
            parked = await agent.call_tool("ibkr_cancel_order", CANCEL)
            kept = await agent.call_tool("ibkr_cancel_order", {**CANCEL, "orderId": 1002})
        first = parked.structured_content["approval_id"]  # type: ignore[index]
        second = kept.structured_content["approval_id"]  # type: ignore[index]

    async with running_gateway(tmp_path / "two", sqlite_url, policy=never_cancel_1001(), config=config) as h:

        async def withdrawn() -> bool:
            return (await show(h, first))["status"] == "cancelled"

        await wait_for(withdrawn, within=15)
        assert (await show(h, first))["ended_because"] == "policy_withdrawn"
        assert (await show(h, second))["status"] == "pending"
