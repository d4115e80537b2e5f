"""One agent token cannot exhaust what every agent shares: pending requests, MCP sessions, refusals, the database."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types

from gateway.arguments import MAX_TOOL_NAME_CHARS
from tests.harness import AGENT_TOKEN, OTHER_AGENT_TOKEN, running_gateway
from tests.web.support import browser_client, sign_in, web_config


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def tag(result: types.CallToolResult) -> str:
    return text(result).split("]", 1)[0] + "]"


def held_cancel_policy() -> dict[str, Any]:
    """Cancels held for the traders on the web; a held call answers [APPROVAL PENDING] at once, so a flood is quick."""
    approval = {"timeout": "15m", "approvers": ["group:traders"], "channels": ["web"], "max_hold": "0.05s"}
    held = {"require_approval": [{"conditions": [], "reason": "A human decides."}], "approval": approval}
    return {"version": "1", "default": "deny", "tools": {"ibkr_get_*": {}, "ibkr_cancel_order": held}}


async def test_a_thousand_held_calls_from_one_agent_are_capped_and_another_agents_call_still_parks_and_is_found(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url, policy=held_cancel_policy(), config=web_config()) as h:
        outcomes: Counter[str] = Counter()
        async with h.agent() as alpha:
            for n in range(1000):
                outcomes[tag(await alpha.call_tool("ibkr_cancel_order", {"orderId": 10_000 + n, "confirm": True}))] += 1
            capped = await alpha.call_tool("ibkr_cancel_order", {"orderId": 1, "confirm": True})
        assert outcomes == {"[APPROVAL PENDING]": 50, "[RATE LIMITED]": 950}, outcomes
        assert "agent_limits.max_refusals_per_agent" in text(capped)

        async with h.agent(OTHER_AGENT_TOKEN) as bravo:
            genuine = await bravo.call_tool("ibkr_cancel_order", {"orderId": 1001, "confirm": True})
        assert tag(genuine) == "[APPROVAL PENDING]", text(genuine)

        api = h.api()
        listing = (await api.get("/api/approvals", params={"status": "pending", "agent": "bravo"})).json()
        assert [r["arguments"] for r in listing["approvals"]] == [{"orderId": 1001, "confirm": True}]
        assert listing["pending_by_agent"] == {"alpha": 50, "bravo": 1}

        async with browser_client(h.base_url) as web:
            await sign_in(web, "alice")
            page = (await web.get("/inbox", params={"agent": "bravo"})).text
            assert listing["approvals"][0]["id"] in page
            assert "Reject all 1 from bravo" in page
            assert page.count('class="card ') == 1, "only bravo's request is shown under the filter"

        # Fifty parked, a few refusals recorded, one record of the block: not a row per flooded call.
        alpha_events = (await api.get("/api/audit", params={"limit": "5000"})).json()["events"]
        kinds = Counter(e["kind"] for e in alpha_events if e["agent"] == "alpha")
        assert kinds["request.created"] == 50
        assert sum(kinds.values()) < 200, kinds


async def test_one_agent_opening_sessions_without_end_never_stops_another_agent_from_initializing(
    tmp_path: Path, sqlite_url: str
) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "flood", "version": "0"},
        },
    }
    limits = {"agent_limits": {"max_sessions_per_agent": 5}}
    async with running_gateway(tmp_path, sqlite_url, config=limits) as h, httpx2.AsyncClient(timeout=30) as http:
        headers = {
            "Authorization": f"Bearer {AGENT_TOKEN}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        statuses: Counter[int] = Counter()
        refusal = ""
        for _ in range(50):
            response = await http.post(f"{h.base_url}/mcp", json=initialize, headers=headers)
            statuses[response.status_code] += 1
            if response.status_code == 429:
                refusal = response.json()["error"]["message"]
        assert statuses == {200: 5, 429: 45}, statuses
        assert "agent_limits.max_sessions_per_agent" in refusal and "5 open MCP sessions" in refusal

        # The other agent opens as many sessions as its own share, each one working.
        async with anyio.create_task_group() as tg:
            for n in range(5):

                async def use(n: int = n) -> None:
                    async with h.agent(OTHER_AGENT_TOKEN) as bravo:
                        assert not (await bravo.call_tool("ibkr_get_open_orders", {})).is_error, n

                tg.start_soon(use)


async def test_a_flood_of_denied_and_unknown_calls_is_cut_off_and_recorded_once(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h:
        outcomes: Counter[str] = Counter()
        async with h.agent() as alpha:
            for n in range(300):
                # Hidden by the demo policy, denied by default, or offered by nobody.
                tool = ("ibkr_global_cancel", "ibkr_transfer_funds", f"no_such_tool_{n}")[n % 3]
                outcomes[tag(await alpha.call_tool(tool, {"confirm": True}))] += 1
        refused = outcomes["[POLICY DENIED]"] + outcomes["[UNKNOWN TOOL]"]
        assert (refused, outcomes["[RATE LIMITED]"]) == (60, 240), outcomes

        async with h.agent(OTHER_AGENT_TOKEN) as bravo:
            assert not (await bravo.call_tool("ibkr_get_open_orders", {})).is_error, "another agent is not limited"

        events = (await h.api().get("/api/audit", params={"limit": "5000"})).json()["events"]
        alpha = [e for e in events if e["agent"] == "alpha"]
        assert len(alpha) == 61, Counter(e["kind"] for e in alpha)
        assert alpha[-1]["kind"] == "call.limited" and alpha[-1]["detail"]["limit"] == "refusals"


async def test_five_tool_names_of_three_megabytes_are_refused_and_store_almost_nothing(
    tmp_path: Path, sqlite_url: str
) -> None:
    db = tmp_path / "countersign.db"

    def stored() -> int:
        return sum(p.stat().st_size for p in tmp_path.glob("countersign.db*"))

    async with running_gateway(tmp_path, sqlite_url) as h, h.agent() as alpha:
        await alpha.call_tool("ibkr_get_open_orders", {})
        # Five refusals of names just over the limit, then five of three megabytes: each refusal is an audit
        # event (and its WAL pages, index entries), but the long names must cost no more than the short ones.
        before = stored()
        for n in range(5):
            result = await alpha.call_tool(f"{n}" + "x" * MAX_TOOL_NAME_CHARS, {})
            assert text(result).startswith("[INVALID ARGUMENTS] the tool name is 129 characters long; at most 128")
        short = stored() - before
        before = stored()
        for n in range(5):
            result = await alpha.call_tool(f"{n}" + "x" * 3_000_000, {})
            assert text(result).startswith("[INVALID ARGUMENTS] the tool name is 3000001 characters long; at most 128")
        long = stored() - before
        events = (await h.api().get("/api/audit")).json()["events"]
        invalid = [e for e in events if e["kind"] == "call.invalid"]
        assert len(invalid) == 10 and all(len(e["tool"]) <= MAX_TOOL_NAME_CHARS for e in invalid)
        # WAL checkpoints and the search index's catch-up move either figure by a few hundred KB with timing;
        # names that were stored would add 15 MB.
        assert long < short + 1_000_000, f"15 MB of names grew the database by {long} bytes, 5 short ones by {short}"
        assert db.exists()
