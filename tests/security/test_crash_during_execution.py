"""A gateway killed while executing: the request ends "outcome unknown", and the call never runs again.

Finding of the adversarial review (issue 9): `kill -9` of `countersign serve` while the upstream
was running an approved call left the request `executing` for good, the agent's
`countersign_approval_wait` never returned, and repeating the call made a new request whose
approval would run it a second time. These tests kill real `countersign serve` processes and read
the upstream's ledger (one fsync'd line per execution) for what actually ran.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from approvals.db import Database
from approvals.history import AuditHistory
from gateway import faults
from tests.harness import agent_client, wait_for
from tests.ledger import (
    TOOL,
    GatewayProcess,
    api_requests,
    audit_verify,
    decide,
    gateway_process,
    ledger_upstream,
    text,
)

pytestmark = pytest.mark.slow


async def held_call_in_background(url: str, op: str, tg: Any) -> dict[str, Any]:
    """An agent makes the call in a task of its own (it may die with the gateway); returns its request."""
    box: dict[str, Any] = {}

    async def call() -> None:
        with suppress(Exception):
            async with agent_client(url) as agent:
                box["result"] = await agent.call_tool(TOOL, {"op": op})

    tg.start_soon(call)
    with anyio.fail_after(20):
        while True:
            found = [r for r in await api_requests(url) if r["arguments"] == {"op": op}]
            if found:
                return found[0]
            await anyio.sleep(0.05)


async def status_of(url: str, request_id: str) -> str:
    [found] = [r for r in await api_requests(url) if r["id"] == request_id]
    return str(found["status"])


async def settles(url: str, request_id: str, status: str, within: float = 20.0) -> None:
    async def there() -> bool:
        return await status_of(url, request_id) == status

    await wait_for(there, within=within, interval=0.1)


async def approve_through_a_dying_gateway(url: str, request_id: str) -> None:
    # The gateway may kill itself before it answers: the decision is committed before it acts on it.
    with suppress(Exception):
        await decide(url, request_id, "approve")


async def test_a_gateway_killed_while_the_upstream_executes_ends_the_request_outcome_unknown(
    tmp_path: Path, database_url: str
) -> None:
    async with (
        ledger_upstream(tmp_path / "ledger.jsonl") as (upstream, upstream_url),
        gateway_process(tmp_path / "gw", database_url=database_url, upstream_url=upstream_url) as gateway,
        anyio.create_task_group() as tg,
    ):
        upstream.hold()
        request = await held_call_in_background(gateway.url, "cancel-1001", tg)
        assert (await decide(gateway.url, request["id"], "approve")).status_code == 200
        with anyio.fail_after(15):
            await upstream.entered.wait()
        await gateway.kill9()
        upstream.release()

        await gateway.start()
        async with agent_client(gateway.url) as agent:
            # Whatever state it is in now, the wait answers within its timeout.
            started = anyio.current_time()
            with anyio.fail_after(15):
                waited = await agent.call_tool(
                    "countersign_approval_wait", {"approval_id": request["id"], "timeout_seconds": 3}
                )
            assert anyio.current_time() - started < 8, text(waited)

            await settles(gateway.url, request["id"], "outcome_unknown")
            answer = await agent.call_tool("countersign_approval_wait", {"approval_id": request["id"]})
            assert answer.is_error
            assert text(answer).startswith("[OUTCOME UNKNOWN] Approved by alice, but the gateway stopped"), text(answer)
            assert "Check before trying it again" in text(answer)

            repeated = await agent.call_tool(TOOL, {"op": "cancel-1001"})
            assert text(repeated).startswith("[OUTCOME UNKNOWN]"), text(repeated)
            assert repeated.structured_content == {"status": "outcome_unknown", "approval_id": request["id"]}
        # The approvers read the same story, and there is still only the one request.
        [shown] = await api_requests(gateway.url)
        assert shown["summary"] == text(answer).removeprefix("[OUTCOME UNKNOWN] ")
        tg.cancel_scope.cancel()
    assert upstream.executions() == {"cancel-1001": 1}
    kinds = [e.kind for e in await events_of(database_url, request["id"])]
    assert kinds.count("request.executing") == 1 and kinds.count("request.outcome_unknown") == 1, kinds
    assert kinds.index("request.outcome_unknown") < kinds.index("call.repeated"), kinds
    code, printed = await audit_verify(database_url)
    assert code == 0 and "intact" in printed, printed


@pytest.mark.parametrize(
    ("point", "status", "ran"),
    [
        ("before_begin", "approved", 0),
        ("after_begin", "outcome_unknown", 0),
        ("after_forward", "outcome_unknown", 1),
        ("after_finish", "executed", 1),
    ],
)
async def test_a_gateway_killed_at_each_step_of_an_execution_runs_the_call_at_most_once(
    tmp_path: Path, sqlite_url: str, point: str, status: str, ran: int
) -> None:
    assert point in faults.POINTS
    op = f"op-{point}"
    async with ledger_upstream(tmp_path / "ledger.jsonl") as (upstream, upstream_url):
        env = {faults.ENVIRONMENT: point}
        async with (
            gateway_process(tmp_path / "gw", database_url=sqlite_url, upstream_url=upstream_url, env=env) as gateway,
            anyio.create_task_group() as tg,
        ):
            request = await held_call_in_background(gateway.url, op, tg)
            await approve_through_a_dying_gateway(gateway.url, request["id"])
            assert await gateway.wait_dead() == -9, "the gateway was to kill itself at " + point
            tg.cancel_scope.cancel()
        assert upstream.executions()[op] == ran

        await restart(gateway)
        try:
            await settles(gateway.url, request["id"], status)
            async with agent_client(gateway.url) as agent:
                result = await agent.call_tool(TOOL, {"op": op})
                await check_repeat(agent, result, status, op)
            assert len(await api_requests(gateway.url)) == 1, "repeating the call never made a second request"
            assert not await api_requests(gateway.url, status="executing")
        finally:
            gateway.stop()
    # Approved but never begun: the repeat picked it up and ran it, once. Otherwise nothing ran again.
    assert upstream.executions()[op] == (1 if point == "before_begin" else ran)
    code, printed = await audit_verify(sqlite_url)
    assert code == 0 and "intact" in printed, printed


async def events_of(database_url: str, request_id: str) -> list[Any]:
    db = Database(database_url)
    try:
        return list(await AuditHistory(db).events(request_id=request_id))
    finally:
        await db.dispose()


async def restart(gateway: GatewayProcess) -> None:
    gateway.env = {}
    await gateway.start()


async def check_repeat(agent: Client, result: Any, status: str, op: str) -> None:
    if status == "outcome_unknown":
        assert text(result).startswith("[OUTCOME UNKNOWN]"), text(result)
    else:
        # approved: the repeat re-attaches and runs it; executed: the repeat gets the stored result.
        assert text(result) == f"done {op}", text(result)
        again = await agent.call_tool(TOOL, {"op": op})
        assert text(again) == f"done {op}", text(again)
