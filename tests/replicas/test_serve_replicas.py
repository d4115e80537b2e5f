"""Real `countersign serve` replicas on one PostgreSQL database: what one does, the others carry on.

Each test starts three replicas as separate processes (same configuration, own ports) in front
of the paper broker, and kills one with SIGKILL where a replica dying is the point. Deadlines
are read back from the audit log, whose times the replicas wrote.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from sqlalchemy import select

from approvals.audit import as_utc
from approvals.db import Database
from approvals.models import ApprovalRequest, AuditEvent
from gateway.demo import DEMO_POLICY
from gateway.paper_book import PaperBook
from gateway.paper_broker import build_http_app
from tests.audit_key import SHARED_AUDIT_KEY
from tests.harness import AGENT_TOKEN, ALICE_TOKEN, agent_client, serve_asgi, wait_for
from tests.processes import Served, serving
from tests.web.support import PASSWORDS, SESSION_SECRET, approvers, browser_client, csrf_of, sign_in

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.filterwarnings("ignore::ResourceWarning")]

CANCEL = {"orderId": 1001, "confirm": True}
# A timer may fire this late after its deadline, on whichever replica is left.
ON_TIME = 2.0


def policy(**approval: Any) -> dict[str, Any]:
    document = json.loads(json.dumps(DEMO_POLICY))
    document["tools"]["ibkr_cancel_order"]["approval"].update(approval)
    return document


@asynccontextmanager
async def replicas(
    tmp_path: Path, postgres_url: str, document: dict[str, Any], count: int = 3, **server: Any
) -> AsyncIterator[list[Served]]:
    (tmp_path / "policy.json").write_text(json.dumps(document))
    async with serve_asgi(build_http_app(PaperBook())) as broker_url:
        config = {
            "server": {"database_url": postgres_url, "progress_interval": "1s", **server},
            "policy": {"file": str(tmp_path / "policy.json")},
            "upstreams": [{"name": "paper", "url": f"{broker_url}/mcp", "connect_timeout": "10s"}],
            "agents": [{"name": "alpha", "token": AGENT_TOKEN}],
            "approvers": approvers(),
            "web": {"session_secret": SESSION_SECRET, "failed_signin_delay": 0},
            "audit": {"key": SHARED_AUDIT_KEY},
        }
        with ExitStack() as stack:
            started = [stack.enter_context(serving(tmp_path, f"replica-{n}", config)) for n in range(count)]
            for replica in started:
                await replica.wait_until("/readyz")
            yield started


@asynccontextmanager
async def database(url: str) -> AsyncIterator[Database]:
    db = Database(url)
    try:
        yield db
    finally:
        await db.dispose()


async def first_pending(api: httpx2.AsyncClient) -> str:
    found: list[str] = []

    async def pending() -> bool:
        body = (await api.get("/api/approvals", params={"status": "pending"})).json()
        found.extend(r["id"] for r in body["approvals"])
        return bool(found)

    await wait_for(pending, within=20)
    return found[0]


async def held_on(replica: Served, api: httpx2.AsyncClient, tg: anyio.abc.TaskGroup) -> str:
    """An agent's cancel held on `replica`; its id. The agent is left waiting (it dies with the replica)."""

    async def agent() -> None:
        # The replica holding the call is killed: the agent's connection breaks, which is the point.
        with suppress(Exception):
            async with agent_client(replica.url) as client:
                await client.call_tool("ibkr_cancel_order", CANCEL)

    tg.start_soon(agent)
    return await first_pending(api)


async def expiry_of(db: Database, request_id: str) -> tuple[dict[str, Any], list[datetime]]:
    """The request's row, and the times of its `request.expired` events."""
    events, requests = AuditEvent.__table__, ApprovalRequest.__table__  # type: ignore[attr-defined]
    async with db.read() as conn:
        row = (await conn.execute(select(requests).where(requests.c.id == request_id))).mappings().one()
        expired = (
            await conn.execute(
                select(events.c.at).where(events.c.request_id == request_id, events.c.kind == "request.expired")
            )
        ).scalars()
        return dict(row), [as_utc(at) for at in expired]


async def test_a_request_held_on_a_killed_replica_expires_once_within_two_seconds_of_its_deadline(
    tmp_path: Path, postgres_url: str
) -> None:
    async with (
        replicas(tmp_path, postgres_url, policy(timeout="4s")) as (a, b, _c),
        database(postgres_url) as db,
        httpx2.AsyncClient(base_url=b.url, headers={"Authorization": f"Bearer {ALICE_TOKEN}"}) as api,
        anyio.create_task_group() as tg,
    ):
        request_id = await held_on(a, api, tg)
        a.kill()  # the replica that armed the timer (and holds the agent) is gone; B and C both armed it too

        async def ended() -> bool:
            return (await expiry_of(db, request_id))[0]["status"] == "expired"

        await wait_for(ended, within=15)
        await anyio.sleep(0.5)  # a second expiry, had the compare-and-set let one through, would be written by now
        row, expired = await expiry_of(db, request_id)
        assert row["ended_because"] == "timed_out"
        assert len(expired) == 1, "two live replicas armed the timer; exactly one expired the request"
        late = (expired[0] - as_utc(row["expires_at"])).total_seconds()
        assert 0 <= late <= ON_TIME, f"expired {late:.2f}s after its deadline"
        print(f"expired {late * 1000:.0f} ms after its deadline, by a surviving replica")
        tg.cancel_scope.cancel()
    assert "request.expired" not in a.log_text()


