"""Standing approvals through the call path, in memory: an approval with a grant lets the same call through.

Each granted call is audited with its grant; other arguments are held; a revoke, the use count, the
expiry and a policy that stops offering grants each stop the next call; deny rules and rate limits
still apply.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from approvals.approvers import Approver
from approvals.errors import InvalidDecision
from approvals.grant_terms import GrantAsk
from approvals.states import Status
from gateway.app import Gateway
from gateway.config import parse_settings
from tests.gateway.fakes import FakeUpstreams, MovableClock, broker, text_result
from tests.gateway.test_calls import Core, call_in_background, text
from tests.harness import wait_for

ALICE = Approver("alice", groups=("traders",))
GRANTS = {"max_duration": "15m", "max_uses": 3}


def policy(grants: dict[str, Any] | None = GRANTS, *, limited: bool = True, **approval: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"timeout": "15m", "approvers": ["group:traders"], "channels": ["web"], **approval}
    if grants is not None:
        settings["grants"] = grants
    return {
        "version": "1",
        "default": "deny",
        "tools": {
            "get_orders": {},
            "cancel_order": {
                "deny_if": [{"conditions": [{"path": "args.orderId", "op": "gt", "value": 5000}]}],
                "limits": [{"counter": "cancels", "window": "hour", "max": 4, "scope": "grant"}] if limited else [],
                "require_approval": [{"conditions": [], "reason": "Cancelling needs a human."}],
                "approval": settings,
            },
        },
    }


@asynccontextmanager
async def core(tmp_path: Path, document: dict[str, Any] | None = None) -> AsyncIterator[Core]:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(document or policy()))
    settings = parse_settings(
        {
            "server": {"database_url": f"sqlite:///{tmp_path / 'cs.db'}", "poll_interval": 0.05},
            "policy": {"file": str(policy_file), "watch": False},
            "agents": [{"name": "alpha", "token": "token-alpha"}],
            "approvers": [{"name": "alice", "groups": ["traders"], "api_token": "alice-token"}],
        },
        source="<test>",
        base_dir=str(tmp_path),
        environ={},
    )
    clock = MovableClock()
    fake = FakeUpstreams(broker())
    gateway = Gateway(settings, stdio_agent="alpha", clock=clock, upstreams=fake)
    async with gateway.running(serve_http=False):
        with anyio.fail_after(30):
            yield Core(gateway, clock, fake)


async def approve_first(c: Core, agent: Any, arguments: dict[str, Any], ask: GrantAsk | None) -> Any:
    """Make the call, approve it (with `ask` as the grant) and return the outcome and the agent's result."""
    async with anyio.create_task_group() as tg:
        box: dict[str, Any] = {}
        await call_in_background(agent, tg, "cancel_order", arguments, box)
        request = await c.pending()
        outcome = await c.service.approve(request.id, ALICE, "api", grant=ask)
    assert text(box["result"]) == f"cancelled {arguments['orderId']} on paper"
    return outcome


async def held_then_rejected(c: Core, agent: Any, arguments: dict[str, Any]) -> None:
    """The call is held for a person (not run under a grant); the test rejects it."""
    # Past the repeat window, so an identical call is not answered with the earlier request's outcome.
    c.clock.advance(601)
    async with anyio.create_task_group() as tg:
        box: dict[str, Any] = {}
        await call_in_background(agent, tg, "cancel_order", arguments, box)
        held = await c.pending()
        assert held.arguments == arguments
        await c.service.reject(held.id, ALICE, "api", "held")
    assert text(box["result"]).startswith("[APPROVAL REJECTED]")


def calls_made(c: Core) -> list[tuple[str, dict[str, Any]]]:
    return [call for call in c.upstreams.upstreams[0].calls if call[0] == "cancel_order"]


async def test_a_fifteen_minute_grant_lets_identical_calls_through_each_audited_with_the_grant(tmp_path: Path) -> None:
    async with core(tmp_path) as c, c.agent() as agent:
        outcome = await approve_first(c, agent, {"orderId": 1001}, GrantAsk(seconds=900))
        grant = outcome.grant
        assert grant is not None and grant.max_uses == 3 and grant.approver == "alice"
        assert (grant.expires_at - grant.created_at).total_seconds() == 900
        c.clock.advance(60)
        for _ in range(2):
            result = await agent.call_tool("cancel_order", {"orderId": 1001})
            assert text(result) == "cancelled 1001 on paper" and not result.is_error
        assert len(calls_made(c)) == 3
        assert len(await c.service.list_requests()) == 1
        granted = [e for e in await c.service.history.events() if e.kind == "call.granted"]
        assert [e.detail["uses"] for e in granted] == [1, 2]
        assert {(e.actor, e.detail["grant_id"], e.request_id) for e in granted} == {
            ("alice", grant.id, outcome.request.id)
        }
        created = [e for e in await c.service.history.events() if e.kind == "grant.created"]
        assert len(created) == 1 and created[0].detail["grant_id"] == grant.id


