"""The call path and held calls in memory: an in-process MCP client, fake upstreams and a clock the test moves.

Every branch of a held call is driven here without a server: allowed, denied, unknown, limited,
held then approved / rejected / expired / withdrawn, bounded holds, re-attaching, the wait and
status tools, an upstream that went away, and the approval store failing at each await point —
where the agent must always get a tagged result, never a JSON-RPC error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from approvals.approvers import Approver
from approvals.errors import AlreadyDecided, StoreUnavailable
from approvals.states import Status
from approvals.views import NewRequest, RequestView
from gateway.app import Gateway
from gateway.config import parse_settings
from gateway.errors import Tag
from tests.gateway.fakes import FakeUpstream, FakeUpstreams, MovableClock, broker, text_result
from tests.harness import wait_for

ALICE = Approver("alice", groups=("traders",))
CANCEL = {"orderId": 1001}


def policy(**approval: Any) -> dict[str, Any]:
    return {
        "version": "1",
        "default": "deny",
        "hide": ["secret_tool"],
        "tools": {
            "get_orders": {},
            "limited_read": {"limits": [{"counter": "lr", "window": "hour", "max": 1, "scope": "grant"}]},
            "cancel_order": {
                "require_approval": [{"conditions": [], "reason": "Cancelling needs a human."}],
                "approval": {"timeout": "15m", "approvers": ["group:traders"], "channels": ["web"], **approval},
            },
        },
    }


@dataclass
class Core:
    gateway: Gateway
    clock: MovableClock
    upstreams: FakeUpstreams

    @property
    def service(self) -> Any:
        return self.gateway.service

    @asynccontextmanager
    async def agent(self, mode: str = "legacy") -> AsyncIterator[Client]:
        async with Client(self.gateway.mcp, mode=mode) as client:  # type: ignore[arg-type]
            yield client

    async def pending(self) -> RequestView:
        found: list[RequestView] = []

        async def parked() -> bool:
            found[:] = await self.service.list_requests(statuses={Status.PENDING})
            return bool(found)

        await wait_for(parked)
        return found[0]


@asynccontextmanager
async def core(
    tmp_path: Path, *upstreams: FakeUpstream, approval: dict[str, Any] | None = None, **server: Any
) -> AsyncIterator[Core]:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(policy(**(approval or {}))))
    settings = parse_settings(
        {
            "server": {"database_url": f"sqlite:///{tmp_path / 'cs.db'}", "poll_interval": 0.05, **server},
            "policy": {"file": str(policy_file), "watch": False},
            "agents": [{"name": "alpha", "token": "token-alpha"}, {"name": "bravo", "token": "token-bravo"}],
            "approvers": [{"name": "alice", "groups": ["traders"], "api_token": "alice-token"}],
        },
        source="<test>",
        base_dir=str(tmp_path),
        environ={},
    )
    clock = MovableClock()
    fake = FakeUpstreams(*(upstreams or (broker(),)))
    gateway = Gateway(settings, stdio_agent="alpha", clock=clock, upstreams=fake)
    async with gateway.running(serve_http=False):
        with anyio.fail_after(30):
            yield Core(gateway, clock, fake)


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


async def call_in_background(agent: Client, tg: Any, tool: str, arguments: dict[str, Any], box: dict[str, Any]) -> None:
    async def run() -> None:
        box["result"] = await agent.call_tool(tool, arguments)

    tg.start_soon(run)


# ---- straight through


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_an_allowed_call_is_forwarded_and_audited(tmp_path: Path, mode: str) -> None:
    async with core(tmp_path) as c, c.agent(mode) as agent:
        result = await agent.call_tool("get_orders", {})
        assert text(result) == "orders on paper" and not result.is_error
        [event] = await c.service.history.events()
        assert (event.kind, event.outcome, event.tool, event.upstream) == (
            "call.allowed",
            "allowed",
            "get_orders",
            "paper",
        )


async def test_denied_hidden_unknown_and_limited_calls_get_their_tags(tmp_path: Path) -> None:
    async with core(tmp_path) as c, c.agent() as agent:
        assert text(await agent.call_tool("place_order", {})).startswith("[POLICY DENIED] ")
        assert text(await agent.call_tool("secret_tool", {})).startswith("[POLICY DENIED] ")
        # Listed by the policy, but no upstream offers it.
        assert text(await agent.call_tool("limited_read", {})).startswith("[UNKNOWN TOOL] ")
        kinds = [e.kind for e in await c.service.history.events()]
        assert kinds == ["call.denied", "call.hidden", "call.unknown"]


async def test_a_second_call_over_the_quota_is_limited(tmp_path: Path) -> None:
    async def limited(arguments: dict[str, Any]) -> types.CallToolResult:
        return text_result("ok")

    async with core(tmp_path, broker(limited_read=limited)) as c, c.agent() as agent:
        assert text(await agent.call_tool("limited_read", {})) == "ok"
        assert text(await agent.call_tool("limited_read", {})).startswith("[RATE LIMITED] ")


# ---- held, and how a hold ends


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_held_call_runs_once_approved_and_returns_the_upstreams_result(tmp_path: Path, mode: str) -> None:
    async with core(tmp_path) as c, c.agent(mode) as agent, anyio.create_task_group() as tg:
        box: dict[str, Any] = {}
        await call_in_background(agent, tg, "cancel_order", CANCEL, box)
        request = await c.pending()
        await c.service.approve(request.id, ALICE, "api")
    assert text(box["result"]) == "cancelled 1001 on paper"
    assert c.upstreams.upstreams[0].calls == [("cancel_order", CANCEL)]
    assert (await c.service.get(request.id)).status == Status.EXECUTED


async def test_a_rejected_call_says_who_and_why_and_never_runs(tmp_path: Path) -> None:
    async with core(tmp_path) as c, c.agent() as agent, anyio.create_task_group() as tg:
        box: dict[str, Any] = {}
        await call_in_background(agent, tg, "cancel_order", CANCEL, box)
        request = await c.pending()
        await c.service.reject(request.id, ALICE, "api", "keep it")
    assert box["result"].is_error
    assert text(box["result"]) == "[APPROVAL REJECTED] Rejected by alice: keep it. The call was not executed."
    assert c.upstreams.upstreams[0].calls == []


async def test_a_call_nobody_decides_expires_when_the_clock_passes_its_deadline(tmp_path: Path) -> None:
    async with core(tmp_path) as c, c.agent() as agent, anyio.create_task_group() as tg:
        box: dict[str, Any] = {}
        await call_in_background(agent, tg, "cancel_order", CANCEL, box)
        request = await c.pending()
        c.clock.now = request.expires_at
        assert await c.service.expire(request.id)
    assert text(box["result"]) == "[APPROVAL EXPIRED] Nobody decided within 15m; the call was not executed."
    assert c.upstreams.upstreams[0].calls == []


async def test_a_bounded_hold_returns_pending_and_the_wait_tool_then_returns_the_result(tmp_path: Path) -> None:
    async with core(tmp_path, approval={"max_hold": "0.2s"}) as c, c.agent() as agent:
        pending = await agent.call_tool("cancel_order", CANCEL)
        assert not pending.is_error and text(pending).startswith("[APPROVAL PENDING] ")
        approval_id = pending.structured_content["approval_id"]  # type: ignore[index]
        assert (await c.service.get(approval_id)).agent_waiting is False
        status = await agent.call_tool("countersign_approval_status", {"approval_id": approval_id})
        assert status.structured_content["status"] == "pending"  # type: ignore[index]
        await c.service.approve(approval_id, ALICE, "api")
        result = await agent.call_tool("countersign_approval_wait", {"approval_id": approval_id})
        assert text(result) == "cancelled 1001 on paper"
        # Asking again returns the stored result; nothing runs twice.
        again = await agent.call_tool("countersign_approval_wait", {"approval_id": approval_id})
        assert text(again) == "cancelled 1001 on paper"
    assert len(c.upstreams.upstreams[0].calls) == 1
    kinds = [e.kind for e in await c.service.history.events(request_id=approval_id)]
    assert kinds.count("request.attached") == 1 and kinds.count("request.executing") == 1


async def test_repeating_a_held_call_waits_for_the_same_request(tmp_path: Path) -> None:
    async with core(tmp_path, approval={"max_hold": "0.2s"}) as c, c.agent() as agent:
        first = await agent.call_tool("cancel_order", CANCEL)
        approval_id = first.structured_content["approval_id"]  # type: ignore[index]
        async with anyio.create_task_group() as tg:
            box: dict[str, Any] = {}
            await call_in_background(agent, tg, "cancel_order", CANCEL, box)

            async def attached() -> bool:
                return bool((await c.service.get(approval_id)).agent_waiting)

            await wait_for(attached)
            await c.service.approve(approval_id, ALICE, "api")
        assert text(box["result"]) == "cancelled 1001 on paper"
        assert len(await c.service.list_requests()) == 1


async def test_another_agents_approval_id_is_not_found(tmp_path: Path) -> None:
    async with core(tmp_path) as c, c.agent() as agent:
        theirs = await c.service.create(
            NewRequest(
                upstream="paper",
                tool="cancel_order",
                upstream_tool="cancel_order",
                arguments=CANCEL,
                agent="bravo",
                rule="tools.cancel_order.require_approval[0]",
                reason="Cancelling needs a human.",
                timeout_seconds=900,
            )
        )
        for tool in ("countersign_approval_wait", "countersign_approval_status"):
            result = await agent.call_tool(tool, {"approval_id": theirs.id})
            assert text(result) == f"[NOT FOUND] you have no approval request {theirs.id!r}"
        assert text(await agent.call_tool("countersign_approval_wait", {})).startswith("[INVALID ARGUMENTS] ")


async def test_an_explicit_cancel_withdraws_the_request(tmp_path: Path) -> None:
    async with core(tmp_path) as c, c.agent() as agent:
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                await agent.call_tool("cancel_order", CANCEL)

            tg.start_soon(call)
            request = await c.pending()
            tg.cancel_scope.cancel()

        async def settled() -> bool:
            return bool((await c.service.get(request.id)).status != Status.PENDING)

        await wait_for(settled)
        ended = await c.service.get(request.id)
        assert ended.status == Status.CANCELLED and ended.ended_because == "withdrawn"


# ---- a request carries what it needs: the catalog and policy of today are not consulted


async def wait_for_result(agent: Any, approval_id: str) -> types.CallToolResult:
    """The wait tool, asked again while its hold bound (0.1 s here) ends before the execution does."""
    with anyio.fail_after(20):
        while True:
            result = await agent.call_tool("countersign_approval_wait", {"approval_id": approval_id})
            if not text(result).startswith("[APPROVAL PENDING]"):
                return result


async def test_an_approved_call_goes_to_its_stored_upstream_even_when_another_now_offers_the_tool(
    tmp_path: Path,
) -> None:
    paper, other = broker("paper"), broker("other")
    async with core(tmp_path, paper, other, approval={"max_hold": "0.1s"}) as c, c.agent() as agent:
        pending = await agent.call_tool("cancel_order", CANCEL)
        approval_id = pending.structured_content["approval_id"]  # type: ignore[index]
        await c.service.approve(approval_id, ALICE, "api")
        c.upstreams.upstreams.reverse()  # "other" now wins the name in the catalog
        assert c.upstreams.route("cancel_order").upstream.name == "other"  # type: ignore[union-attr]
        # The policy changes too: cancels are now allowed outright, with no hold bound. The approved
        # request was made under the old one and keeps what it was given.
        edited = policy()
        edited["tools"]["cancel_order"] = {}
        (c.gateway.settings.policy_path).write_text(json.dumps(edited))
        assert await c.gateway.policies.reload("test")
        assert c.gateway.policies.current.evaluate("cancel_order", CANCEL).action == "allow"
        result = await wait_for_result(agent, approval_id)
    assert text(result) == "cancelled 1001 on paper"
    assert other.calls == [] and paper.calls == [("cancel_order", CANCEL)]
    executed = await c.service.get(approval_id)
    assert (executed.upstream, executed.upstream_tool, executed.max_hold_seconds) == ("paper", "cancel_order", 0.1)


async def test_an_approved_call_whose_upstream_is_gone_is_refused_never_rerouted(tmp_path: Path) -> None:
    paper, other = broker("paper"), broker("other")
    async with core(tmp_path, paper, other, approval={"max_hold": "0.1s"}) as c, c.agent() as agent:
        pending = await agent.call_tool("cancel_order", CANCEL)
        approval_id = pending.structured_content["approval_id"]  # type: ignore[index]
        await c.service.approve(approval_id, ALICE, "api")
        c.upstreams.upstreams.remove(paper)
        refused = await agent.call_tool("countersign_approval_wait", {"approval_id": approval_id})
        assert refused.is_error and text(refused).startswith("[UPSTREAM UNAVAILABLE] upstream 'paper'")
        assert "not configured any more" in text(refused)
        # Not connected right now: also refused, and the approval stands for a later pick-up.
        c.upstreams.upstreams.append(paper)
        paper.ready = False
        refused = await agent.call_tool("countersign_approval_wait", {"approval_id": approval_id})
        assert text(refused).startswith("[UPSTREAM UNAVAILABLE] upstream 'paper'")
        assert (await c.service.get(approval_id)).status == Status.APPROVED
        paper.ready = True
        result = await wait_for_result(agent, approval_id)
    assert text(result) == "cancelled 1001 on paper"
    assert other.calls == [] and paper.calls == [("cancel_order", CANCEL)]


# ---- the approval store failing: always a tagged result, never a JSON-RPC error


def break_method(c: Core, name: str, *, after: int = 0) -> None:
    """Make `service.<name>` fail from its (after+1)-th call on."""
    real = getattr(c.service, name)
    seen = {"n": 0}

    async def method(*args: Any, **kwargs: Any) -> Any:
        seen["n"] += 1
        if seen["n"] > after:
            raise StoreUnavailable("the database is unavailable: injected")
        return await real(*args, **kwargs)

    setattr(c.service, name, method)


@pytest.mark.parametrize("method", ["find_repeat", "create"])
async def test_a_store_failure_before_a_call_is_parked_fails_closed_with_a_tag(tmp_path: Path, method: str) -> None:
    async with core(tmp_path) as c, c.agent() as agent:
        break_method(c, method)
        result = await agent.call_tool("cancel_order", CANCEL)
    assert result.is_error
    assert text(result).startswith("[APPROVAL UNAVAILABLE] "), text(result)
    assert c.upstreams.upstreams[0].calls == []


async def test_a_store_failure_while_waiting_on_someone_elses_execution_is_a_tagged_result(tmp_path: Path) -> None:
    # Hole 1: the wait for another waiter's execution to finish.
    async with core(tmp_path, approval={"max_hold": "0.1s"}) as c, c.agent() as agent:
        pending = await agent.call_tool("cancel_order", CANCEL)
        approval_id = pending.structured_content["approval_id"]  # type: ignore[index]
        await c.service.approve(approval_id, ALICE, "api")
        view = await c.service.get(approval_id)
        await c.service.begin_execution(approval_id, view.arguments_sha256)  # another replica started it
        break_method(c, "wait_for_change")
        result = await agent.call_tool("countersign_approval_wait", {"approval_id": approval_id})
    assert result.is_error and text(result).startswith("[APPROVAL UNAVAILABLE] "), text(result)


async def test_a_store_failure_after_losing_the_start_to_someone_else_is_a_tagged_result(tmp_path: Path) -> None:
    # Hole 2: reading the request after another waiter won the start.
    async with core(tmp_path, approval={"max_hold": "0.1s"}) as c, c.agent() as agent:
        pending = await agent.call_tool("cancel_order", CANCEL)
        approval_id = pending.structured_content["approval_id"]  # type: ignore[index]
        await c.service.approve(approval_id, ALICE, "api")
        real_begin = c.service.begin_execution

        async def lose_the_start(request_id: str, digest: str, **owner_and_lease: Any) -> RequestView:
            await real_begin(request_id, digest, **owner_and_lease)  # another replica wins the compare-and-set
            break_method(c, "get")
            raise AlreadyDecided(request_id, "executing", "alice", None)

        c.service.begin_execution = lose_the_start
        result = await agent.call_tool("countersign_approval_wait", {"approval_id": approval_id})
    assert result.is_error and text(result).startswith("[APPROVAL UNAVAILABLE] "), text(result)
    assert c.upstreams.upstreams[0].calls == []


@pytest.mark.parametrize("method", ["get", "attach", "begin_execution"])
async def test_a_store_failure_at_pick_up_is_a_tagged_result_and_runs_nothing(tmp_path: Path, method: str) -> None:
    async with core(tmp_path, approval={"max_hold": "0.1s"}) as c, c.agent() as agent:
        pending = await agent.call_tool("cancel_order", CANCEL)
        approval_id = pending.structured_content["approval_id"]  # type: ignore[index]
        await c.service.approve(approval_id, ALICE, "api")
        break_method(c, method)
        result = await agent.call_tool("countersign_approval_wait", {"approval_id": approval_id})
    assert result.is_error and text(result).startswith("[APPROVAL UNAVAILABLE] "), text(result)
    assert c.upstreams.upstreams[0].calls == []


async def test_a_store_failure_while_held_ends_as_unavailable_at_the_deadline_not_as_an_error(tmp_path: Path) -> None:
    async with core(tmp_path) as c, c.agent() as agent, anyio.create_task_group() as tg:
        # The store goes down for waiting and expiring before the call is parked: the held call keeps trying
        # until its deadline, then refuses rather than guess.
        break_method(c, "wait_for_change")
        break_method(c, "expire")
        box: dict[str, Any] = {}
        await call_in_background(agent, tg, "cancel_order", CANCEL, box)
        request = await c.pending()
        c.clock.now = request.expires_at
    assert text(box["result"]).startswith("[APPROVAL UNAVAILABLE] "), text(box["result"])
    assert c.upstreams.upstreams[0].calls == []


async def test_a_store_failure_recording_the_result_still_returns_what_the_upstream_did(tmp_path: Path) -> None:
    # Once forwarded, the agent must get the upstream's answer: an error would make it retry a call that ran.
    async with core(tmp_path) as c, c.agent() as agent, anyio.create_task_group() as tg:
        box: dict[str, Any] = {}
        await call_in_background(agent, tg, "cancel_order", CANCEL, box)
        request = await c.pending()
        break_method(c, "finish_execution")
        await c.service.approve(request.id, ALICE, "api")
    assert text(box["result"]) == "cancelled 1001 on paper"


async def test_an_unexpected_failure_is_logged_and_becomes_a_generic_tagged_result(tmp_path: Path) -> None:
    async def broken(arguments: dict[str, Any]) -> types.CallToolResult:
        raise RuntimeError("a bug in the path")

    async with core(tmp_path, broker(get_orders=broken)) as c, c.agent() as agent:
        result = await agent.call_tool("get_orders", {})
    assert result.is_error and text(result).startswith(f"[{Tag.GATEWAY_ERROR.value}] ")
