"""Chaos: two `countersign serve` replicas on one PostgreSQL database, randomised held calls, repeated kill -9.

Every operation is a held call with an id of its own; an upstream records each execution in a
ledger (fsync'd before it answers). Meanwhile replicas are killed with SIGKILL and started
again. At the end the ledger and the database must agree that nothing ran twice, nothing a
human rejected ran, no request is left `executing`, no agent is left without an answer, and the
audit chain verifies.

The quick version (60 operations, one kill) runs with the other tests. The full one is marked
`chaos` and left out of the default run (pyproject's addopts); run it with `scripts/chaos`.
Settings: COUNTERSIGN_CHAOS_OPS (default 1000), COUNTERSIGN_CHAOS_KILLS (4),
COUNTERSIGN_CHAOS_CONCURRENCY (16), COUNTERSIGN_CHAOS_SEED (random; printed, to replay a run).
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from sqlalchemy import select

from approvals.db import Database
from approvals.models import ApprovalRequest
from tests.chaos.stories import Story, Tally, milestones, pick_plot
from tests.ledger import GatewayProcess, audit_verify, gateway_process, held_policy, ledger_upstream

pytestmark = pytest.mark.slow

_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Plan:
    operations: int
    kills: int
    concurrency: int
    seed: int

    @classmethod
    def from_environment(cls, operations: int, kills: int) -> Plan:
        env = os.environ
        return cls(
            operations=int(env.get("COUNTERSIGN_CHAOS_OPS", operations)),
            kills=int(env.get("COUNTERSIGN_CHAOS_KILLS", kills)),
            concurrency=int(env.get("COUNTERSIGN_CHAOS_CONCURRENCY", 16)),
            seed=int(env.get("COUNTERSIGN_CHAOS_SEED", random.randrange(1 << 30))),
        )


@dataclass
class Report:
    plan: Plan
    seconds: float
    actions: int
    kills: int
    requests: int
    statuses: Counter[str]
    executions: int
    double_executions: int
    left_executing: int
    left_waiting: int
    rejected_but_ran: int
    told_not_run_but_ran: int
    executed_but_not_in_ledger: int
    outsider_accepted: int
    outcome_unknown_ran: int
    audit: str

    def lines(self) -> list[str]:
        p = self.plan
        return [
            f"chaos: {p.operations} operations ({self.actions} agent and approver actions), {self.kills} kill -9s, "
            f"concurrency {p.concurrency}, seed {p.seed}, {self.seconds:.0f}s",
            f"requests: {self.requests} ({', '.join(f'{k} {v}' for k, v in sorted(self.statuses.items()))})",
            f"executions in the ledger: {self.executions}",
            f"double executions: {self.double_executions}",
            f"requests left executing: {self.left_executing}",
            f"agents left waiting: {self.left_waiting}",
            f"executions of operations a human rejected: {self.rejected_but_ran}",
            f"agents told rejected/expired/cancelled for an operation that ran: {self.told_not_run_but_ran}",
            f"requests executed without a ledger entry: {self.executed_but_not_in_ledger}",
            f"outsider approvals accepted: {self.outsider_accepted}",
            f"outcome unknown that had in fact run: {self.outcome_unknown_ran} of {self.statuses['outcome_unknown']}",
            f"audit verify: {self.audit}",
        ]

    def assert_exactly_once(self) -> None:
        assert self.kills == self.plan.kills
        assert self.double_executions == 0
        assert self.left_executing == 0
        assert self.left_waiting == 0
        assert self.rejected_but_ran == 0
        assert self.told_not_run_but_ran == 0
        assert self.executed_but_not_in_ledger == 0
        assert self.outsider_accepted == 0
        assert self.audit.startswith("audit chain intact"), self.audit


async def test_exactly_once_under_chaos_quick(tmp_path: Path, postgres_url: str) -> None:
    """A small run with the other tests, so the chaos test itself keeps working."""
    seed = int(os.environ.get("COUNTERSIGN_CHAOS_SEED", random.randrange(1 << 30)))
    report = await chaos(tmp_path, postgres_url, Plan(operations=60, kills=1, concurrency=12, seed=seed))
    print("\n".join(report.lines()))
    report.assert_exactly_once()


@pytest.mark.chaos
async def test_exactly_once_under_chaos(tmp_path: Path, postgres_url: str) -> None:
    report = await chaos(tmp_path, postgres_url, Plan.from_environment(operations=1000, kills=4))
    print("\n".join(report.lines()))
    report.assert_exactly_once()


async def chaos(tmp_path: Path, database_url: str, plan: Plan) -> Report:
    rng = random.Random(plan.seed)
    tally = Tally()
    policy = held_policy(timeout="8s", pickup="6s", max_hold="2s")
    started_at = anyio.current_time()
    async with AsyncExitStack() as stack:
        upstream, upstream_url = await stack.enter_async_context(ledger_upstream(tmp_path / "ledger.jsonl"))
        replicas = [
            await stack.enter_async_context(
                gateway_process(
                    tmp_path / f"replica-{n}",
                    database_url=database_url,
                    upstream_url=upstream_url,
                    policy=policy,
                    repeat_window="1h",
                )
            )
            for n in range(2)
        ]
        kills = await run_stories(plan, rng, replicas, tally)
        await settle(database_url)
    seconds = anyio.current_time() - started_at
    return await report(plan, tally, kills, seconds, database_url, upstream.executions())


async def run_stories(plan: Plan, rng: random.Random, replicas: list[GatewayProcess], tally: Tally) -> int:
    limiter = anyio.CapacityLimiter(plan.concurrency)
    started = 0
    kills = 0
    at = milestones(plan.operations, plan.kills)

    async def one(story: Story) -> None:
        async with limiter:
            await story.run()

    async with anyio.create_task_group() as tg:
        for n in range(plan.operations):
            await limiter.acquire()  # start a story only when there is room, so kills land mid-run
            limiter.release()
            story = Story(f"op-{plan.seed}-{n}", pick_plot(rng), replicas, tally, rng, give_up_after=120.0)
            tg.start_soon(one, story)
            started += 1
            while at and started >= at[0]:
                at.pop(0)
                await anyio.sleep(rng.uniform(0.5, 2.0))  # let executions get under way
                victim = rng.choice(replicas)
                await victim.kill9()
                kills += 1
                await anyio.sleep(rng.uniform(0.2, 1.5))
                await victim.start()
    return kills


async def settle(database_url: str, within: float = 90.0) -> None:
    """Wait until no request is open: pending and approved ones expire, lapsed executions end."""
    db = Database(database_url)
    try:
        with anyio.fail_after(within):
            while True:
                async with db.read() as conn:
                    open_now = (
                        await conn.execute(
                            select(_requests.c.id).where(_requests.c.status.in_(["pending", "approved", "executing"]))
                        )
                    ).all()
                if not open_now:
                    return
                await anyio.sleep(0.5)
    finally:
        await db.dispose()


async def report(
    plan: Plan, tally: Tally, kills: int, seconds: float, database_url: str, ledger: Counter[str]
) -> Report:
    db = Database(database_url)
    try:
        async with db.read() as conn:
            rows = (await conn.execute(select(_requests))).mappings().all()
    finally:
        await db.dispose()
    statuses: Counter[str] = Counter(row["status"] for row in rows)
    by_op: dict[str, list[str]] = {}
    for row in rows:
        by_op.setdefault(json.loads(row["arguments"])["op"], []).append(row["status"])
    _, printed = await audit_verify(database_url)
    return Report(
        plan=plan,
        seconds=seconds,
        actions=tally.actions,
        kills=kills,
        requests=len(rows),
        statuses=statuses,
        executions=sum(ledger.values()),
        double_executions=sum(1 for count in ledger.values() if count > 1),
        left_executing=statuses["executing"],
        left_waiting=len(tally.left_waiting),
        rejected_but_ran=sum(1 for op, seen in by_op.items() if "rejected" in seen and ledger[op] > 0),
        told_not_run_but_ran=sum(
            1 for op, told in tally.answers.items() if told in ("rejected", "expired", "cancelled") and ledger[op] > 0
        ),
        executed_but_not_in_ledger=sum(1 for op, seen in by_op.items() if "executed" in seen and ledger[op] == 0),
        outsider_accepted=tally.outsider_accepted,
        outcome_unknown_ran=sum(1 for op, seen in by_op.items() if "outcome_unknown" in seen and ledger[op] > 0),
        audit=printed.strip().splitlines()[0] if printed.strip() else "(nothing printed)",
    )
