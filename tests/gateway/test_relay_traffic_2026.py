"""A 2026-era agent during its call: the upstream's questions come back as `input_required`, the answers go up."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client, MCPError
from mcp.client.session import ClientRequestContext

from tests.gateway.relay_harness import audit_rows, relay_agent, relay_gateway, relay_upstream, text
from tests.harness import wait_for

ALLOW_ALL = {"version": "1", "default": "allow"}
UPSTREAM_ERAS = {"modern-upstream": False, "legacy-upstream": True}


def agent(base: str, **options: Any) -> AbstractAsyncContextManager[Client]:
    """A 2026-07-28 agent with the given callbacks and options."""
    return relay_agent(base, "2026-07-28", **options)


@pytest.mark.parametrize("legacy", UPSTREAM_ERAS.values(), ids=UPSTREAM_ERAS.keys())
async def test_an_upstream_elicitation_comes_back_as_input_required_and_the_retry_carries_the_answer_up(
    tmp_path: Path, legacy: bool
) -> None:
    asked: list[str] = []

    async def answer(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"confirm": True})

    upstreams = [relay_upstream(legacy=legacy)]
    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", ALLOW_ALL, upstreams) as (base, gateway),
        agent(base, elicitation_callback=answer) as client,
    ):
        # The wire itself: the first answer to the call is the question, and a state to come back with.
        first = await client.session.call_tool("confirm", {"action": "wipe"}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult) and first.request_state
        [(key, question)] = (first.input_requests or {}).items()
        assert isinstance(question, types.ElicitRequest) and question.params.message == "Really wipe?"
        declined = types.ElicitResult(action="decline")
        retried = await client.session.call_tool(
            "confirm", {"action": "wipe"}, input_responses={key: declined}, request_state=first.request_state
        )
        assert text(retried) == "wipe: decline"

        # The SDK's own driver answers and retries; the upstream hears the answer.
        result = await client.call_tool("confirm", {"action": "wipe"})
        assert text(result) == "wipe: confirmed"
        assert asked == ["Really wipe?"]
        rows = await audit_rows(gateway, "call.elicitation")
        assert [(r.outcome, r.agent, r.tool, r.upstream) for r in rows] == [
            ("decline", "alpha", "confirm", "memo"),
            ("accept", "alpha", "confirm", "memo"),
        ]
        assert rows[-1].arguments == '{"confirm":true}'


@pytest.mark.parametrize("legacy", UPSTREAM_ERAS.values(), ids=UPSTREAM_ERAS.keys())
async def test_an_upstream_sampling_request_reaches_the_agents_model_and_the_answer_goes_back(
    tmp_path: Path, legacy: bool
) -> None:
    prompts: list[str] = []

    async def model(ctx: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompts.extend(m.content.text for m in params.messages if isinstance(m.content, types.TextContent))
        reply = types.TextContent(type="text", text="old pond, a frog jumps")
        return types.CreateMessageResult(role="assistant", content=reply, model="test-model")

    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", ALLOW_ALL, [relay_upstream(legacy=legacy)]) as (
            base,
            _,
        ),
        agent(base, sampling_callback=model) as client,
    ):
        result = await client.call_tool("haiku", {"topic": "ponds"})
        assert text(result) == "the model said: old pond, a frog jumps"
        assert prompts == ["A haiku on ponds"]


async def test_a_retry_with_a_state_that_is_not_its_own_is_refused(tmp_path: Path) -> None:
    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", ALLOW_ALL, [relay_upstream()]) as (base, _),
        agent(base, elicitation_callback=lambda ctx, params: None) as client,
    ):
        first = await client.session.call_tool("confirm", {"action": "wipe"}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult)
        with pytest.raises(MCPError, match="Invalid or expired requestState"):
            await client.session.call_tool(
                "echo", {"text": "x"}, request_state=first.request_state, allow_input_required=True
            )
        with pytest.raises(MCPError, match="Invalid or expired requestState"):
            await client.session.call_tool(
                "confirm", {"action": "wipe"}, request_state="made-up", allow_input_required=True
            )


async def test_an_agent_without_elicitation_makes_the_upstream_hear_the_protocols_refusal(tmp_path: Path) -> None:
    upstreams = [relay_upstream(legacy=True)]
    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", ALLOW_ALL, upstreams) as (base, gateway),
        agent(base) as client,
    ):
        result = await client.call_tool("confirm", {"action": "wipe"})
        assert "Elicitation not supported" in text(result)
        assert [r.outcome for r in await audit_rows(gateway, "call.elicitation")] == ["refused"]


@pytest.mark.parametrize("legacy", UPSTREAM_ERAS.values(), ids=UPSTREAM_ERAS.keys())
async def test_an_upstream_log_line_reaches_an_agent_whose_call_opted_in(tmp_path: Path, legacy: bool) -> None:
    heard: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        heard.append(params)

    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", ALLOW_ALL, [relay_upstream(legacy=legacy)]) as (
            base,
            _,
        ),
        agent(base, logging_callback=on_log, log_level="info") as client,
    ):
        assert text(await client.call_tool("chatty", {"text": "hello"})) == "logged"
        await wait_for(lambda: heard)
        assert [(p.level, p.logger, p.data) for p in heard] == [("info", "relay-upstream", {"said": "hello"})]