async def test_an_approval_nobody_picks_up_after_its_replica_was_killed_expires_once_on_time(
    tmp_path: Path, postgres_url: str
) -> None:
    async with (
        replicas(tmp_path, postgres_url, policy(timeout="5m", pickup_window="3s")) as (a, b, _c),
        database(postgres_url) as db,
        httpx2.AsyncClient(base_url=b.url, headers={"Authorization": f"Bearer {ALICE_TOKEN}"}) as api,
        anyio.create_task_group() as tg,
    ):
        request_id = await held_on(a, api, tg)
        a.kill()
        approved = await api.post(f"/api/approvals/{request_id}/approve", json={})
        assert approved.status_code == 200, approved.text

        async def ended() -> bool:
            return (await expiry_of(db, request_id))[0]["status"] == "expired"

        await wait_for(ended, within=15)
        await anyio.sleep(0.5)
        row, expired = await expiry_of(db, request_id)
        assert row["ended_because"] == "not_picked_up"
        assert len(expired) == 1
        # The pick-up window runs from the approval (the expiry has since overwritten status_changed_at).
        async with db.read() as conn:
            events = AuditEvent.__table__  # type: ignore[attr-defined]
            [approved_at] = (
                await conn.execute(
                    select(events.c.at).where(events.c.request_id == request_id, events.c.kind == "request.approved")
                )
            ).scalars()
        late = (expired[0] - as_utc(approved_at)).total_seconds() - 3.0
        assert 0 <= late <= ON_TIME, f"expired {late:.2f}s after its pick-up window closed"
        print(f"expired {late * 1000:.0f} ms after its pick-up window closed, by a surviving replica")
        tg.cancel_scope.cancel()


async def test_signing_out_on_one_replica_process_ends_the_session_on_the_others(
    tmp_path: Path, postgres_url: str
) -> None:
    async with replicas(tmp_path, postgres_url, policy()) as (a, b, c), browser_client(a.url) as browser:
        await sign_in(browser, "alice")
        for replica in (b, c):
            assert (await browser.get(f"{replica.url}/inbox")).status_code == 200
        cookie = browser.cookies["countersign_session"]
        page = await browser.get(f"{b.url}/inbox")
        assert (await browser.post(f"{b.url}/signout", data={"csrf_token": csrf_of(page.text)})).status_code == 303
        for replica in (a, c):
            async with browser_client(replica.url) as replay:
                replay.cookies.set("countersign_session", cookie)
                assert (await replay.get("/inbox")).status_code == 303, "signed out everywhere at once"
        assert PASSWORDS["alice"] not in a.log_text()


async def test_a_decision_on_one_replica_reaches_the_agent_held_on_another_without_waiting_for_a_poll(
    tmp_path: Path, postgres_url: str
) -> None:
    # The replicas read the database on their own only every 30 s: anything faster came by notification.
    async with (
        replicas(tmp_path, postgres_url, policy(), count=2, poll_interval="30s") as (a, b),
        httpx2.AsyncClient(base_url=b.url, headers={"Authorization": f"Bearer {ALICE_TOKEN}"}) as api,
        agent_client(a.url) as agent,
    ):
        latencies = []
        # The working order is cancelled (approved); the next two are turned down, which ends a hold just the same.
        for order_id, verdict in ((1001, "approve"), (1003, "reject"), (1004, "reject")):
            box: dict[str, Any] = {}
            async with anyio.create_task_group() as tg:

                async def call(order: int = order_id, out: dict[str, Any] = box) -> None:
                    out["result"] = await agent.call_tool("ibkr_cancel_order", {"orderId": order, "confirm": True})
                    out["at"] = anyio.current_time()

                tg.start_soon(call)
                request_id = await first_pending(api)
                sent = anyio.current_time()
                decided = await api.post(f"/api/approvals/{request_id}/{verdict}", json={"reason": "bench"})
                assert decided.status_code == 200, decided.text
            result = box["result"]
            if verdict == "approve":
                assert not result.is_error and result.structured_content["orderId"] == 1001, result
            else:
                assert result.content[0].text.startswith("[APPROVAL REJECTED]"), result
            latencies.append(box["at"] - sent)
        print("decision on B -> result on A:", ", ".join(f"{s * 1000:.0f} ms" for s in latencies))
        assert max(latencies) < 3.0, latencies
