"""A hostile agent's arguments never get around a rule: real MCP clients (and raw JSON-RPC) against the gateway.

Each test is one finding of the adversarial review. The paper broker records every call it receives
(`book.calls`), so "never forwarded" is checked where it matters: at the upstream.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest

from gateway.arguments import MAX_ARGUMENTS_BYTES, MAX_DEPTH, MAX_TOOL_NAME_CHARS
from gateway.demo import DEMO_POLICY
from tests.harness import AGENT_TOKEN, Harness, held_call, running_gateway

AAPL = {"symbol": "AAPL", "secType": "STK", "exchange": "SMART", "currency": "USD"}
MARKET_BUY = {"action": "BUY", "totalQuantity": 10, "orderType": "MKT"}

# The policy the demo and docs/policy.md shipped before: holds `dry_run eq false`, denies `gt 1000`.
# It must be safe now too, because documents written from it are out there.
OLD_DEMO_POLICY: dict[str, Any] = {
    **DEMO_POLICY,
    "tools": {
        **DEMO_POLICY["tools"],
        "ibkr_place_order": {
            "deny_if": [
                {
                    "conditions": [{"path": "args.order.totalQuantity", "op": "gt", "value": 1000}],
                    "on_deny": "Orders above 1000 shares are not allowed.",
                }
            ],
            "require_approval": [
                {"conditions": [{"path": "args.dry_run", "op": "eq", "value": False}], "reason": "Live orders."}
            ],
        },
    },
}
POLICIES = [pytest.param(DEMO_POLICY, id="demo-policy"), pytest.param(OLD_DEMO_POLICY, id="old-demo-policy")]


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def placed_orders(h: Harness) -> list[dict[str, Any]]:
    return [arguments for name, arguments in h.book.calls if name == "ibkr_place_order"]


async def nothing_pending(h: Harness) -> bool:
    response = await h.api().get("/api/approvals", params={"status": "pending"})
    assert response.status_code == 200, response.text
    return response.json()["approvals"] == []


@pytest.mark.parametrize("quantity", [10, "5000"])
@pytest.mark.parametrize("policy", POLICIES)
async def test_a_live_order_with_dry_run_as_the_string_false_is_refused_and_never_reaches_the_broker(
    tmp_path: Path, sqlite_url: str, policy: dict[str, Any], quantity: Any
) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=policy) as h, h.agent() as agent:
        order = {**MARKET_BUY, "totalQuantity": quantity}
        arguments = {"contract": AAPL, "order": order, "dry_run": "false", "confirm": True}
        result = await agent.call_tool("ibkr_place_order", arguments)

        assert result.is_error
        assert text(result).startswith('[INVALID ARGUMENTS] $.dry_run: expected boolean, got string "false"')
        assert placed_orders(h) == []
        assert await nothing_pending(h)


@pytest.mark.parametrize("policy", POLICIES)
async def test_a_quantity_sent_as_the_string_5000_is_denied_and_never_reaches_the_broker(
    tmp_path: Path, sqlite_url: str, policy: dict[str, Any]
) -> None:
    # A dry run, which every policy here lets through unheld: the deny rule alone must stop it.
    async with running_gateway(tmp_path, sqlite_url, policy=policy) as h, h.agent() as agent:
        order = {**MARKET_BUY, "totalQuantity": "5000"}
        result = await agent.call_tool(
            "ibkr_place_order", {"contract": AAPL, "order": order, "dry_run": True, "confirm": True}
        )

        assert result.is_error
        assert text(result).startswith("[POLICY DENIED] Orders above 1000 shares are not allowed.")
        assert "args.order.totalQuantity is a string" in text(result)
        assert placed_orders(h) == []


@pytest.mark.parametrize("dry_run", [0, "0", "no", "off", None, [False]])
async def test_dry_run_spelt_any_other_way_than_a_boolean_is_refused_at_intake(
    tmp_path: Path, sqlite_url: str, dry_run: Any
) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, h.agent() as agent:
        arguments = {"contract": AAPL, "order": MARKET_BUY, "dry_run": dry_run, "confirm": True}
        result = await agent.call_tool("ibkr_place_order", arguments)

        assert result.is_error
        assert text(result).startswith("[INVALID ARGUMENTS] $.dry_run: expected boolean, got ")
        assert placed_orders(h) == []
        assert await nothing_pending(h)


async def test_a_2026_era_client_gets_the_same_refusal_for_a_string_dry_run(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, h.agent(mode="auto") as agent:
        arguments = {"contract": AAPL, "order": MARKET_BUY, "dry_run": "off", "confirm": True}
        result = await agent.call_tool("ibkr_place_order", arguments)

        assert result.is_error
        assert text(result).startswith('[INVALID ARGUMENTS] $.dry_run: expected boolean, got string "off"')
        assert placed_orders(h) == []


async def test_a_neq_true_rule_holds_a_call_that_leaves_the_field_out(tmp_path: Path, sqlite_url: str) -> None:
    # "Orders not marked whatIf (IBKR's preview flag) need a human"; the agent simply leaves whatIf out.
    policy = {
        "version": "1",
        "default": "deny",
        "tools": {
            "ibkr_place_order": {
                "require_approval": [
                    {
                        "conditions": [{"path": "args.order.whatIf", "op": "neq", "value": True}],
                        "reason": "Orders that are not previews need a human.",
                    }
                ]
            }
        },
    }
    async with running_gateway(tmp_path, sqlite_url, policy=policy) as h:
        arguments = {"contract": AAPL, "order": MARKET_BUY, "dry_run": False, "confirm": True}
        async with held_call(h, "ibkr_place_order", arguments) as (request, box):
            assert request["reason"] == "Orders that are not previews need a human."
            assert placed_orders(h) == []
            rejected = await h.api().post(f"/api/approvals/{request['id']}/reject", json={"reason": "no"})
            assert rejected.status_code == 200, rejected.text

        assert text(box["result"]).startswith("[APPROVAL REJECTED]")
        assert placed_orders(h) == []


class RawSession:
    """A 2025-era streamable HTTP session spoken by hand: the SDK client refuses to send NaN or Infinity."""

    def __init__(self, http: httpx2.AsyncClient, base_url: str) -> None:
        self.http = http
        self.url = f"{base_url}/mcp"
        self.headers = {
            "Authorization": f"Bearer {AGENT_TOKEN}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }

    async def open(self) -> None:
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "hostile-test-client", "version": "0"},
            },
        }
        response = await self.http.post(self.url, headers=self.headers, json=initialize)
        assert response.status_code == 200, response.text
        self.headers["Mcp-Session-Id"] = response.headers["mcp-session-id"]
        self.headers["Mcp-Protocol-Version"] = "2025-11-25"
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await self.http.post(self.url, headers=self.headers, json=initialized)).status_code == 202

    async def call(self, body: str) -> dict[str, Any]:
        """POST a raw tools/call body; the JSON-RPC response that answers it (bounded: a held call fails here)."""
        with anyio.fail_after(15):
            async with self.http.stream("POST", self.url, headers=self.headers, content=body.encode()) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data:") and line[len("data:") :].strip():  # not a priming event
                        message: dict[str, Any] = json.loads(line[len("data:") :])
                        if message.get("id") == 2:
                            return message
        raise AssertionError("the stream ended without an answer")


@pytest.mark.parametrize("number", ["NaN", "1e400", "-Infinity"])
async def test_non_finite_numbers_in_raw_json_are_refused_and_the_approver_api_keeps_answering(
    tmp_path: Path, sqlite_url: str, number: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, httpx2.AsyncClient(timeout=30) as http:
        session = RawSession(http, h.base_url)
        await session.open()
        # A live limit order: the demo policy would hold it, so a non-finite price would be parked for approvers.
        body = (
            '{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "ibkr_place_order", '
            f'"arguments": {{"contract": {json.dumps(AAPL)}, "order": {{"action": "BUY", "totalQuantity": 10, '
            f'"orderType": "LMT", "lmtPrice": {number}}}, "dry_run": false, "confirm": true}}}}}}'
        )

        answer = await session.call(body)

        result = answer["result"]
        assert result["isError"] is True
        assert result["content"][0]["text"].startswith("[INVALID ARGUMENTS] $.order.lmtPrice: ")
        assert "not a finite number" in result["content"][0]["text"]
        assert placed_orders(h) == []
        listing = await h.api().get("/api/approvals")
        assert listing.status_code == 200, listing.text
        assert listing.json()["approvals"] == []
        audit = await h.api().get("/api/audit")
        assert audit.status_code == 200, audit.text
        assert audit.json()["events"][-1]["kind"] == "call.invalid"


async def test_arguments_over_the_size_limit_are_refused_before_the_upstream_sees_them(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, h.agent() as agent:
        result = await agent.call_tool("ibkr_get_open_orders", {"note": "x" * MAX_ARGUMENTS_BYTES})

        assert result.is_error
        assert text(result).startswith(f"[INVALID ARGUMENTS] $: the arguments are {MAX_ARGUMENTS_BYTES + 11} bytes")
        assert [name for name, _ in h.book.calls if name == "ibkr_get_open_orders"] == []
        audit = (await h.api().get("/api/audit")).json()["events"]
        assert audit[-1]["kind"] == "call.invalid"
        assert audit[-1]["arguments"] is None, "arguments over the limit are not stored"


async def test_arguments_nested_deeper_than_the_limit_are_refused(tmp_path: Path, sqlite_url: str) -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(MAX_DEPTH + 5):
        deep = {"n": deep}
    async with running_gateway(tmp_path, sqlite_url) as h, h.agent() as agent:
        result = await agent.call_tool("ibkr_get_open_orders", {"note": deep})

        assert result.is_error
        assert text(result).startswith("[INVALID ARGUMENTS] $.note")
        assert f"nested more than {MAX_DEPTH} levels deep" in text(result)
        assert h.book.calls == []


async def test_a_huge_tool_name_is_refused_and_only_its_first_characters_are_recorded(
    tmp_path: Path, sqlite_url: str
) -> None:
    name = "ibkr_" + "x" * 100_000
    async with running_gateway(tmp_path, sqlite_url) as h, h.agent() as agent:
        result = await agent.call_tool(name, {})

        assert result.is_error
        assert text(result).startswith("[INVALID ARGUMENTS] the tool name is 100005 characters long")
        assert len(text(result)) < 200
        event = (await h.api().get("/api/audit")).json()["events"][-1]
        assert event["kind"] == "call.invalid"
        assert len(event["tool"]) <= MAX_TOOL_NAME_CHARS