async def test_a_call_with_different_arguments_is_held(tmp_path: Path) -> None:
    async with core(tmp_path) as c, c.agent() as agent:
        await approve_first(c, agent, {"orderId": 1001}, GrantAsk())
        async with anyio.create_task_group() as tg:
            box: dict[str, Any] = {}
            await call_in_background(agent, tg, "cancel_order", {"orderId": 1002}, box)
            held = await c.pending()
            assert held.arguments == {"orderId": 1002}
            await c.service.reject(held.id, ALICE, "api", "not that one")
        assert text(box["result"]).startswith("[APPROVAL REJECTED]")
    assert calls_made(c) == [("cancel_order", {"orderId": 1001})]


async def test_a_key_makes_calls_that_differ_elsewhere_the_same(tmp_path: Path) -> None:
    grants = {"max_duration": "15m", "max_uses": 5, "key": ["account"]}
    async with core(tmp_path, policy(grants)) as c, c.agent() as agent:
        await approve_first(c, agent, {"orderId": 1001, "account": "DU1"}, GrantAsk())
        result = await agent.call_tool("cancel_order", {"orderId": 1002, "account": "DU1"})
        assert text(result) == "cancelled 1002 on paper"
        async with anyio.create_task_group() as tg:
            box: dict[str, Any] = {}
            await call_in_background(agent, tg, "cancel_order", {"orderId": 1003, "account": "DU2"}, box)
            held = await c.pending()
            await c.service.reject(held.id, ALICE, "api", "other account")
    assert len(calls_made(c)) == 2


async def test_revoking_a_grant_stops_the_next_call(tmp_path: Path) -> None:
    async with core(tmp_path) as c, c.agent() as agent:
        outcome = await approve_first(c, agent, {"orderId": 1001}, GrantAsk())
        assert text(await agent.call_tool("cancel_order", {"orderId": 1001})) == "cancelled 1001 on paper"
        revoked, changed = await c.service.grants.revoke(outcome.grant.id, ALICE, "api")
        assert changed and revoked.state(c.clock()) == "revoked"
        assert (await c.service.grants.revoke(outcome.grant.id, ALICE, "api"))[1] is False
        # At once: the identical call is answered as a repeat of the request, and does not run.
        again = await agent.call_tool("cancel_order", {"orderId": 1001})
        assert text(again) == "cancelled 1001 on paper" and len(calls_made(c)) == 2
        assert (await c.service.history.events())[-1].kind == "call.repeated"
        await held_then_rejected(c, agent, {"orderId": 1001})
    assert len(calls_made(c)) == 2
    [event] = [e for e in await c.service.history.events() if e.kind == "grant.revoked"]
    assert event.actor == "alice" and event.detail["uses"] == 1


async def test_the_use_count_is_honoured(tmp_path: Path) -> None:
    async with core(tmp_path) as c, c.agent() as agent:
        outcome = await approve_first(c, agent, {"orderId": 1001}, GrantAsk(uses=2))
        for _ in range(2):
            assert text(await agent.call_tool("cancel_order", {"orderId": 1001})) == "cancelled 1001 on paper"
        assert (await c.service.grants.get(outcome.grant.id)).state(c.clock()) == "used up"
        await held_then_rejected(c, agent, {"orderId": 1001})
    assert len(calls_made(c)) == 3


async def test_a_grant_never_exceeds_the_policys_maximum_and_says_so(tmp_path: Path) -> None:
    async with core(tmp_path) as c, c.agent() as agent:
        outcome = await approve_first(c, agent, {"orderId": 1001}, GrantAsk(seconds=4 * 3600, uses=100))
        grant = outcome.grant
        assert (grant.expires_at - grant.created_at).total_seconds() == 900 and grant.max_uses == 3
        assert "the policy allows up to 15m and 3 calls" in outcome.message
        c.clock.advance(900)
        assert (await c.service.grants.get(grant.id)).state(c.clock()) == "expired"
        async with anyio.create_task_group() as tg:
            box: dict[str, Any] = {}
            await call_in_background(agent, tg, "cancel_order", {"orderId": 1001}, box)
            held = await c.pending()
            await c.service.reject(held.id, ALICE, "api", "expired")
    assert len(calls_made(c)) == 1


