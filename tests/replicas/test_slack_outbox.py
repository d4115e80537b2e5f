"""Slack work done once with three replicas: each held request gets one message, and its updates, even
when a replica is killed with posts in flight.

Three real `countersign serve` processes on one PostgreSQL database talk to the fake Slack through
the real slack-sdk. The fake answers posts late, so the replica killed with SIGKILL dies after
Slack accepted its posts and before it could record them: another replica takes the work over
when the lease runs out, finds each of those posts by its metadata, and posts nothing twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.replicas.replicas_support_shared import Replica, agent, approver_api, logs, replicas
from tests.slack.fake_slack import FakeSlack
from tests.slack.stack import ALICE, BOB, cancel_policy, text

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.filterwarnings("ignore::ResourceWarning")]

LATE = 2.0  # how late the fake Slack answers posts while the doomed replica posts


async def hold(replica: Replica, order_ids: range) -> list[str]:
    """Held calls through `replica`, one per order; each returns [APPROVAL PENDING] at once. Their request ids."""
    ids: list[str] = []
    async with agent(replica.base_url) as client, anyio.create_task_group() as tg:

        async def one(order_id: int) -> None:
            result = await client.call_tool("ibkr_cancel_order", {"orderId": order_id, "confirm": True})
            assert text(result).startswith("[APPROVAL PENDING]"), text(result)
            ids.append(result.structured_content["approval_id"])  # type: ignore[index]

        for order_id in order_ids:
            tg.start_soon(one, order_id)
    return ids


async def test_each_held_request_gets_one_slack_message_and_its_updates_with_a_replica_killed_mid_way(
    tmp_path: Path, postgres_url: str
) -> None:
    slack = FakeSlack([ALICE, BOB])
    async with slack.serving():
        settings: dict[str, Any] = slack.config(request_timeout="3s", lease="7s")
        policy = cancel_policy(max_hold="0.5s")
        async with replicas(tmp_path, postgres_url, count=3, policy=policy, sections={"slack": settings}) as running:
            a, b, doomed = running
            requests = await hold(a, range(2001, 2008)) + await hold(b, range(2008, 2015))
            await slack.wait_until(lambda: all(len(slack.top_level_posts(r)) == 1 for r in requests), within=20)

            # The doomed replica's posts reach Slack, and their answers are still on the way when it dies.
            slack.slow("chat.postMessage", LATE, times=6)
            doomed_requests = await hold(doomed, range(2015, 2021))
            await slack.wait_until(lambda: all(slack.top_level_posts(r) for r in doomed_requests), within=LATE)
            doomed.kill()
            requests += doomed_requests

            async with approver_api(a.base_url) as api_a, approver_api(b.base_url) as api_b:
                # Decided through the survivors, some while the dead replica's work is still leased.
                for n, request_id in enumerate(requests):
                    api = (api_a, api_b)[n % 2]
                    response = await api.post(f"/api/approvals/{request_id}/reject", json={"reason": f"no {n}"})
                    assert response.status_code == 200, response.text

            def final(n: int, request_id: str) -> bool:
                [post] = slack.top_level_posts(request_id)
                message = slack.messages.get((post.args["channel"], str(_ts_of(slack, request_id))))
                return message is not None and f"Rejected by alice: no {n}." in message.block_text()

            try:
                await slack.wait_until(lambda: all(final(n, r) for n, r in enumerate(requests)), within=30)
            except TimeoutError:
                pytest.fail(f"not showing their end: {describe(slack, requests, final)}\n{logs(running)}")
            # Let a wrong late post or update show up if there is one.
            await anyio.sleep(1.0)

        posts = {r: len(slack.top_level_posts(r)) for r in requests}
        assert posts == dict.fromkeys(requests, 1), logs(running)
        assert slack.deleted == []
        for n, request_id in enumerate(requests):
            assert final(n, request_id), (request_id, logs(running))
        # Whether the dead replica's answers were lost before it recorded them depends on timing; when they
        # were, the replica that took over found its posts (`conversations.history`) rather than posting again,
        # which the single post per request and the final states above show either way.
        # Every top-level message belongs to a request, and each request has one.
        top_level = [m for m in slack.messages.values() if m.thread_ts is None]
        assert len(top_level) == len(requests)


def _ts_of(slack: FakeSlack, request_id: str) -> str | None:
    for message in slack.messages.values():
        payload = (message.metadata or {}).get("event_payload") or {}
        if message.thread_ts is None and payload.get("request_id") == request_id:
            return message.ts
    return None


def describe(slack: FakeSlack, requests: list[str], final: Any) -> list[str]:
    out = []
    for n, request_id in enumerate(requests):
        if final(n, request_id):
            continue
        ts = _ts_of(slack, request_id)
        shown = next((m.block_text()[-200:] for m in slack.messages.values() if m.ts == ts), None)
        out.append(f"{n} {request_id}: posts={len(slack.top_level_posts(request_id))} ts={ts} shows={shown!r}")
    return out
