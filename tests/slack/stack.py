"""A gateway with Slack configured against the fake Slack, and the people who click in it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client

from tests.harness import ALICE_TOKEN, BOB_TOKEN, CAROL_TOKEN, Harness, running_gateway
from tests.slack.fake_slack import FakeSlack, User

ALICE = User("U0ALICE", "alice")  # linked by `slack_user` in the configuration
BOB = User("U0BOB", "bob", "Bob@Example.com")  # linked by the email on his Slack profile
CAROL = User("U0CAROL", "carol", "carol@example.com")  # an approver, but not one the policy allows
MALLORY = User("U0MALLORY", "mallory", "mallory@elsewhere.example")  # no approver at all

APPROVERS = [
    {
        "name": "alice",
        "email": "alice@example.com",
        "groups": ["traders"],
        "api_token": ALICE_TOKEN,
        "slack_user": ALICE.id,
    },
    {"name": "bob", "email": "bob@example.com", "groups": ["traders"], "api_token": BOB_TOKEN},
    {"name": "carol", "email": "carol@example.com", "groups": ["ops"], "api_token": CAROL_TOKEN},
]

CANCEL = {"orderId": 1001, "confirm": True}


def cancel_policy(**approval: Any) -> dict[str, Any]:
    """ibkr_cancel_order held for group:traders, with `approval` overriding the defaults."""
    return {
        "version": "1",
        "default": "deny",
        "tools": {
            "ibkr_get_*": {},
            "ibkr_cancel_order": {
                "require_approval": [{"conditions": [], "reason": "Cancelling a live order needs a human."}],
                "approval": {
                    "timeout": "15m",
                    "approvers": ["group:traders"],
                    "channels": ["web", "slack"],
                    **approval,
                },
            },
        },
    }


@asynccontextmanager
async def slack_stack(
    tmp_path: Path,
    database_url: str,
    *,
    policy: Mapping[str, Any] | None = None,
    slack: Mapping[str, Any] | None = None,
    mode: str = "http",
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[tuple[Harness, FakeSlack]]:
    fake = FakeSlack([ALICE, BOB, CAROL, MALLORY])
    async with fake.serving():
        config = {"slack": fake.config(mode=mode, **(slack or {})), "approvers": APPROVERS}
        async with running_gateway(
            tmp_path, database_url, policy=policy or cancel_policy(), config=config, clock=clock
        ) as h:
            if mode == "socket":
                fake.socket_mode = True
                await fake.wait_until(lambda: bool(fake.sockets))
            else:
                fake.interactions_url = f"{h.base_url}/slack/interactions"
            # A held call that nobody decides waits for minutes; a broken test should fail, not hang.
            with anyio.fail_after(30):
                yield h, fake


async def call_tool(agent: Client, outcome: dict[str, Any], tool: str, arguments: dict[str, Any]) -> None:
    outcome["result"] = await agent.call_tool(tool, arguments)


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))
