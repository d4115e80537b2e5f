"""How a held call ends when nobody decides it: timeout, the agent cancelling or vanishing, restarts,
and a database that goes away. Real MCP clients (both protocol eras) against a real gateway.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from approvals.approvers import ApproverDirectory
from approvals.db import Database
from approvals.errors import StoreUnavailable
from approvals.service import ApprovalService
from approvals.views import NewRequest, RequestView
from gateway.app import Gateway
from gateway.caller import Gone
from gateway.config import parse_settings
from gateway.demo import DEMO_POLICY
from gateway.mcp_server import DISCONNECTED_KEY
from gateway.paper_book import PaperBook
from gateway.paper_broker import build_http_app
from tests.conftest import PG_ADMIN_URL
from tests.factories import held_cancel
from tests.harness import (
    AGENT_TOKEN,
    ALICE_TOKEN,
    Harness,
    base_config,
    running_gateway,
    serve_asgi,
    wait_for,
    write_policy,
)

ERAS = ["legacy", "auto"]
CANCEL_1001 = {"orderId": 1001, "confirm": True}
LEGACY_VERSION = "2025-11-25"


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def policy_with_timeout(timeout: str) -> dict[str, Any]:
    tools = dict(DEMO_POLICY["tools"])
    tools["ibkr_cancel_order"] = {
        **tools["ibkr_cancel_order"],
        "approval": {**tools["ibkr_cancel_order"]["approval"], "timeout": timeout},
    }
    return {**DEMO_POLICY, "tools": tools}


def forwarded_cancels(h: Harness) -> list[dict[str, Any]]:
    return [arguments for name, arguments in h.book.calls if name == "ibkr_cancel_order"]


async def status_of(h: Harness, request_id: str) -> str:
    status: str = (await h.api().get(f"/api/approvals/{request_id}")).json()["status"]
    return status


async def wait_for_status(h: Harness, request_id: str, status: str, *, within: float = 10.0) -> dict[str, Any]:
    async def reached() -> bool:
        return await status_of(h, request_id) == status

    await wait_for(reached, within=within, interval=0.05)
    body: dict[str, Any] = (await h.api().get(f"/api/approvals/{request_id}")).json()
    return body


# ---- (a) timeout


async def test_calls_nobody_decides_expire_on_time_and_agents_of_both_eras_are_told_they_did_not_run(
    tmp_path: Path, database_url: str
) -> None:
    async with (
        running_gateway(tmp_path, database_url, policy=policy_with_timeout("2s")) as h,
        h.agent(mode="legacy") as legacy,
        h.agent(mode="auto") as modern,
    ):
        results: dict[str, types.CallToolResult] = {}

        async def call(era: str, agent: Client, order_id: int) -> None:
            results[era] = await agent.call_tool("ibkr_cancel_order", {"orderId": order_id, "confirm": True})

        with anyio.fail_after(8):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "legacy", legacy, 1001)
                tg.start_soon(call, "auto", modern, 1005)

        for era, result in results.items():
            assert result.is_error, era
            assert text(result) == "[APPROVAL EXPIRED] Nobody decided within 2s; the call was not executed.", era
        expired = (await h.api().get("/api/approvals", params={"status": "expired"})).json()["approvals"]
        assert sorted(r["arguments"]["orderId"] for r in expired) == [1001, 1005]
        for request in expired:
            assert request["decided_by"] is None and request["ended_because"] == "timed_out"
            expires_at = datetime.fromisoformat(request["expires_at"])
            changed_at = datetime.fromisoformat(request["status_changed_at"])
            assert expires_at <= changed_at < expires_at + timedelta(seconds=1.5)
            late = await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
            assert late.status_code == 409
            assert late.json()["status"] == "expired"
        assert forwarded_cancels(h) == []
        assert h.book.cancel_calls == 0


# ---- (b) the agent cancels


async def test_an_explicit_cancel_withdraws_the_request_while_a_closed_2026_stream_only_detaches_it(
    tmp_path: Path, database_url: str
) -> None:
    async with (
        running_gateway(tmp_path, database_url) as h,
        h.agent(mode="legacy") as legacy,
        h.agent(mode="auto") as modern,
    ):
        # The legacy client sends notifications/cancelled; the 2026 client can only close the call's stream,
        # which looks the same as a dropped connection.
        agents = {1001: legacy, 1005: modern}
        scopes = {order_id: anyio.CancelScope() for order_id in agents}

        async def call(order_id: int) -> None:
            with scopes[order_id]:
                await agents[order_id].call_tool("ibkr_cancel_order", {"orderId": order_id, "confirm": True})

        async with anyio.create_task_group() as tg:
            for order_id in agents:
                tg.start_soon(call, order_id)
            requests = {r["arguments"]["orderId"]: r for r in await h.pending(2)}
            for scope in scopes.values():
                scope.cancel()

        withdrawn_id = requests[1001]["id"]
        withdrawn = await wait_for_status(h, withdrawn_id, "cancelled")
        assert withdrawn["ended_because"] == "withdrawn"
        assert withdrawn["agent_waiting"] is False
        assert [e["kind"] for e in withdrawn["events"]] == ["call.lookup", "request.created", "request.cancelled"]
        late = await h.api().post(f"/api/approvals/{withdrawn_id}/approve", json={})
        assert late.status_code == 409, late.text
        assert late.json()["status"] == "cancelled"

        detached_id = requests[1005]["id"]

        async def detached() -> bool:
            return (await h.api().get(f"/api/approvals/{detached_id}")).json()["agent_waiting"] is False

        await wait_for(detached, within=10, interval=0.05)
        body = (await h.api().get(f"/api/approvals/{detached_id}")).json()
        assert body["status"] == "pending"
        assert [e["kind"] for e in body["events"]] == ["call.lookup", "request.created", "request.detached"]
        # Still decidable; approved, it waits for its agent to come back instead of running for nobody.
        assert (await h.api().post(f"/api/approvals/{detached_id}/approve", json={})).status_code == 200
        assert await status_of(h, detached_id) == "approved"
        for agent in agents.values():
            # The sessions outlive the cancelled calls.
            assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error
        assert forwarded_cancels(h) == []
        assert h.book.cancel_calls == 0


# ---- (c) the agent's connection drops without a cancel


class RawLegacySession:
    """A 2025-era streamable HTTP session spoken by hand, so the test controls the TCP connection."""

    def __init__(self, base_url: str) -> None:
        self.url = f"{base_url}/mcp"
        self.headers = {
            "Authorization": f"Bearer {AGENT_TOKEN}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }

    async def open(self, http: httpx2.AsyncClient) -> None:
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": LEGACY_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "raw-test-client", "version": "0"},
            },
        }
        response = await http.post(self.url, headers=self.headers, json=initialize)
        assert response.status_code == 200, response.text
        assert f'"protocolVersion":"{LEGACY_VERSION}"' in response.text.replace(" ", "")
        self.headers["Mcp-Session-Id"] = response.headers["mcp-session-id"]
        self.headers["Mcp-Protocol-Version"] = LEGACY_VERSION
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        response = await http.post(self.url, headers=self.headers, json=initialized)
        assert response.status_code == 202, response.text

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": {"progressToken": "held-call"}},
        }


async def test_an_agent_whose_connection_drops_mid_wait_is_detached_and_nothing_runs_without_it(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url) as h, httpx2.AsyncClient(timeout=10) as http:
        session = RawLegacySession(h.base_url)
        await session.open(http)

        # Its own client, so closing it closes exactly the TCP connection the held POST is on.
        async with (
            httpx2.AsyncClient(timeout=10) as held,
            held.stream(
                "POST", session.url, headers=session.headers, json=session.call("ibkr_cancel_order", CANCEL_1001)
            ) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()
            with anyio.fail_after(10):
                async for line in lines:
                    if line.startswith("data:") and "Waiting for approval" in line:
                        break
            [request] = await h.pending()
            assert await status_of(h, request["id"]) == "pending"
            # Leaving the stream unread and closing the client drops the connection: no cancel is sent.

        async def detached() -> bool:
            return (await h.api().get(f"/api/approvals/{request['id']}")).json()["agent_waiting"] is False

        await wait_for(detached, within=10, interval=0.05)
        assert await status_of(h, request["id"]) == "pending", "a dropped connection does not withdraw the request"
        late = await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
        assert late.status_code == 200
        assert await status_of(h, request["id"]) == "approved"
        assert forwarded_cancels(h) == [], "approved, but nobody is waiting: it runs only when the agent is back"
        assert h.book.cancel_calls == 0
        # The 2025 session itself was never ended: only the one POST went away.
        ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
        assert (await http.post(session.url, headers=session.headers, json=ping)).status_code == 200


# ---- (d) a restart with pending requests


def restart_request(timeout_seconds: float, order: int = 1001) -> NewRequest:
    return held_cancel(timeout_seconds=timeout_seconds, arguments={"orderId": order, "confirm": True})


async def test_a_fresh_gateway_expires_overdue_requests_at_start_and_rearms_the_rest(
    tmp_path: Path, database_url: str
) -> None:
    db = Database(database_url)
    try:
        await db.create_schema()
        earlier = datetime.now(UTC) - timedelta(minutes=10)
        overdue = await ApprovalService(db, ApproverDirectory([]), clock=lambda: earlier).create(restart_request(60))
        waiting = await ApprovalService(db, ApproverDirectory([])).create(restart_request(2.5, order=1002))
    finally:
        await db.dispose()

    async with running_gateway(tmp_path, database_url) as h:
        assert await status_of(h, overdue.id) == "expired"
        assert await status_of(h, waiting.id) == "pending"
        assert h.gateway.timeouts.armed() == 1

        expired = await wait_for_status(h, waiting.id, "expired", within=8)
        changed_at = datetime.fromisoformat(expired["status_changed_at"])
        assert waiting.expires_at <= changed_at < waiting.expires_at + timedelta(seconds=1.5)
        assert expired["decided_by"] is None and expired["ended_because"] == "timed_out"
        assert h.gateway.timeouts.armed() == 0
        assert forwarded_cancels(h) == []


# ---- (e) the gateway process is killed and started again


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(tmp_path: Path, port: int) -> Path:
    (tmp_path / "policy.json").write_text(json.dumps(DEMO_POLICY))
    broker = ", ".join(json.dumps(part) for part in [sys.executable, "-m", "gateway.paper_broker"])
    config = tmp_path / "countersign.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
database_url = "sqlite:///{tmp_path / "countersign.db"}"
progress_interval = "1s"
poll_interval = "0.2s"

[policy]
file = "policy.json"

[[upstreams]]
name = "paper"
command = [{broker}]

[[agents]]
name = "alpha"
token = "{AGENT_TOKEN}"

[[approvers]]
name = "alice"
groups = ["traders"]
api_token = "{ALICE_TOKEN}"
"""
    )
    return config


