"""Webhooks: a receiver served here gets each transition once, signed as docs/webhooks.md says.

The signature is checked with the snippet docs/webhooks.md shows, taken from the page itself, so
the documented verification is the one proven against real deliveries.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import text as sql
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app import Gateway
from gateway.config import ConfigError, parse_settings
from gateway.config_channels import WebhookSettings
from gateway.webhooks.payload import signature
from tests.gateway.test_two_gateways import cancel_with, second
from tests.harness import Harness, held_call, running_gateway, served, wait_for
from tests.slack.stack import CANCEL

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
SECRET = "whsec-test-0123456789abcdef"
EXECUTED = ["request.created", "request.approved", "request.executing", "request.executed"]


def documented_verify() -> Callable[..., bool]:
    """The `verify` function from docs/webhooks.md's "Verifying a delivery" section, as written there."""
    section = DOCS.read_text().split("## Verifying a delivery", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "docs/webhooks.md shows no Python verification snippet"
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), str(DOCS), "exec"), namespace)
    return namespace["verify"]  # type: ignore[no-any-return]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int = 200

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    url: str
    answer: Callable[[Received, int], int]
    posts: list[Received] = field(default_factory=list)

    @property
    def accepted(self) -> list[Received]:
        return [r for r in self.posts if r.status < 300]

    def types(self) -> list[str]:
        return [r.event["type"] for r in self.accepted]


@asynccontextmanager
async def receiver(answer: Callable[[Received, int], int] = lambda post, index: 200) -> AsyncIterator[Receiver]:
    """An HTTP endpoint on loopback that records every POST and answers with `answer(post, index)`."""
    box: list[Receiver] = []

    async def hook(request: Request) -> Response:
        got = Received(dict(request.headers), await request.body())
        got.status = box[0].answer(got, len(box[0].posts))
        box[0].posts.append(got)
        return Response(status_code=got.status)

    async with served(Starlette(routes=[Route("/hook", hook, methods=["POST"])]), lifespan="off") as server:
        box.append(Receiver(f"{server.url}/hook", answer))
        yield box[0]


def webhook(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "oncall", "url": url, "secret": SECRET, "retry_initial": 0.05, "retry_max": 0.2, **extra}


async def settled(*harnesses: Harness) -> None:
    """Every transition heard, and the webhook's outbox has nothing left to send and nobody working on it."""
    # Caught up with the newest transition (webhook.* events may follow it: the feed carries only request events).
    async with harnesses[0].gateway.db.read() as conn:
        query = "SELECT COALESCE(MAX(seq), 0) FROM audit_event WHERE kind LIKE 'request.%'"
        newest = int((await conn.execute(sql(query))).scalar_one())
    await wait_for(lambda: all((h.gateway.feed.cursor or 0) >= newest for h in harnesses))

    async def nothing_owed() -> bool:
        async with harnesses[0].gateway.db.read() as conn:
            rows = (
                await conn.execute(
                    sql("SELECT done_seq, wanted_seq, lease_token FROM channel_outbox WHERE channel = 'webhook:oncall'")
                )
            ).all()
        return bool(rows) and all(r.done_seq >= r.wanted_seq and r.lease_token is None for r in rows)

    await wait_for(nothing_owed, within=15)


async def audit_kinds(h: Harness, request_id: str) -> list[str]:
    return [e.kind for e in await h.service.history.events(request_id=request_id)]


