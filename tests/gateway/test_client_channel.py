"""`channels: ["client"]`: the human at the agent's own client approves its held call, in both protocol eras."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.client.session import ClientRequestContext

from gateway.policy import PolicyError, parse_policy
from tests.gateway.relay_harness import audit_rows, relay_gateway, text
from tests.gateway.relay_harness import relay_agent as agent

ERAS = {"2025-era-agent": "legacy", "2026-era-agent": "2026-07-28"}


def policy(channels: list[str], **approval: Any) -> dict[str, Any]:
    rule = {"conditions": [], "reason": "the agent's user says"}
    block = {"channels": channels, "max_hold": "none", **approval}
    return {"version": "1", "default": "allow", "tools": {"echo": {"require_approval": [rule], "approval": block}}}


@pytest.mark.parametrize("mode", ERAS.values(), ids=ERAS.keys())
async def test_the_agents_user_approves_at_its_client_and_the_decision_is_recorded_as_any_other(
    tmp_path: Path, mode: str
) -> None:
    asked: list[types.ElicitRequestParams] = []

    async def user(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action="accept", content={"approve": True, "reason": "I asked for it"})

    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", policy(["client"])) as (base, gateway),
        agent(base, mode, elicitation_callback=user) as client,
    ):
        result = await client.call_tool("echo", {"text": "hello"})
        assert text(result) == "echo: hello"
        [question] = asked
        assert "echo" in question.message and '{"text":"hello"}' in question.message
        assert isinstance(question, types.ElicitRequestFormParams)
        assert question.requested_schema["required"] == ["approve"]

        [view] = await gateway.service.list_requests(limit=10)
        assert (view.status, view.decided_by, view.decided_via) == ("executed", "alpha", "client")
        [row] = await audit_rows(gateway, "request.approved")
        assert (row.actor, row.channel, row.request_id) == ("alpha", "client", view.id)


@pytest.mark.parametrize("mode", ERAS.values(), ids=ERAS.keys())
async def test_a_no_at_the_client_rejects_the_call_and_nothing_runs(tmp_path: Path, mode: str) -> None:
    async def user(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"approve": False})

    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", policy(["client"])) as (base, gateway),
        agent(base, mode, elicitation_callback=user) as client,
    ):
        result = await client.call_tool("echo", {"text": "hello"})
        assert result.is_error and "[APPROVAL REJECTED]" in text(result)
        [view] = await gateway.service.list_requests(limit=10)
        assert (view.status, view.decided_by, view.decided_via) == ("rejected", "alpha", "client")
        assert await audit_rows(gateway, "call.forwarded", "call.executed") == []


@pytest.mark.parametrize("mode", ERAS.values(), ids=ERAS.keys())
async def test_a_client_that_cannot_be_asked_is_refused_when_nobody_else_may_decide(tmp_path: Path, mode: str) -> None:
    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", policy(["client"])) as (base, gateway),
        agent(base, mode) as client,
    ):
        result = await client.call_tool("echo", {"text": "hello"})
        assert result.is_error and "cannot be asked" in text(result) and "not executed" in text(result)
        assert await gateway.service.list_requests(limit=10) == []
        [row] = await audit_rows(gateway, "call.denied")
        assert row.detail["channel"] == "client"


async def test_a_client_that_cannot_be_asked_leaves_the_request_to_the_other_channels(tmp_path: Path) -> None:
    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", policy(["client", "web"], max_hold="1s")) as (
            base,
            gateway,
        ),
        agent(base, "legacy") as client,
    ):
        result = await client.call_tool("echo", {"text": "hello"})
        assert "[APPROVAL PENDING]" in text(result)
        [view] = await gateway.service.list_requests(limit=10)
        assert view.status == "pending" and view.channels == ("client", "web")


def test_a_policy_that_names_approvers_for_the_client_channel_is_refused_at_load() -> None:
    document = policy(["client", "web"], approvers=["alice"])
    with pytest.raises(PolicyError, match=r"tools\[\"echo\"\]\.approval\.channels.*'client'.*approvers \(alice\)"):
        parse_policy(document)


def test_a_rule_that_names_approvers_where_the_tool_asks_the_client_is_refused_at_load() -> None:
    document = policy(["client"])
    rule = {
        "conditions": [{"path": "agent.name", "op": "eq", "value": "bot"}],
        "reason": "x",
        "approval": {"approvers": ["alice"]},
    }
    document["tools"]["echo"]["require_approval"] = [rule]
    with pytest.raises(PolicyError, match=r"require_approval\[0\]\.approval: .*\('client'\).*approvers \(alice\)"):
        parse_policy(document)
