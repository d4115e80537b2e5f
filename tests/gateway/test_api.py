"""The approver HTTP API against a running gateway: who may decide, the error codes, and /healthz."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httpx2
import mcp_types as types
import pytest

from gateway.app import Gateway
from gateway.config import parse_settings
from gateway.demo import DEMO_POLICY
from tests.harness import (
    ALICE_TOKEN,
    BOB_TOKEN,
    CAROL_TOKEN,
    base_config,
    bound_socket,
    held_call,
    running_gateway,
    serve_asgi,
    wait_for,
    write_policy,
)

CANCEL = {"orderId": 1001, "confirm": True}


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def policy_with_cancel_approval(**approval: Any) -> dict[str, Any]:
    policy = copy.deepcopy(DEMO_POLICY)
    policy["tools"]["ibkr_cancel_order"]["approval"].update(approval)
    return policy


async def test_every_approver_endpoint_refuses_a_missing_or_unknown_token(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, httpx2.AsyncClient(base_url=h.base_url) as anonymous:
        calls: list[Callable[[dict[str, str]], Awaitable[httpx2.Response]]] = [
            lambda headers: anonymous.get("/api/approvals", params={"status": "pending"}, headers=headers),
            lambda headers: anonymous.get("/api/approvals/apr_x", headers=headers),
            lambda headers: anonymous.post("/api/approvals/apr_x/approve", json={}, headers=headers),
            lambda headers: anonymous.post("/api/approvals/apr_x/reject", json={"reason": "no"}, headers=headers),
        ]
        for send in calls:
            for headers in (
                {},
                {"Authorization": "Bearer not-a-real-token"},
                {"Authorization": f"Basic {ALICE_TOKEN}"},
            ):
                response = await send(headers)
                assert response.status_code == 401, (response.request.url, headers)
                assert response.json()["error"] == "unauthorized"
                assert response.headers["www-authenticate"].startswith("Bearer")

        health = await anonymous.get("/healthz")
        assert health.status_code == 200, "health needs no token"


async def test_an_unknown_request_id_is_404_to_show_approve_and_reject(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h:
        api = h.api()
        for response in (
            await api.get("/api/approvals/apr_doesnotexist"),
            await api.post("/api/approvals/apr_doesnotexist/approve", json={}),
            await api.post("/api/approvals/apr_doesnotexist/reject", json={"reason": "no"}),
        ):
            assert response.status_code == 404, response.text
            assert response.json() == {
                "error": "not_found",
                "detail": "no approval request with id 'apr_doesnotexist'",
            }


async def test_a_malformed_body_or_query_is_400_and_leaves_the_request_pending(tmp_path: Path, sqlite_url: str) -> None:
    async with (
        running_gateway(tmp_path, sqlite_url) as h,
        held_call(h, "ibkr_cancel_order", CANCEL) as (request, outcome),
    ):
        api = h.api()
        decide = f"/api/approvals/{request['id']}"
        for body, words in (
            (b"{not json", "not valid JSON"),
            (b'["approve"]', "must be a JSON object"),
            (b'{"reason": 42}', "reason must be a string"),
            (b'{"reson": "typo"}', "unknown key 'reson'"),
        ):
            for verdict in ("approve", "reject"):
                response = await api.post(
                    f"{decide}/{verdict}", content=body, headers={"Content-Type": "application/json"}
                )
                assert response.status_code == 400, (verdict, body, response.text)
                assert response.json()["error"] == "bad_request"
                assert words in response.json()["detail"]

        listing = await api.get("/api/approvals", params={"status": "pending,waiting"})
        assert listing.status_code == 400
        assert "unknown status" in listing.json()["detail"]
        assert (await api.get("/api/approvals", params={"limit": "lots"})).status_code == 400

        assert (await api.get(decide)).json()["status"] == "pending"
        assert "result" not in outcome
        await api.post(f"{decide}/reject", json={"reason": "done testing"})


async def test_pending_requests_are_listed_and_shown_with_their_arguments_and_history(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with (
        running_gateway(tmp_path, sqlite_url) as h,
        held_call(h, "ibkr_cancel_order", CANCEL) as (request, outcome),
    ):
        api = h.api(CAROL_TOKEN)  # anyone configured may read, even one who may not decide
        listing = (await api.get("/api/approvals", params={"status": "pending"})).json()["approvals"]
        assert [a["id"] for a in listing] == [request["id"]]
        executed = (await api.get("/api/approvals", params={"status": "executed"})).json()
        assert executed == {"approvals": [], "pending_by_agent": {"alpha": 1}}

        shown = await api.get(f"/api/approvals/{request['id']}")
        assert shown.status_code == 200
        body = shown.json()
        assert body["status"] == "pending"
        assert body["tool"] == "ibkr_cancel_order"
        assert body["agent"] == "alpha"
        assert body["arguments"] == CANCEL
        assert body["reason"] == "Cancelling a live order needs a human."
        assert body["approvers"] == ["group:traders"]
        assert body["decisions"] == []
        # The demo policy looks the order up before the request is made; the read is on the record.
        assert [e["kind"] for e in body["events"]] == ["call.lookup", "request.created"]
        assert body["title"] == "Cancel BUY 100 AAPL LMT 185.00, order 1001"
        facts = {f["label"]: f["text"] for f in body["facts"]}
        assert {k: facts[f"order · {k}"] for k in ("instrument", "side", "quantity", "limit", "status")} == {
            "instrument": "AAPL",
            "side": "BUY",
            "quantity": "100",
            "limit": "185",
            "status": "Submitted",
        }
        assert datetime.fromisoformat(body["expires_at"]) > datetime.fromisoformat(body["created_at"])

        await h.api().post(f"/api/approvals/{request['id']}/reject", json={"reason": "only looking"})
    assert text(outcome["result"]) == "[APPROVAL REJECTED] Rejected by alice: only looking. The call was not executed."


async def test_one_who_may_not_decide_is_403_and_a_second_decision_is_409_saying_by_whom_and_when(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url) as h:
        async with held_call(h, "ibkr_cancel_order", CANCEL) as (request, outcome):
            decide = f"/api/approvals/{request['id']}"

            refused = await h.api(CAROL_TOKEN).post(f"{decide}/approve", json={"reason": "ops says fine"})
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"] == "forbidden"
            assert refused.json()["detail"].startswith(f"carol may not decide request {request['id']}")
            assert (await h.api().get(decide)).json()["status"] == "pending"

            approved = await h.api(ALICE_TOKEN).post(f"{decide}/approve", json={"reason": "checked with the desk"})
            assert approved.status_code == 200, approved.text
            assert approved.json()["decided"] is True
            assert approved.json()["approval"]["decided_by"] == "alice"

            for verdict in ("approve", "reject"):
                late = await h.api(BOB_TOKEN).post(f"{decide}/{verdict}", json={"reason": "me too"})
                assert late.status_code == 409, late.text
                conflict = late.json()
                assert conflict["error"] == "already_decided"
                assert conflict["decided_by"] == "alice"
                assert conflict["decided_at"] is not None
                decided_at = datetime.fromisoformat(conflict["decided_at"])
                assert f"by alice at {decided_at:%Y-%m-%d %H:%M:%S} UTC" in conflict["detail"]

        assert not outcome["result"].is_error, text(outcome["result"])
        assert h.book.cancel_calls == 1
        final = (await h.api().get(decide)).json()
        assert final["status"] == "executed"
        assert [(d["approver"], d["verdict"]) for d in final["decisions"]] == [("alice", "approve")]
        audit = (await h.api().get("/api/audit", params={"request_id": request["id"]})).json()["events"]
        refusals = [e for e in audit if e["actor"] == "carol"]
        assert len(refusals) == 1, "the refused attempt is audited"


async def test_policy_approvers_may_name_approvers_and_groups(tmp_path: Path, sqlite_url: str) -> None:
    policy = policy_with_cancel_approval(approvers=["bob", "group:ops"], quorum=2)
    async with (
        running_gateway(tmp_path, sqlite_url, policy=policy) as h,
        held_call(h, "ibkr_cancel_order", CANCEL) as (request, outcome),
    ):
        decide = f"/api/approvals/{request['id']}/approve"

        alice = await h.api(ALICE_TOKEN).post(decide, json={})
        assert alice.status_code == 403, "alice is a trader, but this policy names bob and the ops group"

        bob = await h.api(BOB_TOKEN).post(decide, json={"reason": "named"})
        assert bob.status_code == 200, bob.text
        assert (bob.json()["decided"], bob.json()["approvals"], bob.json()["needed"]) == (False, 1, 2)
        assert bob.json()["approval"]["status"] == "pending"

        carol = await h.api(CAROL_TOKEN).post(decide, json={"reason": "in ops"})
        assert carol.status_code == 200, carol.text
        assert carol.json()["decided"] is True
        assert carol.json()["approval"]["decided_by"] == "bob, carol"
    assert not outcome["result"].is_error, text(outcome["result"])


async def test_a_reject_without_a_reason_is_400_when_the_policy_requires_one(tmp_path: Path, sqlite_url: str) -> None:
    policy = policy_with_cancel_approval(reject_reason="required")
    async with (
        running_gateway(tmp_path, sqlite_url, policy=policy) as h,
        held_call(h, "ibkr_cancel_order", CANCEL) as (request, outcome),
    ):
        reject = f"/api/approvals/{request['id']}/reject"

        for body in ({}, {"reason": "   "}):
            response = await h.api().post(reject, json=body)
            assert response.status_code == 400, response.text
            assert "requires a reason" in response.json()["detail"]

        response = await h.api().post(reject, json={"reason": "wrong order"})
        assert response.status_code == 200, response.text
    assert text(outcome["result"]) == "[APPROVAL REJECTED] Rejected by alice: wrong order. The call was not executed."


async def test_health_reports_the_database_and_every_upstream(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h:
        response = await h.api().get("/healthz")
        assert response.status_code == 200
        health = response.json()
        assert health["status"] == "ok"
        assert health["database"] == "ok"
        [paper] = health["upstreams"]
        assert paper["name"] == "paper"
        assert paper["state"] == "ready"
        assert paper["tools"] > 0


async def test_health_is_degraded_while_an_upstream_is_unreachable(tmp_path: Path, sqlite_url: str) -> None:
    closed = bound_socket()  # bound, never listening: the upstream refuses connections
    port = closed.getsockname()[1]
    data = base_config(
        database_url=sqlite_url,
        policy_file=write_policy(tmp_path / "policy.json", DEMO_POLICY),
        upstream_url=f"http://127.0.0.1:{port}/mcp",
    )
    settings = parse_settings(data, source="<test>", base_dir=str(tmp_path), environ={})
    try:
        async with (
            serve_asgi(Gateway(settings).asgi()) as base_url,
            # The details of /healthz are for approvers only.
            httpx2.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {ALICE_TOKEN}"}) as client,
        ):

            async def upstream_failed() -> bool:
                health = (await client.get("/healthz")).json()
                return bool(health["upstreams"][0]["last_error"])

            await wait_for(upstream_failed)
            response = await client.get("/healthz")
            assert response.status_code == 200, "the gateway itself still answers"
            health = response.json()
            assert health["status"] == "degraded"
            assert health["database"] == "ok"
            assert health["upstreams"][0]["state"] != "ready"
    finally:
        closed.close()


class TcpProxy:
    """A loopback TCP relay to PostgreSQL that the test can cut and restore, as if the server went away."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._scope: anyio.CancelScope | None = None

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port, reuse_port=False)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self._scope = await tg.start(self._serve, listener)

    async def _serve(self, listener: anyio.abc.SocketListener, *, task_status: anyio.abc.TaskStatus[Any]) -> None:
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            async with listener, anyio.create_task_group() as connections:
                await listener.serve(self._relay, task_group=connections)

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_tcp("127.0.0.1", self.target_port) as server:

            async def pump(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
                async for chunk in source:
                    await sink.send(chunk)
                await sink.send_eof()

            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, client, server)
                tg.start_soon(pump, server, client)

    def cut(self) -> None:
        """Close the listener and every relayed connection: new connections are refused."""
        assert self._scope is not None
        self._scope.cancel()


@pytest.mark.postgres
async def test_health_is_503_while_the_database_is_unreachable_and_recovers_with_it(
    tmp_path: Path, postgres_url: str
) -> None:
    target = urlsplit(postgres_url)
    proxy = TcpProxy(target.port or 5432)
    async with anyio.create_task_group() as tg:
        await proxy.start(tg)
        proxied = postgres_url.replace(target.netloc, f"{target.username}@127.0.0.1:{proxy.port}")
        async with running_gateway(tmp_path, proxied) as h:
            assert (await h.api().get("/healthz")).json()["database"] == "ok"

            proxy.cut()
            response = await h.api().get("/healthz")
            assert response.status_code == 503, response.text
            health = response.json()
            assert health["status"] == "degraded"
            assert "unavailable" in health["database"]
            assert health["upstreams"][0]["state"] == "ready", "upstreams are reported either way"

            await proxy.start(tg)
            response = await h.api().get("/healthz")
            assert response.status_code == 200, response.text
            assert response.json()["database"] == "ok"
        proxy.cut()