async def test_a_receiver_gets_one_signed_event_per_transition_of_an_approved_call(
    tmp_path: Path, database_url: str
) -> None:
    verify = documented_verify()
    async with receiver() as hooks:
        config = {"webhooks": [webhook(hooks.url)]}
        async with running_gateway(tmp_path, database_url, policy=cancel_with(), config=config) as h:
            async with held_call(h, "ibkr_cancel_order", CANCEL) as (request, box):
                await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
            assert not box["result"].is_error
            await settled(h)
    assert hooks.types() == EXECUTED
    assert len(hooks.posts) == 4, "nothing sent twice, nothing failed"
    for post in hooks.accepted:
        assert verify(SECRET, post.headers["countersign-signature"], post.body)
        assert post.headers["countersign-event"] == post.event["type"]
        assert post.headers["countersign-delivery"] == str(post.event["id"])
        assert post.headers["content-type"] == "application/json"
        assert post.event["request"]["id"] == request["id"]
    ids = [post.event["id"] for post in hooks.accepted]
    assert ids == sorted(ids) and len(set(ids)) == 4
    created, approved, _, executed = (post.event for post in hooks.accepted)
    assert created["status"] == "pending" and created["ended_because"] is None
    assert approved["actor"] == "alice" and approved["status"] == "approved"
    assert executed["status"] == "executed" and executed["ended_because"] == "executed"
    assert executed["story"] == "Approved by alice and executed."
    assert executed["request"] | {"expires_at": None} == {
        "id": request["id"],
        "tool": "ibkr_cancel_order",
        "agent": "alpha",
        "upstream": "paper",
        "status": "executed",
        "expires_at": None,
    }
    assert executed["links"]["request"].endswith(f"/approvals/{request['id']}")


