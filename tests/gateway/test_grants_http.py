"""Standing approvals over the wire: asked for through the approver API and the CLI, listed and revoked there,
and shared by gateways on one database (a revoke through one stops use through the other at the next call).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from gateway.demo import DEMO_POLICY
from tests.gateway.test_cli import run_beside_server
from tests.gateway.test_two_gateways import second
from tests.harness import ALICE_TOKEN, Harness, held_call, running_gateway

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
SUMMARY = "ibkr_get_account_summary"
ACCOUNT = {"account": "DU1000001"}


def granting_policy() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(DEMO_POLICY))
    document["tools"][SUMMARY] = {
        "require_approval": [{"conditions": [], "reason": "Account figures are shown to a human first."}],
        "approval": {
            "timeout": "15m",
            "approvers": ["group:traders"],
            "channels": ["web"],
            "grants": {"max_duration": "15m", "max_uses": 5},
        },
    }
    return document


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


async def granted_events(h: Harness) -> list[Any]:
    return [e for e in await h.service.history.events(limit=1000) if e.kind == "call.granted"]


# Repeats of an ended call are answered with its outcome for `repeat_window`; off here, so a call after a
# revoke is plainly held again rather than answered as a repeat.
NO_REPEATS = {"repeat_window": 0}


async def test_a_revoke_through_one_gateway_stops_use_through_the_other(tmp_path: Path, database_url: str) -> None:
    async with (
        running_gateway(tmp_path, database_url, policy=granting_policy(), server=NO_REPEATS) as a,
        second(a) as b,
    ):
        # Held on A, approved through B's API with a grant longer than the policy allows: cut to 15 minutes.
        async with held_call(a, SUMMARY, ACCOUNT) as (request, box):
            assert request["grant_offer"]["max_minutes"] == 15
            response = await b.api().post(f"/api/approvals/{request['id']}/approve", json={"grant": {"minutes": 60}})
            assert response.status_code == 200, response.text
            decided = response.json()
        assert not box["result"].is_error, text(box["result"])
        grant = decided["grant"]
        assert (grant["state"], grant["max_uses"], grant["approver"]) == ("live", 5, "alice")
        assert "the policy allows up to 15m and 5 calls" in decided["message"]

        listed = (await a.api().get("/api/grants")).json()["grants"]
        assert [g["id"] for g in listed] == [grant["id"]]

        async with a.agent() as agent:
            for _ in range(2):
                with anyio.fail_after(15):
                    result = await agent.call_tool(SUMMARY, ACCOUNT)
                assert not result.is_error and not text(result).startswith("[APPROVAL"), text(result)
        assert [e.detail["grant_id"] for e in await granted_events(a)] == [grant["id"]] * 2
        assert (await b.api().get(f"/api/grants/{grant['id']}")).json()["uses"] == 2

        revoked = (await b.api().delete(f"/api/grants/{grant['id']}")).json()
        assert revoked["revoked"] is True and revoked["grant"]["state"] == "revoked"

        # The next identical call through A is held for a person again.
        async with held_call(a, SUMMARY, ACCOUNT) as (again, box):
            assert again["id"] != request["id"]
            await a.api().post(f"/api/approvals/{again['id']}/reject", json={"reason": "revoked"})
        assert text(box["result"]).startswith("[APPROVAL REJECTED]")
        assert len(await granted_events(a)) == 2
        again_listed = (await a.api().get("/api/grants", params={"state": "all"})).json()["grants"]
        assert [(g["id"], g["state"], g["uses"]) for g in again_listed] == [(grant["id"], "revoked", 2)]


async def test_the_api_refuses_bad_grant_asks_with_a_clear_error(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=granting_policy()) as h:
        api = h.api()
        async with held_call(h, SUMMARY, ACCOUNT) as (request, _):
            url = f"/api/approvals/{request['id']}/approve"
            for body, detail in (
                ({"grant": {"minutes": -5}}, "grant.minutes must be a number of minutes above zero"),
                ({"grant": {"hours": 1}}, "unknown key 'hours' in grant"),
                ({"grant": {"uses": 0}}, "grant.uses must be a whole number of calls, at least 1"),
                ({"grant": "15m"}, "grant must be an object"),
            ):
                response = await api.post(url, json=body)
                assert (response.status_code, detail in response.json()["detail"]) == (400, True), response.text
            rejected = await api.post(f"/api/approvals/{request['id']}/reject", json={"grant": {}})
            assert rejected.status_code == 400 and 'takes only "reason"' in rejected.json()["detail"]
            await api.post(f"/api/approvals/{request['id']}/reject", json={"reason": "enough"})
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (cancel, _):
            response = await api.post(f"/api/approvals/{cancel['id']}/approve", json={"grant": {"minutes": 5}})
            assert response.status_code == 400
            assert "allows no standing approvals" in response.json()["detail"]
            assert cancel["grant_offer"] is None
            await api.post(f"/api/approvals/{cancel['id']}/reject", json={"reason": "enough"})
        assert (await api.get("/api/grants", params={"state": "soon"})).status_code == 400
        missing = await api.delete("/api/grants/grt_nothing")
        assert missing.status_code == 404 and "no standing approval" in missing.json()["detail"]


async def test_the_cli_approves_with_a_grant_lists_and_revokes_it(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=granting_policy()) as h:
        connect = ["--url", h.base_url, "--token", ALICE_TOKEN]
        async with held_call(h, SUMMARY, ACCOUNT) as (request, box):
            code, out, err = await run_beside_server(["approvals", "show", request["id"], *connect])
            assert code == 0, err
            assert "may grant  up to 15m and 5 calls, for the same arguments (approve --grant-minutes N)" in out
            code, out, err = await run_beside_server(
                ["approvals", "approve", request["id"], "--grant-minutes", "10", "--grant-uses", "2", *connect]
            )
            assert code == 0, err
            assert "the same call is allowed until" in out and "2 times" in out
        assert not box["result"].is_error

        code, out, err = await run_beside_server(["grants", "list", *connect])
        assert code == 0, err
        header, row = out.strip().splitlines()
        assert header.split()[:5] == ["ID", "STATE", "TOOL", "AGENT", "USED"]
        grant_id = row.split()[0]
        assert row.split()[1:5] == ["live", SUMMARY, "alpha", "0/2"]

        code, out, err = await run_beside_server(["grants", "show", grant_id, *connect])
        assert code == 0, err
        assert out.startswith(f"{grant_id}  LIVE") and "matches    ibkr_get_account_summary by alpha" in out

        code, out, err = await run_beside_server(["grants", "revoke", grant_id, *connect])
        assert (code, out.strip()) == (0, f"revoked {grant_id}"), err
        code, out, _ = await run_beside_server(["grants", "revoke", grant_id, *connect])
        assert (code, out.strip()) == (0, f"{grant_id} was already revoked by alice")
        code, out, _ = await run_beside_server(["grants", "list", *connect])
        assert (code, out.strip()) == (0, "no standing approvals")
        code, _, err = await run_beside_server(["grants", "show", "grt_nothing", *connect])
        assert code == 1 and "404" in err
