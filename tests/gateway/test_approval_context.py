"""What approvers are shown, as the policy declares it: looked-up facts, a sentence, and the agent's reason.

Driven through the product's surfaces: an agent's MCP call, Slack (the fake), the web card, the
approver API and `countersign approvals show`; and, for a tool the gateway has no code for, a
small stdio upstream of the tests' own (tests/gateway/notes_server.py).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from gateway.demo import DEMO_POLICY
from tests.gateway.test_cli import run_beside_server
from tests.harness import ALICE_TOKEN, Harness, held_call, running_gateway, seeing_bodies
from tests.slack.fake_slack import FakeSlack, Message, User
from tests.web.support import browser_client, sign_in, web_config

ROOT = Path(__file__).resolve().parents[2]
CANCEL = {"orderId": 1001, "confirm": True}
ORDER_FACTS = {
    "order · instrument": "AAPL",
    "order · side": "BUY",
    "order · quantity": "100",
    "order · limit": "185",
    "order · status": "Submitted",
}


@asynccontextmanager
async def approvers_everywhere(
    tmp_path: Path, database_url: str, policy: dict[str, Any], **gateway: Any
) -> AsyncIterator[tuple[Harness, FakeSlack]]:
    """The gateway with the web inbox and Slack (the fake) both asking approvers."""
    fake = FakeSlack([User("U0ALICE", "alice", "alice@example.com")])
    async with fake.serving():
        config = {**web_config(), "slack": fake.config(mode="http")}
        async with running_gateway(tmp_path, database_url, policy=policy, config=config, **gateway) as h:
            fake.interactions_url = f"{h.base_url}/slack/interactions"
            with anyio.fail_after(60):
                yield h, fake


async def slack_message(fake: FakeSlack, request_id: str) -> Message:
    def posted() -> Message | None:
        return next((m for m in fake.messages.values() if request_id in m.block_text()), None)

    await fake.wait_until(lambda: posted() is not None)
    found = posted()
    assert found is not None
    return found


async def card_text(h: Harness, request_id: str) -> str:
    async with browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        page = await web.get(f"/approvals/{request_id}")
        assert page.status_code == 200, page.text
        return page.text


async def test_a_held_cancel_shows_the_order_in_slack_on_the_card_in_the_api_and_the_cli(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with approvers_everywhere(tmp_path, sqlite_url, DEMO_POLICY) as (h, fake):
        async with held_call(h, "ibkr_cancel_order", CANCEL) as (request, outcome):
            title = "Cancel BUY 100 AAPL LMT 185.00, order 1001"
            shown = (await h.api().get(f"/api/approvals/{request['id']}")).json()
            assert shown["title"] == title
            facts = {f["label"]: f["text"] for f in shown["facts"]}
            assert {label: facts[label] for label in ORDER_FACTS} == ORDER_FACTS
            [order] = shown["context"]
            assert (order["name"], order["tool"], order["problem"]) == ("order", "ibkr_get_open_orders", None)

            # The lookup is the gateway's own read, on the record under its own name, before the request was made.
            kinds = [e["kind"] for e in shown["events"]]
            assert kinds == ["call.lookup", "request.created"]
            events = await h.service.history.events(request_id=request["id"])
            lookup = next(e for e in events if e.kind == "call.lookup")
            assert (lookup.agent, lookup.tool, lookup.outcome) == ("countersign", "ibkr_get_open_orders", "allowed")
            created = next(e for e in events if e.kind == "request.created")
            assert created.detail["title"] == title and title in created.message
            assert created.detail["context"][0]["value"]["status"] == "Submitted"

            slack = (await slack_message(fake, request["id"])).block_text()
            assert title in slack
            for label, value in ORDER_FACTS.items():
                assert f"*{label}*: {value}" in slack

            card = await card_text(h, request["id"])
            assert title in card
            for label, value in ORDER_FACTS.items():
                assert f"<dt>{label}</dt><dd>{value}</dd>" in card

            code, out, err = await run_beside_server(
                ["approvals", "show", request["id"], "--url", h.base_url, "--token", ALICE_TOKEN]
            )
            assert code == 0, err
            assert f"  title      {title}\n" in out
            for label, value in ORDER_FACTS.items():
                assert f"    {label}: {value}\n" in out

            await h.api().post(f"/api/approvals/{request['id']}/reject", json={"reason": "keep it"})
        assert outcome["result"].is_error


def hanging_lookups(app: Any) -> Any:
    """The broker's ASGI app behind a network where reading open orders never comes back."""

    async def hook(body: bytes) -> None:
        if b'"ibkr_get_open_orders"' in body:
            await anyio.sleep(600)

    return seeing_bodies(app, hook)