async def test_a_granted_call_still_meets_deny_rules_and_rate_limits(tmp_path: Path) -> None:
    grants = {"max_duration": "15m", "max_uses": 10, "key": ["account"]}
    async with core(tmp_path, policy(grants)) as c, c.agent() as agent:
        await approve_first(c, agent, {"orderId": 1, "account": "DU1"}, GrantAsk())
        denied = await agent.call_tool("cancel_order", {"orderId": 9999, "account": "DU1"})
        assert text(denied).startswith("[POLICY DENIED]")
        for order in (2, 3, 4):
            assert text(await agent.call_tool("cancel_order", {"orderId": order, "account": "DU1"})).startswith(
                "cancelled"
            )
        limited = await agent.call_tool("cancel_order", {"orderId": 5, "account": "DU1"})
        assert text(limited).startswith("[RATE LIMITED]")
    assert len(calls_made(c)) == 4


async def test_a_policy_that_stops_offering_grants_stops_the_grants_it_made(tmp_path: Path) -> None:
    async with core(tmp_path) as c, c.agent() as agent:
        await approve_first(c, agent, {"orderId": 1001}, GrantAsk())
        (tmp_path / "policy.json").write_text(json.dumps(policy(grants=None)))
        assert await c.gateway.policies.reload("test")
        await held_then_rejected(c, agent, {"orderId": 1001})
    assert len(calls_made(c)) == 1


async def test_a_grant_cannot_be_asked_for_where_the_policy_offers_none(tmp_path: Path) -> None:
    async with core(tmp_path, policy(grants=None)) as c, c.agent() as agent, anyio.create_task_group() as tg:
        box: dict[str, Any] = {}
        await call_in_background(agent, tg, "cancel_order", {"orderId": 1001}, box)
        request = await c.pending()
        with pytest.raises(InvalidDecision, match="allows no standing approvals"):
            await c.service.approve(request.id, ALICE, "api", grant=GrantAsk())
        assert (await c.service.get(request.id)).status == Status.PENDING
        await c.service.reject(request.id, ALICE, "api", "done")


async def test_a_granted_call_the_upstream_fails_is_audited_as_failed(tmp_path: Path) -> None:
    async with core(tmp_path) as c, c.agent() as agent:
        await approve_first(c, agent, {"orderId": 1001}, GrantAsk())

        async def failing(arguments: Any) -> types.CallToolResult:
            return text_result("no such order", is_error=True)

        c.upstreams.upstreams[0].handlers["cancel_order"] = failing
        result = await agent.call_tool("cancel_order", {"orderId": 1001})
        assert result.is_error
        [failed] = [e for e in await c.service.history.events() if e.kind == "call.failed"]
        assert failed.detail["grant_id"] and failed.actor == "alice"


async def test_calls_racing_for_the_last_uses_of_a_grant_get_exactly_that_many(tmp_path: Path) -> None:
    async with core(tmp_path, policy(limited=False)) as c, c.agent() as agent:
        outcome = await approve_first(c, agent, {"orderId": 1001}, GrantAsk(uses=3))
        results: list[types.CallToolResult] = []

        async def call() -> None:
            results.append(await agent.call_tool("cancel_order", {"orderId": 1001}))

        async def reject_the_held() -> bool:
            for held in await c.service.list_requests(statuses={Status.PENDING}):
                await c.service.reject(held.id, ALICE, "api", "the grant is used up")
            return len(results) == 6

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(call)
            # Those the grant did not take are held, together, on one new request; one that looked after the
            # last use was taken is a repeat of the approved call within the repeat window, answered as it ended.
            await wait_for(reject_the_held)
        granted = [e for e in await c.service.history.events() if e.kind == "call.granted"]
        assert sorted(e.detail["uses"] for e in granted) == [1, 2, 3]
        assert len(calls_made(c)) == 1 + 3
        events = await c.service.history.events()
        rejected = sum(text(r).startswith("[APPROVAL REJECTED]") for r in results)
        repeated = [e for e in events if e.kind == "call.repeated" and e.request_id == granted[0].request_id]
        assert rejected + len(repeated) == 3, [text(r) for r in results]
        assert (await c.service.grants.get(outcome.grant.id)).uses == 3