async def test_a_receiver_that_fails_three_times_gets_the_event_once_and_each_failure_is_audited(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with (
        receiver(lambda post, index: 503 if index < 3 else 200) as hooks,
        running_gateway(tmp_path, sqlite_url, config={"webhooks": [webhook(hooks.url)]}) as h,
    ):
        async with held_call(h, "ibkr_cancel_order", CANCEL) as (request, _):
            await wait_for(lambda: len(hooks.accepted) == 1, within=15)
            await h.api().post(f"/api/approvals/{request['id']}/reject", json={"reason": "no"})
        await settled(h)
        kinds = await audit_kinds(h, request["id"])
        metrics = (await h.api().get("/metrics")).text
    assert hooks.types() == ["request.created", "request.rejected"]
    assert [post.status for post in hooks.posts] == [503, 503, 503, 200, 200]
    assert len({post.body for post in hooks.posts[:4]}) == 1, "a retry sends the same event"
    assert kinds.count("webhook.failed") == 3
    assert "webhook.gave_up" not in kinds
    assert 'countersign_channel_delivery_failures_total{channel="webhook",outcome="failed"} 3.0' in metrics
    rejected = hooks.accepted[1].event
    assert rejected["ended_because"] == "rejected"
    assert rejected["story"] == "Rejected by alice: no. The call was not executed."


async def test_an_event_the_receiver_refuses_is_given_up_audited_and_the_next_one_still_sent(
    tmp_path: Path, sqlite_url: str
) -> None:
    def refuse_created(post: Received, index: int) -> int:
        return 410 if post.event["type"] == "request.created" else 200

    async with (
        receiver(refuse_created) as hooks,
        running_gateway(tmp_path, sqlite_url, config={"webhooks": [webhook(hooks.url)]}) as h,
    ):
        async with held_call(h, "ibkr_cancel_order", CANCEL) as (request, _):
            await wait_for(lambda: len(hooks.posts) == 1, within=15)
            await h.api().post(f"/api/approvals/{request['id']}/reject", json={})
        await settled(h)
        events = await h.service.history.events(request_id=request["id"])
    assert [post.status for post in hooks.posts] == [410, 200], "a 410 is not retried"
    assert hooks.types() == ["request.rejected"]
    gave_up = [e for e in events if e.kind == "webhook.gave_up"]
    assert len(gave_up) == 1 and "webhook.failed" not in [e.kind for e in events]
    assert gave_up[0].detail["webhook"] == "oncall" and gave_up[0].detail["status_code"] == 410
    assert gave_up[0].detail["event_type"] == "request.created"


async def test_a_webhook_with_an_event_filter_gets_only_those_events(tmp_path: Path, sqlite_url: str) -> None:
    async with receiver() as hooks:
        hook = webhook(hooks.url, events=["request.executed", "request.failed"])
        async with running_gateway(tmp_path, sqlite_url, policy=cancel_with(), config={"webhooks": [hook]}) as h:
            async with held_call(h, "ibkr_cancel_order", CANCEL) as (request, _):
                await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
            await settled(h)
    assert hooks.types() == ["request.executed"]


async def test_a_signature_made_with_another_secret_fails_the_documented_check(tmp_path: Path, sqlite_url: str) -> None:
    verify = documented_verify()
    async with (
        receiver() as hooks,
        running_gateway(tmp_path, sqlite_url, config={"webhooks": [webhook(hooks.url)]}) as h,
        held_call(h, "ibkr_cancel_order", CANCEL) as (request, _),
    ):
        await wait_for(lambda: len(hooks.accepted) == 1, within=15)
        await h.api().post(f"/api/approvals/{request['id']}/reject", json={})
    real = hooks.accepted[0]
    header = real.headers["countersign-signature"]
    assert verify(SECRET, header, real.body)
    forged = signature("another-secret-0123456789", int(time.time()), real.body)
    assert not verify(SECRET, forged, real.body), "signed with the wrong secret"
    assert not verify(SECRET, header, real.body.replace(b"pending", b"approved")), "body changed after signing"
    stale = signature(SECRET, int(time.time()) - 3600, real.body)
    assert not verify(SECRET, stale, real.body), "an hour-old delivery replayed"
    assert not verify(SECRET, "v1=deadbeef", real.body), "no timestamp"


async def test_two_gateways_on_one_database_send_each_transition_once(tmp_path: Path, postgres_url: str) -> None:
    async with receiver() as hooks:
        config = {"webhooks": [webhook(hooks.url)]}
        async with running_gateway(tmp_path, postgres_url, policy=cancel_with(), config=config) as a, second(a) as b:
            async with held_call(a, "ibkr_cancel_order", CANCEL) as (request, box):
                await b.api().post(f"/api/approvals/{request['id']}/approve", json={})
            assert not box["result"].is_error
            await settled(a, b)
            with anyio.move_on_after(1.0):  # give a second, wrong delivery the chance to show up
                await wait_for(lambda: len(hooks.posts) > 4)
    assert hooks.types() == EXECUTED
    assert len(hooks.posts) == 4


async def test_transitions_made_while_no_gateway_with_the_webhook_ran_are_sent_when_one_starts(
    tmp_path: Path, sqlite_url: str
) -> None:
    async def park(agent: Any, order: int) -> str:
        pending = await agent.call_tool("ibkr_cancel_order", {"orderId": order, "confirm": True})
        return str(pending.structured_content["approval_id"])

    # Gateway A has no webhook; the agent does not wait, so requests stay pending without it.
    async with (
        receiver() as hooks,
        running_gateway(tmp_path, sqlite_url, policy=cancel_with(max_hold="0.3s")) as a,
        a.agent() as agent,
    ):
        first, second_ = await park(agent, 1001), await park(agent, 1002)
        hooked = a.settings.model_copy(update={"webhooks": (WebhookSettings(**webhook(hooks.url)),)})
        async with Gateway(hooked).running(serve_http=False):
            await a.api().post(f"/api/approvals/{first}/reject", json={})
            await wait_for(lambda: len(hooks.accepted) == 2, within=15)
        # No gateway with the webhook runs now.
        await a.api().post(f"/api/approvals/{second_}/reject", json={})
        async with Gateway(hooked).running(serve_http=False):
            await wait_for(lambda: len(hooks.accepted) == 4, within=15)
    assert [(post.event["request"]["id"], post.event["type"]) for post in hooks.accepted] == [
        (first, "request.created"),
        (first, "request.rejected"),
        (second_, "request.created"),
        (second_, "request.rejected"),
    ]


def test_a_webhook_with_a_bad_url_short_secret_or_unknown_event_is_refused_naming_the_key() -> None:
    cases = {
        "url": ({"url": "ftp://hooks.example.com"}, "is not an http:// or https:// URL"),
        "secret": ({"secret": "short"}, "at least 16 characters"),
        "events": ({"events": ["request.approve"]}, "unknown event(s) ['request.approve']"),
        "name": ({"name": "On Call!"}, "is not a webhook name"),
    }
    for key, (change, words) in cases.items():
        data = {"webhooks": [{**webhook("https://hooks.example.com/x"), **change}]}
        with pytest.raises(ConfigError) as caught:
            parse_settings(data, source="<test>", environ={})
        assert f"webhooks[0].{key}" in str(caught.value) and words in str(caught.value), str(caught.value)
    twice = {"webhooks": [webhook("https://a.example.com/x"), webhook("https://b.example.com/x")]}
    with pytest.raises(ConfigError, match="used twice"):
        parse_settings(twice, source="<test>", environ={})
