"""Policies that know who calls: rules on `agent.name` and `agent.groups`, approvers chosen by them, and
`list_only_callable`, driven through agents' MCP clients, the approver API and the audit log."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import mcp_types as types

from gateway.demo import DEMO_POLICY
from tests.gateway.test_jwt_agents import gateway_with_idp, rsa_key, token
from tests.gateway.test_policy_reload import rewrite
from tests.harness import (
    AGENT_TOKEN,
    ALICE_TOKEN,
    CAROL_TOKEN,
    OTHER_AGENT_TOKEN,
    agent_client,
    held_call,
    running_gateway,
    wait_for,
    write_policy,
)

CANCEL = {"orderId": 1001, "confirm": True}
# alpha is a trader; bravo is in no group.
AGENTS = {
    "agents": [
        {"name": "alpha", "token": AGENT_TOKEN, "groups": ["traders"]},
        {"name": "bravo", "token": OTHER_AGENT_TOKEN},
    ]
}


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def identity_policy() -> dict[str, Any]:
    policy = copy.deepcopy(DEMO_POLICY)
    policy["list_only_callable"] = True
    cancel = policy["tools"]["ibkr_cancel_order"]
    cancel["require_approval"] = [
        {
            "conditions": [{"path": "agent.groups", "op": "contains", "value": "traders"}],
            "reason": "A trader's cancel is checked by the desk head.",
            "approval": {"approvers": ["alice"]},
        },
        {
            "conditions": [],
            "reason": "Anyone else's cancel is checked by operations.",
            "approval": {"approvers": ["group:ops"]},
        },
    ]
    place = policy["tools"]["ibkr_place_order"]
    place["deny_if"] = [
        {"conditions": [{"path": "agent.name", "op": "eq", "value": "bravo"}], "on_deny": "bravo does not trade."},
        *place["deny_if"],
    ]
    return policy


async def test_the_callers_groups_choose_the_approvers_and_a_policy_change_judges_each_agent_by_its_own(
    tmp_path: Path, sqlite_url: str
) -> None:
    bravos_cancel = {**CANCEL, "orderId": 1002}
    async with running_gateway(tmp_path, sqlite_url, policy=identity_policy(), config=AGENTS) as h:
        async with (
            held_call(h, "ibkr_cancel_order", CANCEL) as (mine, mine_outcome),
            held_call(h, "ibkr_cancel_order", bravos_cancel, token=OTHER_AGENT_TOKEN) as (theirs, theirs_outcome),
        ):
            assert (mine["agent"], mine["approvers"], mine["reason"]) == (
                "alpha",
                ["alice"],
                "A trader's cancel is checked by the desk head.",
            )
            assert (theirs["agent"], theirs["approvers"]) == ("bravo", ["group:ops"])
            # carol is in ops, not the approver of the trader's cancel.
            refused = await h.api(CAROL_TOKEN).post(f"/api/approvals/{mine['id']}/reject", json={})
            assert refused.status_code == 403, refused.text

            # Traders may no longer cancel: alpha's open request ends, bravo's (no group) still waits.
            stricter = identity_policy()
            stricter["tools"]["ibkr_cancel_order"]["deny_if"] = [
                {
                    "conditions": [{"path": "agent.groups", "op": "contains", "value": "traders"}],
                    "on_deny": "Traders hand cancels to operations now.",
                }
            ]
            rewrite(h.policy_file, stricter)
            await wait_for(lambda: "result" in mine_outcome, within=20)
            assert text(mine_outcome["result"]).startswith("[POLICY DENIED]")
            assert "Traders hand cancels to operations now." in text(mine_outcome["result"])
            still = (await h.api().get(f"/api/approvals/{theirs['id']}")).json()
            assert still["status"] == "pending"

            rejected = await h.api(CAROL_TOKEN).post(f"/api/approvals/{theirs['id']}/reject", json={"reason": "no"})
            assert rejected.status_code == 200, rejected.text
        assert text(theirs_outcome["result"]).startswith("[APPROVAL REJECTED]")
        assert (await h.api().get(f"/api/approvals/{mine['id']}")).json()["ended_because"] == "policy_withdrawn"


async def test_a_rule_on_the_agents_name_and_list_only_callable_shape_what_each_agent_sees_and_may_do(
    tmp_path: Path, sqlite_url: str
) -> None:
    order = {
        "contract": {"symbol": "AAPL", "secType": "STK", "exchange": "SMART", "currency": "USD"},
        "order": {"action": "BUY", "totalQuantity": 1, "orderType": "MKT"},
        "dry_run": True,
    }
    policy = identity_policy()
    del policy["tools"]["ibkr_search_symbols"]
    async with (
        running_gateway(tmp_path, sqlite_url, policy=policy, config=AGENTS) as h,
        h.agent() as alpha,
        h.agent(OTHER_AGENT_TOKEN) as bravo,
    ):
        alphas = {tool.name for tool in (await alpha.list_tools()).tools}
        bravos = {tool.name for tool in (await bravo.list_tools()).tools}
        # A deny on the arguments may let a call through: the tool stays listed for alpha.
        assert {"ibkr_place_order", "ibkr_cancel_order", "ibkr_get_portfolio"} <= alphas
        assert "ibkr_place_order" not in bravos
        assert {"ibkr_cancel_order", "ibkr_get_portfolio"} <= bravos
        # Not under `tools` with default deny: refused to everyone, so listed to no one.
        assert "ibkr_search_symbols" not in alphas | bravos

        denied = await bravo.call_tool("ibkr_place_order", order)
        assert denied.is_error and text(denied) == "[POLICY DENIED] bravo does not trade."
        previewed = await alpha.call_tool("ibkr_place_order", order)
        assert not previewed.is_error, text(previewed)

        # The option off, every tool that is not hidden is listed again.
        rewrite(h.policy_file, {**policy, "list_only_callable": False})
        await wait_for(lambda: not h.gateway.policies.current.list_only_callable, within=10)
        assert {"ibkr_place_order", "ibkr_search_symbols"} <= {t.name for t in (await bravo.list_tools()).tools}
        events = (await h.api(ALICE_TOKEN).get("/api/audit")).json()["events"]
        assert any(
            e["kind"] == "call.denied" and (e["agent"], e["tool"]) == ("bravo", "ibkr_place_order") for e in events
        )


async def test_a_jwt_agents_groups_come_from_its_token(tmp_path: Path) -> None:
    signing = rsa_key()
    async with gateway_with_idp(tmp_path) as s:
        s.provider.publish("k1", signing)
        write_policy(
            tmp_path / "policy.json",
            {
                "version": "1",
                "default": "allow",
                "all_tools": {
                    "deny_if": [
                        {
                            "conditions": [{"path": "agent.groups", "op": "contains", "value": "interns"}],
                            "on_deny": "Interns call no tools.",
                        }
                    ]
                },
            },
        )
        assert await s.gateway.policies.reload("test")
        intern = token(signing, "k1", groups=["interns"])
        trader = token(signing, "k1", sub="desk", groups="traders ops")
        async with agent_client(s.url, intern) as agent:
            refused = await agent.call_tool("ibkr_get_portfolio", {})
        assert text(refused) == "[POLICY DENIED] Interns call no tools."
        async with agent_client(s.url, trader) as agent:
            unknown = await agent.call_tool("ibkr_get_portfolio", {})
        # Past the policy: this gateway has no upstream that offers the tool.
        assert text(unknown).startswith("[UNKNOWN TOOL]"), text(unknown)
        assert s.gateway.agents.identity("idp:desk").groups == ("traders", "ops")


async def test_a_policy_naming_unknown_approvers_says_so_at_start_and_on_reload(
    tmp_path: Path, sqlite_url: str
) -> None:
    policy = copy.deepcopy(DEMO_POLICY)
    policy["tools"]["ibkr_cancel_order"]["approval"]["approvers"] = ["group:nobody"]
    async with running_gateway(tmp_path, sqlite_url, policy=policy) as h:

        async def warnings() -> list[dict[str, Any]]:
            events = (await h.api().get("/api/audit")).json()["events"]
            return [e for e in events if e["kind"] == "policy.unknown_approvers"]

        await wait_for(warnings)
        [at_start] = await warnings()
        assert "no configured approver is in group 'nobody'" in at_start["message"]
        assert at_start["outcome"] == "warning"

        policy["tools"]["ibkr_cancel_order"]["approval"]["approvers"] = ["alice", "dave"]
        rewrite(h.policy_file, policy)

        async def reported_again() -> bool:
            return len(await warnings()) == 2

        await wait_for(reported_again, within=10)
        on_reload = next(e for e in await warnings() if e["seq"] != at_start["seq"])
        assert "no approver named 'dave' is configured" in on_reload["message"]
        assert "alice" not in on_reload["message"].replace("approval.approvers", "")
        assert json.dumps(on_reload["detail"]["unknown"]).count("dave") == 1
