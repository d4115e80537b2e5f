"""What a policy change does to requests that exist, in memory: executing ones are never touched, and an
approved call the sweep could not judge is judged again just before it would start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types

from approvals.states import EndReason, Status
from tests.gateway.fakes import broker, text_result
from tests.gateway.test_calls import ALICE, CANCEL, call_in_background, core, policy, text
from tests.harness import wait_for


def deny_1001() -> dict[str, Any]:
    stricter = policy()
    stricter["tools"]["cancel_order"]["deny_if"] = [
        {"conditions": [{"path": "args.orderId", "op": "eq", "value": 1001}], "on_deny": "Never cancel 1001."}
    ]
    return stricter


async def test_a_request_that_is_executing_is_never_touched_by_a_policy_change(tmp_path: Path) -> None:
    release = anyio.Event()

    async def slow_cancel(arguments: dict[str, Any]) -> types.CallToolResult:
        await release.wait()
        return text_result(f"cancelled {arguments['orderId']}")

    async with core(tmp_path, broker(cancel_order=slow_cancel)) as c, c.agent() as agent:
        box: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            await call_in_background(agent, tg, "cancel_order", CANCEL, box)
            request = await c.pending()
            await c.service.approve(request.id, ALICE, "api")

            async def executing() -> bool:
                return bool((await c.service.get(request.id)).status == Status.EXECUTING)

            await wait_for(executing)
            c.gateway.settings.policy_path.write_text(json.dumps(deny_1001()))
            assert await c.gateway.policies.reload("test")  # the sweep has run when this returns
            assert (await c.service.get(request.id)).status == Status.EXECUTING
            release.set()
    assert text(box["result"]) == "cancelled 1001"
    assert (await c.service.get(request.id)).status == Status.EXECUTED


async def test_an_approved_call_the_sweep_could_not_judge_is_withdrawn_before_it_starts(tmp_path: Path) -> None:
    paper = broker()
    async with core(tmp_path, paper, approval={"max_hold": "0.1s"}) as c, c.agent() as agent:
        parked = await agent.call_tool("cancel_order", CANCEL)
        approval_id = parked.structured_content["approval_id"]  # type: ignore[index]
        # The upstream is away while the policy changes: without its schema, a rule on the arguments
        # cannot be judged (its defaults are unknown), so the sweep leaves the request alone.
        c.upstreams.upstreams.remove(paper)
        c.gateway.settings.policy_path.write_text(json.dumps(deny_1001()))
        assert await c.gateway.policies.reload("test")
        assert (await c.service.get(approval_id)).status == Status.PENDING
        await c.service.approve(approval_id, ALICE, "api")

        c.upstreams.upstreams.append(paper)  # back: the call would start now, and is judged first
        result = await agent.call_tool("countersign_approval_wait", {"approval_id": approval_id})
    assert text(
        result
    ) == "[POLICY DENIED] Withdrawn by a policy change after approval by alice: Never cancel 1001. " + (
        "The call was not executed."
    )
    ended = await c.service.get(approval_id)
    assert (ended.status, ended.ended_because) == (Status.CANCELLED, EndReason.POLICY_WITHDRAWN)
    assert paper.calls == []


async def test_a_hidden_tool_is_withdrawn_even_while_its_upstream_is_away(tmp_path: Path) -> None:
    paper = broker()
    async with core(tmp_path, paper, approval={"max_hold": "0.1s"}) as c, c.agent() as agent:
        parked = await agent.call_tool("cancel_order", CANCEL)
        approval_id = parked.structured_content["approval_id"]  # type: ignore[index]
        c.upstreams.upstreams.remove(paper)
        hidden = policy()
        hidden["hide"] = ["cancel_order"]
        c.gateway.settings.policy_path.write_text(json.dumps(hidden))
        assert await c.gateway.policies.reload("test")
        ended = await c.service.get(approval_id)
    assert (ended.status, ended.ended_because) == (Status.CANCELLED, EndReason.POLICY_WITHDRAWN)
    assert ended.error == "tool 'cancel_order' is not available"
