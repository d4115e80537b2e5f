"""An upstream's log lines and elicitations during a call reach the calling agent, and the answer goes back."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext

from tests.gateway.relay_harness import audit_rows, relay_agent, relay_gateway, relay_upstream, text
from tests.harness import ALICE_TOKEN, wait_for

ALLOW_ALL = {"version": "1", "default": "allow"}
# The upstream in both eras: a 2.3 server the gateway speaks 2026-07-28 to (the elicitation comes as an
# input_required result), and a legacy-only one (it comes as a server-to-client request).
UPSTREAM_ERAS = {"modern-upstream": False, "legacy-upstream": True}


def agent(base: str, **options: Any) -> AbstractAsyncContextManager[Client]:
    """A 2025-era agent (the era whose clients are asked during a call) with the given callbacks."""
    return relay_agent(base, "legacy", **options)


@pytest.mark.parametrize("legacy", UPSTREAM_ERAS.values(), ids=UPSTREAM_ERAS.keys())
async def test_an_upstream_elicitation_reaches_the_agent_and_its_answer_goes_back_and_is_audited(
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
        result = await client.call_tool("confirm", {"action": "wipe"})
        assert text(result) == "wipe: confirmed"
        assert asked == ["Really wipe?"]
        rows = await audit_rows(gateway, "call.elicitation")
        assert [(r.outcome, r.agent, r.tool, r.upstream, r.arguments) for r in rows] == [
            ("accept", "alpha", "confirm", "memo", '{"confirm":true}')
        ]


async def test_an_agent_without_elicitation_makes_the_upstream_hear_the_protocols_refusal(tmp_path: Path) -> None:
    upstreams = [relay_upstream(legacy=True)]
    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", ALLOW_ALL, upstreams) as (base, gateway),
        agent(base) as client,
    ):
        result = await client.call_tool("confirm", {"action": "wipe"})
        # The upstream reports what it heard: the refusal any client without the capability gives.
        assert "Elicitation not supported" in text(result)
        rows = await audit_rows(gateway, "call.elicitation")
        assert [r.outcome for r in rows] == ["refused"]


@pytest.mark.parametrize("legacy", UPSTREAM_ERAS.values(), ids=UPSTREAM_ERAS.keys())
async def test_an_upstream_log_line_during_a_call_reaches_the_agent(tmp_path: Path, legacy: bool) -> None:
    heard: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        heard.append(params)

    upstreams = [relay_upstream(legacy=legacy)]
    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", ALLOW_ALL, upstreams) as (base, _),
        agent(base, logging_callback=on_log) as client,
    ):
        assert client.server_capabilities.logging is not None
        await client.session.set_logging_level("info")
        assert text(await client.call_tool("chatty", {"text": "hello"})) == "logged"
        await wait_for(lambda: heard)
        assert [(p.level, p.logger, p.data) for p in heard] == [("info", "relay-upstream", {"said": "hello"})]

        # An agent that asked for warnings and above is not sent the upstream's info lines.
        await client.session.set_logging_level("warning")
        await client.call_tool("chatty", {"text": "quiet"})
        assert len(heard) == 1


AGENT_ERAS = {"2025-era-agent": "legacy", "2026-era-agent": "2026-07-28"}


@pytest.mark.parametrize("mode", AGENT_ERAS.values(), ids=AGENT_ERAS.keys())
async def test_a_held_tools_elicitation_reaches_the_agent_only_after_approval(tmp_path: Path, mode: str) -> None:
    # A 2025-era agent is asked by a server-to-client request, a 2026-era one through input_required.
    policy = {
        "version": "1",
        "default": "allow",
        "tools": {"confirm": {"require_approval": [{"conditions": [], "reason": "a human first"}]}},
    }
    asked = anyio.Event()

    async def answer(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.set()
        return types.ElicitResult(action="accept", content={"confirm": True})

    async with (
        relay_gateway(
            tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", policy, [relay_upstream(legacy=mode == "legacy")]
        ) as (base, gateway),
        relay_agent(base, mode, elicitation_callback=answer) as client,
        httpx2.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {ALICE_TOKEN}"}) as api,
        anyio.create_task_group() as tg,
    ):
        box: dict[str, types.CallToolResult] = {}

        async def call() -> None:
            box["result"] = await client.call_tool("confirm", {"action": "wipe"})

        tg.start_soon(call)
        pending: list[dict[str, Any]] = []

        async def held() -> bool:
            pending[:] = (await api.get("/api/approvals", params={"status": "pending"})).json()["approvals"]
            return bool(pending)

        await wait_for(held)
        # Held for a human: nothing reached the upstream, so it has asked nothing.
        assert not asked.is_set() and await audit_rows(gateway, "call.elicitation") == []
        response = await api.post(f"/api/approvals/{pending[0]['id']}/approve", json={})
        assert response.status_code == 200, response.text
        with anyio.fail_after(20):
            await asked.wait()
        await wait_for(lambda: "result" in box, within=20)
        assert text(box["result"]) == "wipe: confirmed"
        assert [r.outcome for r in await audit_rows(gateway, "call.elicitation")] == ["accept"]
