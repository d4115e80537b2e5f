"""One story per request: for each way a request can end, the agent, Slack, the web card and the API agree.

The sentence comes from one place (`approvals.story`); this checks that every channel shows it,
word for word (escaped for its medium), for requests ended through the real paths.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from markupsafe import escape
from mcp import Client

from gateway.demo import DEMO_POLICY
from tests.harness import Harness, running_gateway, wait_for
from tests.slack.fake_slack import FakeSlack
from tests.web.support import browser_client, sign_in, web_config

CANCEL = {"orderId": 1001, "confirm": True}


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


@dataclass
class Stack:
    h: Harness
    slack: FakeSlack
    web: httpx2.AsyncClient


@asynccontextmanager
async def stack(tmp_path: Path, database_url: str, **approval: Any) -> AsyncIterator[Stack]:
    policy = json.loads(json.dumps(DEMO_POLICY))
    policy["tools"]["ibkr_cancel_order"]["approval"].update(approval)
    fake = FakeSlack()
    async with fake.serving():
        config = {**web_config(), "slack": fake.config()}
        async with (
            running_gateway(tmp_path, database_url, policy=policy, config=config) as h,
            browser_client(h.base_url) as web,
        ):
            await sign_in(web, "alice")
            with anyio.fail_after(30):
                yield Stack(h, fake, web)


Ending = Callable[[Stack, Client], Awaitable[tuple[str, types.CallToolResult | None]]]


async def _held(s: Stack, agent: Client, arguments: dict[str, Any], decide: Callable[[str], Awaitable[None]]) -> Any:
    box: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:

        async def call() -> None:
            box["result"] = await agent.call_tool("ibkr_cancel_order", arguments)

        tg.start_soon(call)
        [request] = await s.h.pending()
        # An approver decides what Slack shows them (a request decided before its message is up gets none).
        await s.slack.message()
        await decide(request["id"])
    return request["id"], box["result"]


async def executed(s: Stack, agent: Client) -> tuple[str, types.CallToolResult | None]:
    async def approve(request_id: str) -> None:
        await s.h.api().post(f"/api/approvals/{request_id}/approve", json={})

    return await _held(s, agent, CANCEL, approve)  # type: ignore[no-any-return]


async def failed(s: Stack, agent: Client) -> tuple[str, types.CallToolResult | None]:
    async def approve(request_id: str) -> None:
        await s.h.api().post(f"/api/approvals/{request_id}/approve", json={})

    return await _held(s, agent, {"orderId": 424242, "confirm": True}, approve)  # type: ignore[no-any-return]


async def rejected(s: Stack, agent: Client) -> tuple[str, types.CallToolResult | None]:
    async def reject(request_id: str) -> None:
        await s.h.api().post(f"/api/approvals/{request_id}/reject", json={"reason": "it protects the position"})

    return await _held(s, agent, CANCEL, reject)  # type: ignore[no-any-return]


async def timed_out(s: Stack, agent: Client) -> tuple[str, types.CallToolResult | None]:
    async def nobody(request_id: str) -> None:
        return None

    return await _held(s, agent, CANCEL, nobody)  # type: ignore[no-any-return]


async def not_picked_up(s: Stack, agent: Client) -> tuple[str, types.CallToolResult | None]:
    pending = await agent.call_tool("ibkr_cancel_order", CANCEL)
    request_id = pending.structured_content["approval_id"]  # type: ignore[index]
    await s.h.api().post(f"/api/approvals/{request_id}/approve", json={})

    async def expired() -> bool:
        return bool((await s.h.api().get(f"/api/approvals/{request_id}")).json()["status"] == "expired")

    await wait_for(expired)
    return request_id, await agent.call_tool("countersign_approval_wait", {"approval_id": request_id})


async def withdrawn(s: Stack, agent: Client) -> tuple[str, types.CallToolResult | None]:
    scope = anyio.CancelScope()

    async def call() -> None:
        with scope:
            await agent.call_tool("ibkr_cancel_order", CANCEL)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        [request] = await s.h.pending()
        scope.cancel()

    async def cancelled() -> bool:
        return bool((await s.h.api().get(f"/api/approvals/{request['id']}")).json()["status"] == "cancelled")

    await wait_for(cancelled)
    return request["id"], None


ENDINGS: dict[str, tuple[Ending, dict[str, Any], str | None]] = {
    # name: (how to get there, approval settings, the tag the agent's result carries; None: the tool's own result)
    "executed": (executed, {}, None),
    "failed": (failed, {}, None),
    "rejected": (rejected, {}, "APPROVAL REJECTED"),
    "timed_out": (timed_out, {"timeout": "1s"}, "APPROVAL EXPIRED"),
    "not_picked_up": (not_picked_up, {"max_hold": "0.3s", "pickup_window": "1s"}, "APPROVAL EXPIRED"),
    "withdrawn": (withdrawn, {}, None),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_the_agent_slack_the_web_card_and_the_api_tell_the_same_story(
    tmp_path: Path, sqlite_url: str, ending: str
) -> None:
    end, approval, tag = ENDINGS[ending]
    async with stack(tmp_path, sqlite_url, **approval) as s, s.h.agent() as agent:
        request_id, result = await end(s, agent)

        api = (await s.h.api().get(f"/api/approvals/{request_id}")).json()
        assert api["ended_because"] == ending
        story = api["summary"]
        assert story and story[0].isupper() and story.endswith(".")

        # The agent: a tagged result carrying the sentence, or the tool's own result and the sentence on request.
        if tag is not None:
            assert result is not None and text(result) == f"[{tag}] {story}"
        elif result is not None:
            assert not text(result).startswith("[APPROVAL")
        status = await agent.call_tool("countersign_approval_status", {"approval_id": request_id})
        assert status.structured_content["summary"] == story  # type: ignore[index]
        assert story in text(status)

        # Slack: the message ends showing the same sentence.
        message = await s.slack.message()
        await s.slack.message_shows(message, story)

        # The web card says it too.
        card = await s.web.get(f"/inbox/cards/{request_id}")
        assert card.status_code == 200
        assert str(escape(story)) in card.text