@contextmanager
def gateway_process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = [str(Path(sys.executable).parent / "countersign"), "serve", "--config", str(config)]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # The paper broker is the gateway's child, in the group we started; leave nothing running.
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


async def wait_healthy(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    async with httpx2.AsyncClient(timeout=2) as http:
        with anyio.fail_after(20):
            while True:
                if process.poll() is not None:
                    pytest.fail(f"the gateway exited early:\n{await anyio.Path(log).read_text()}")
                with suppress(httpx2.TransportError):
                    response = await http.get(f"{base_url}/healthz")
                    if response.status_code == 200 and response.json()["status"] == "ok":
                        return
                await anyio.sleep(0.1)


@asynccontextmanager
async def approver_api(base_url: str) -> AsyncIterator[httpx2.AsyncClient]:
    headers = {"Authorization": f"Bearer {ALICE_TOKEN}"}
    async with httpx2.AsyncClient(base_url=base_url, headers=headers, timeout=10) as api:
        yield api


async def pending_ids(api: httpx2.AsyncClient) -> list[str]:
    body = (await api.get("/api/approvals", params={"status": "pending"})).json()
    return [r["id"] for r in body["approvals"]]


@pytest.mark.slow
async def test_a_pending_request_survives_kill_9_of_the_gateway_and_can_still_be_decided(tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, port)
    log = tmp_path / "gateway.log"

    with gateway_process(config, log) as first:
        await wait_healthy(base_url, first, log)
        async with (
            approver_api(base_url) as api,
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {AGENT_TOKEN}"}, timeout=30) as http,
            Client(streamable_http_client(f"{base_url}/mcp", http_client=http), mode="legacy") as agent,
        ):
            ended = anyio.Event()
            outcome: list[BaseException | types.CallToolResult] = []

            async def call() -> None:
                try:
                    outcome.append(await agent.call_tool("ibkr_cancel_order", CANCEL_1001))
                except Exception as exc:
                    outcome.append(exc)
                finally:
                    ended.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                ids: list[str] = []

                async def held() -> bool:
                    ids[:] = await pending_ids(api)
                    return bool(ids)

                await wait_for(held, within=15, interval=0.05)
                [request_id] = ids
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
                # The held call fails with the connection; a client that keeps retrying is cut off here.
                with anyio.move_on_after(5):
                    await ended.wait()
                tg.cancel_scope.cancel()
            assert not any(isinstance(o, types.CallToolResult) and not o.is_error for o in outcome)

    with gateway_process(config, log) as second:
        await wait_healthy(base_url, second, log)
        async with approver_api(base_url) as api:
            assert await pending_ids(api) == [request_id]
            shown = (await api.get(f"/api/approvals/{request_id}")).json()
            assert shown["status"] == "pending"
            assert shown["arguments"] == CANCEL_1001

            rejected = await api.post(f"/api/approvals/{request_id}/reject", json={"reason": "after the restart"})

            assert rejected.status_code == 200, rejected.text
            assert rejected.json()["approval"]["status"] == "rejected"
            assert await pending_ids(api) == []
            kinds = [e["kind"] for e in (await api.get(f"/api/approvals/{request_id}")).json()["events"]]
            assert kinds == ["call.lookup", "request.created", "request.rejected"]


# ---- (f) the database goes away


async def _admin(sql: str, *args: Any) -> Any:
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        return await admin.execute(sql, *args)
    finally:
        await admin.close()


@asynccontextmanager
async def database_unreachable(url: str) -> AsyncIterator[None]:
    """Rename the database away (after cutting its connections) so nothing can reach it; rename it back."""
    name = url.rsplit("/", 1)[1]
    away = f"{name}_away"
    # Refuse new connections first, so reconnecting pools and listeners cannot win the race below.
    await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    with anyio.fail_after(10):
        while True:
            await _admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
            try:
                await _admin(f'ALTER DATABASE "{name}" RENAME TO "{away}"')
                break
            except asyncpg.ObjectInUseError:
                # A pooled connection came back between the two statements; cut it again.
                await anyio.sleep(0.05)
    try:
        yield
    finally:
        await _admin(f'ALTER DATABASE "{away}" RENAME TO "{name}"')
        await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


@pytest.mark.postgres
async def test_with_the_database_down_critical_calls_fail_closed_while_reads_pass_where_configured(
    tmp_path: Path, postgres_url: str
) -> None:
    # By default every call is refused when it cannot be audited (tests/security/test_database_health.py);
    # allow_read_only lets the broker's read-only tools through.
    server = {"audit_unavailable": "allow_read_only"}
    async with running_gateway(tmp_path, postgres_url, server=server) as h, h.agent() as agent:
        assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error

        async with database_unreachable(postgres_url):
            with anyio.fail_after(10):
                held = await agent.call_tool("ibkr_cancel_order", CANCEL_1001)
            orders = await agent.call_tool("ibkr_get_open_orders", {})

        assert held.is_error
        assert text(held).startswith("[APPROVAL UNAVAILABLE]"), text(held)
        assert "not executed" in text(held)
        assert forwarded_cancels(h) == []
        assert h.book.cancel_calls == 0
        assert not orders.is_error, text(orders)
        assert "1001" in text(orders)


@pytest.mark.postgres
async def test_an_unreachable_database_is_reported_as_store_unavailable(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        await db.create_schema()
        async with database_unreachable(postgres_url):
            with pytest.raises(StoreUnavailable):
                await db.ping()
    finally:
        await db.dispose()


# ---- the agent going away while an approved call is starting or running


class BrokerGate:
    """Wraps the paper broker: holds `tools/call` requests for one tool until opened, and notes cancels."""

    def __init__(self, app: ASGIApp, tool: str, *, hold: bool) -> None:
        self.app = app
        self.tool = tool
        self.hold = hold
        self.arrived = anyio.Event()
        self.opened = anyio.Event()
        self.cancel_seen = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        buffered: list[Message] = []
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = json.loads(b"".join(m.get("body", b"") for m in buffered) or b"null")
        if isinstance(body, dict):
            if body.get("method") == "notifications/cancelled":
                self.cancel_seen.set()
            if self.hold and body.get("method") == "tools/call" and body["params"]["name"] == self.tool:
                self.arrived.set()
                await self.opened.wait()

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)


class DisconnectObserver:
    """Wraps the gateway's /mcp POSTs: `gone` once the server has told the app that a held tools/call
    went away (its `http.disconnect`, or the gateway's own flag for it set from the connection's end);
    `cancel_accepted` once a `notifications/cancelled` was accepted (answered 202)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gone = anyio.Event()
        self.cancel_accepted = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/mcp" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        kind = ""

        async def observed_receive() -> Message:
            nonlocal kind
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                kind = "call" if b'"tools/call"' in body else "cancel" if b'"notifications/cancelled"' in body else ""
            elif message["type"] == "http.disconnect" and kind == "call":
                # AgentAuth sets its own flag as soon as this returns, before any other task runs.
                self.gone.set()
            return message

        async def observed_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.start" and kind == "cancel":
                self.cancel_accepted.set()
            flag = scope.get(DISCONNECTED_KEY)
            if message["type"] == "http.response.start" and kind == "call" and isinstance(flag, Gone):
                # A held call on the gateway's own stream has its connection's end flagged by the connection
                # itself, with nobody reading `http.disconnect`: the flag is where the server tells the app.
                flag.on_set(self.gone.set)

        await self.app(scope, observed_receive, observed_send)


@asynccontextmanager
async def instrumented_gateway(
    tmp_path: Path, database_url: str, *, hold: bool
) -> AsyncIterator[tuple[Harness, BrokerGate, DisconnectObserver]]:
    """Like `running_gateway`, with the broker behind a BrokerGate and the gateway behind a DisconnectObserver."""
    book = PaperBook()
    policy_file = write_policy(tmp_path / "policy.json", DEMO_POLICY)
    gate = BrokerGate(build_http_app(book), "ibkr_cancel_order", hold=hold)
    async with serve_asgi(gate) as broker_url:
        data = base_config(database_url=database_url, policy_file=policy_file, upstream_url=f"{broker_url}/mcp")
        settings = parse_settings(data, source="<test>", base_dir=str(tmp_path), environ={})
        gateway = Gateway(settings)
        observer = DisconnectObserver(gateway.asgi())
        async with serve_asgi(observer) as base_url:
            assert await gateway.upstreams.wait_connected(15), gateway.upstreams.status()
            harness = Harness(base_url, gateway, book, settings, policy_file)
            try:
                yield harness, gate, observer
            finally:
                gate.opened.set()
                await harness.close()


async def test_an_approval_that_lands_as_the_agent_disconnects_is_never_forwarded(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with (
        instrumented_gateway(tmp_path, sqlite_url, hold=False) as (h, _, observer),
        httpx2.AsyncClient(timeout=10) as http,
    ):
        session = RawLegacySession(h.base_url)
        await session.open(http)
        # A second replica decides, so the decision reaches the held call by polling, as across processes.
        replica_db = Database(sqlite_url, audit_key=h.gateway.db.audit_key)  # replicas share the audit key
        replica = ApprovalService(replica_db, h.gateway.approvers)
        alice = h.gateway.approvers.get("alice")
        assert alice is not None

        # Holding the gateway's write lock parks the held call just as it tries to start executing. The audit
        # search indexer takes that lock too: it stops first, so the one task left waiting is the held call's.
        async def no_indexing() -> int:
            return 0

        h.gateway.audit_index.catch_up = no_indexing  # type: ignore[method-assign]
        write_lock = h.gateway.db._write_lock
        held = httpx2.AsyncClient(timeout=10)
        try:
            call = held.build_request(
                "POST", session.url, headers=session.headers, json=session.call("ibkr_cancel_order", CANCEL_1001)
            )
            response = await held.send(call, stream=True)
            assert response.status_code == 200
            [request] = await h.pending()
            async with write_lock:
                await replica.approve(request["id"], alice, "api")
                await wait_for(lambda: write_lock.statistics().tasks_waiting == 1)
                await response.aclose()
                await held.aclose()
                with anyio.fail_after(10):
                    await observer.gone.wait()
        finally:
            await held.aclose()
            await replica_db.dispose()

        async def abandoned() -> bool:
            body = (await h.api().get(f"/api/approvals/{request['id']}")).json()
            return "request.start_abandoned" in [e["kind"] for e in body["events"]]

        await wait_for(abandoned, within=10, interval=0.05)
        assert forwarded_cancels(h) == [], "the approved call was forwarded for an agent that had gone"
        assert h.book.cancel_calls == 0
        final = (await h.api().get(f"/api/approvals/{request['id']}")).json()
        # `executing` was already recorded when the agent's absence was noticed: the start is abandoned and
        # the approval stands, waiting for the agent to come back within its pick-up window.
        assert final["status"] == "approved"
        assert final["agent_waiting"] is False


async def test_an_agent_cancelling_as_its_approved_call_starts_lapses_the_approval_and_nothing_is_forwarded(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with instrumented_gateway(tmp_path, sqlite_url, hold=False) as (h, _, _), h.agent() as agent:
        # A slow start of execution (a busy database), which the test can see entered and cancelled.
        service = h.gateway.service
        real_begin = service.begin_execution
        entered, cancelled = anyio.Event(), anyio.Event()

        async def slow_begin(request_id: str, arguments_sha256: str, **owner_and_lease: Any) -> RequestView:
            entered.set()
            try:
                await anyio.Event().wait()
            except anyio.get_cancelled_exc_class():
                cancelled.set()
                raise
            return await real_begin(request_id, arguments_sha256, **owner_and_lease)

        service.begin_execution = slow_begin  # type: ignore[method-assign]
        # The start on its own, as after a decision made by another replica (not recorded with the approval).
        h.gateway.held.start_with_approval = False
        call_scope = anyio.CancelScope()

        async def call() -> None:
            with call_scope:
                await agent.call_tool("ibkr_cancel_order", CANCEL_1001)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await h.pending()
            assert (await h.api().post(f"/api/approvals/{request['id']}/approve", json={})).status_code == 200
            with anyio.fail_after(10):
                await entered.wait()
            call_scope.cancel()
            with anyio.fail_after(10):
                await cancelled.wait()

        lapsed = await wait_for_status(h, request["id"], "cancelled")
        assert lapsed["decided_by"] == "alice", "who approved stays on record"
        assert [e["kind"] for e in lapsed["events"]] == [
            "call.lookup",
            "request.created",
            "request.approved",
            "request.cancelled",
        ]
        assert forwarded_cancels(h) == []
        assert h.book.cancel_calls == 0


@pytest.mark.parametrize("mode", ERAS)
async def test_an_agent_cancelling_while_its_approved_call_runs_still_gets_the_outcome_recorded(
    tmp_path: Path, sqlite_url: str, mode: str
) -> None:
    async with (
        instrumented_gateway(tmp_path, sqlite_url, hold=True) as (h, gate, observer),
        h.agent(mode=mode) as agent,
    ):
        call_scope = anyio.CancelScope()

        async def call() -> None:
            with call_scope:
                await agent.call_tool("ibkr_cancel_order", CANCEL_1001)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await h.pending()
            assert (await h.api().post(f"/api/approvals/{request['id']}/approve", json={})).status_code == 200
            with anyio.fail_after(10):
                await gate.arrived.wait()
            call_scope.cancel()
        # The legacy client withdraws with notifications/cancelled; the 2026 client closes its stream.
        with anyio.fail_after(10):
            await (observer.cancel_accepted if mode == "legacy" else observer.gone).wait()
        gate.opened.set()

        async def settled() -> bool:
            return await status_of(h, request["id"]) not in ("approved", "executing")

        await wait_for(settled, within=8, interval=0.05)
        final = (await h.api().get(f"/api/approvals/{request['id']}")).json()
        assert final["status"] == "executed", final
        assert final["result"]["structuredContent"]["orderId"] == 1001
        assert forwarded_cancels(h) == [CANCEL_1001]
        assert h.book.cancel_calls == 1