async def test_a_lookup_that_hangs_leaves_the_request_made_and_announced_within_its_bound(
    tmp_path: Path, sqlite_url: str
) -> None:
    policy = copy.deepcopy(DEMO_POLICY)
    policy["tools"]["ibkr_cancel_order"]["approval"]["context"][0]["timeout"] = "1s"
    async with approvers_everywhere(tmp_path, sqlite_url, policy, broker_in_front=hanging_lookups) as (h, fake):
        started = time.monotonic()
        async with held_call(h, "ibkr_cancel_order", CANCEL) as (request, outcome):
            assert time.monotonic() - started < 4, "made within the lookup's bound (1 s), not held up by it"
            shown = (await h.api().get(f"/api/approvals/{request['id']}")).json()
            assert shown["facts"] == [
                {"label": "order", "text": "context unavailable: ibkr_get_open_orders did not answer within 1s"}
            ]
            assert shown["title"] == "Cancel order 1001"
            slack = (await slack_message(fake, request["id"])).block_text()
            assert "context unavailable: ibkr_get_open_orders did not answer within 1s" in slack
            assert time.monotonic() - started < 8
            lookup = next(e for e in shown["events"] if e["kind"] == "call.lookup")
            assert lookup["outcome"] == "failed"
            await h.api().post(f"/api/approvals/{request['id']}/reject", json={})
        assert outcome["result"].is_error


NOTES_POLICY: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "tools": {
        "ibkr_get_*": {},
        "notes_read": {},
        "notes_slow_read": {},
        "notes_delete": {
            "require_approval": [{"conditions": [], "reason": "Deleting a note needs a human."}],
            "approval": {
                "approvers": ["group:traders"],
                "agent_reason": "required",
                "context": [
                    {
                        "name": "note",
                        "tool": "notes_read",
                        "arguments": {"name": "{{ args.name }}"},
                        "select": "{owner: owner, size: size, locked: locked}",
                    },
                    {"name": "history", "tool": "notes_slow_read", "arguments": {"name": "x"}, "timeout": "1s"},
                ],
                "summary": (
                    "Delete {{ args.name }}, a note of {{ context.note.size }} bytes owned by {{ context.note.owner }}"
                ),
            },
        },
    },
}


def notes_upstream(received: Path) -> dict[str, Any]:
    return {
        "name": "notes",
        "command": [sys.executable, "-m", "tests.gateway.notes_server"],
        "cwd": str(ROOT),
        "env": {"NOTES_RECEIVED": str(received)},
    }


async def test_a_tool_the_gateway_has_no_code_for_gets_its_context_summary_and_agent_reason_from_the_policy(
    tmp_path: Path, sqlite_url: str
) -> None:
    received = tmp_path / "received.jsonl"
    async with approvers_everywhere(tmp_path, sqlite_url, NOTES_POLICY, more_upstreams=[notes_upstream(received)]) as (
        h,
        fake,
    ):
        await h.gateway.upstreams.wait_connected(15)
        async with h.agent() as agent:
            [listed] = [t for t in (await agent.list_tools()).tools if t.name == "notes_delete"]
            assert listed.input_schema["properties"]["countersign_reason"]["type"] == "string"
            assert "countersign_reason" in listed.input_schema["required"]

            refused = await agent.call_tool("notes_delete", {"name": "budget"})
            assert refused.is_error
            words = refused.content[0].text  # type: ignore[union-attr]
            assert words.startswith("[INVALID ARGUMENTS]") and '"countersign_reason"' in words
            assert await h.pending(0) == []

        reason = "The budget moved to the shared drive; this copy is stale."
        async with held_call(h, "notes_delete", {"name": "budget", "countersign_reason": reason}) as (request, box):
            title = "Delete budget, a note of 4096 bytes owned by erik"
            shown = (await h.api().get(f"/api/approvals/{request['id']}")).json()
            assert shown["title"] == title
            assert shown["agent_reason"] == reason
            assert shown["arguments"] == {"name": "budget"}, "the reason is not part of what is approved"
            facts = {f["label"]: f["text"] for f in shown["facts"]}
            assert facts == {
                "note · owner": "erik",
                "note · size": "4096",
                "note · locked": "yes",
                "history": "context unavailable: notes_slow_read did not answer within 1s",
            }
            slack = (await slack_message(fake, request["id"])).block_text()
            assert title in slack and reason in slack and "*note · owner*: erik" in slack
            card = await card_text(h, request["id"])
            assert title in card and reason in card and "<dt>note · owner</dt><dd>erik</dd>" in card
            await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
        assert not box["result"].is_error, box["result"]
    # On the upstream's side: exactly the approved arguments, without the agent's reason.
    assert [json.loads(line) for line in received.read_text().splitlines()] == [{"name": "budget"}]
