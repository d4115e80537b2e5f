"""One held call's story in the chaos test: an agent that makes it and keeps after it, approvers who act on it.

Each story is one operation with an id of its own (its `op` argument), so the upstream's ledger
says how often that operation really ran. The agent makes the call on either replica and, until
it has an answer, comes back for it: by repeating the identical call or through
`countersign_approval_wait`, after client time-outs, cancels, and replicas killed under it. The
approvers approve, approve twice across replicas, race an approval against a rejection, reject,
or let it time out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import anyio
import mcp_types as types

from tests.harness import ALICE_TOKEN, BOB_TOKEN, CAROL_TOKEN, agent_client
from tests.ledger import TOOL, GatewayProcess, decide, text

WAIT = "countersign_approval_wait"

# What the approvers do, and how often.
PLOTS: dict[str, int] = {
    "approve": 28,
    "double_approve": 14,
    "approve_reject_race": 14,
    "reject": 10,
    "time_out": 8,
    "agent_cancels": 8,
    "agent_walks_away": 6,
    "outsider_then_approve": 6,
    "late_approve": 6,
}

# How a final answer starts, and what it says became of the call.
FINAL_TAGS = {
    "[APPROVAL REJECTED]": "rejected",
    "[APPROVAL EXPIRED]": "expired",
    "[APPROVAL CANCELLED]": "cancelled",
    "[OUTCOME UNKNOWN]": "outcome_unknown",
    "[UPSTREAM ERROR]": "failed",
    "[UPSTREAM TIMEOUT]": "failed",
}


@dataclass
class Tally:
    """What the stories saw, for the report."""

    actions: int = 0
    agent_errors: int = 0
    outsider_accepted: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)  # op -> what its agent was finally told
    left_waiting: list[str] = field(default_factory=list)

    def count(self, what: str) -> None:
        self.decisions[what] = self.decisions.get(what, 0) + 1


@dataclass
class Story:
    op: str
    plot: str
    replicas: list[GatewayProcess]
    tally: Tally
    rng: random.Random
    give_up_after: float
    request_id: str | None = None
    known: anyio.Event = field(default_factory=anyio.Event)

    def replica(self) -> GatewayProcess:
        up = [r for r in self.replicas if r.process is not None and r.process.poll() is None]
        return self.rng.choice(up or self.replicas)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._approvers)
            await self._agent()
            if self.request_id is None:  # the agent never learnt of a request (it cancelled at once): nothing to decide
                tg.cancel_scope.cancel()

    # ---- the agent

    async def _agent(self) -> None:
        work = round(self.rng.uniform(0.0, 1.5), 2)
        deadline = anyio.current_time() + self.give_up_after
        first = True
        while anyio.current_time() < deadline:
            if first and self.plot == "agent_cancels":
                await self._call(work, cancel_after=self.rng.uniform(0.3, 1.0))
                self.tally.answers[self.op] = "walked_away"
                return
            if not first and self.plot == "agent_walks_away":
                self.tally.answers[self.op] = "walked_away"
                return
            by_wait = self.request_id is not None and self.rng.random() < 0.5
            answer = await self._call(work, by_wait=by_wait, client_gives_up=self.rng.random() < 0.1)
            first = False
            if answer is not None:
                self.tally.answers[self.op] = answer
                return
            await anyio.sleep(self.rng.uniform(0.05, 0.6))
        self.tally.left_waiting.append(self.op)

    async def _call(
        self, work: float, *, by_wait: bool = False, client_gives_up: bool = False, cancel_after: float | None = None
    ) -> str | None:
        """One attempt; the final answer, or None when the agent must come back for it."""
        self.tally.actions += 1
        read_timeout = self.rng.uniform(0.5, 2.0) if client_gives_up else 30.0
        try:
            async with agent_client(self.replica().url, read_timeout=read_timeout) as agent:
                if cancel_after is not None:
                    with anyio.move_on_after(cancel_after):
                        await agent.call_tool(TOOL, {"op": self.op, "work": work})
                    return None
                with anyio.fail_after(40):
                    if by_wait:
                        timeout = round(self.rng.uniform(0.5, 3.0), 1)
                        result = await agent.call_tool(
                            WAIT, {"approval_id": self.request_id, "timeout_seconds": timeout}
                        )
                    else:
                        result = await agent.call_tool(TOOL, {"op": self.op, "work": work})
        except Exception:
            # The replica died under the call, the client gave up, or the call could not be made: come back.
            self.tally.agent_errors += 1
            return None
        return self._read(result)

    def _read(self, result: types.CallToolResult) -> str | None:
        said = text(result)
        structured = result.structured_content or {}
        if isinstance(structured.get("approval_id"), str):
            self.request_id = structured["approval_id"]
            self.known.set()
        if said == f"done {self.op}":
            return "executed"
        for tag, outcome in FINAL_TAGS.items():
            if said.startswith(tag):
                return outcome
        # Pending, detached, upstream or approval queue unavailable for a moment, a gateway error: come back.
        return None

    # ---- the approvers

    async def _approvers(self) -> None:
        request_id = await self._request_id()
        if request_id is None:
            return
        await anyio.sleep(self.rng.uniform(0.0, 2.5))
        plot = self.plot
        if plot in ("approve", "agent_cancels", "agent_walks_away"):
            await self._decide(request_id, "approve", ALICE_TOKEN)
        elif plot == "late_approve":
            await anyio.sleep(self.rng.uniform(2.0, 5.0))
            await self._decide(request_id, "approve", BOB_TOKEN)
        elif plot == "double_approve":
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._decide, request_id, "approve", ALICE_TOKEN, 0)
                tg.start_soon(self._decide, request_id, "approve", BOB_TOKEN, 1)
        elif plot == "approve_reject_race":
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._decide, request_id, "approve", ALICE_TOKEN, 0)
                tg.start_soon(self._decide, request_id, "reject", BOB_TOKEN, 1)
        elif plot == "reject":
            await self._decide(request_id, "reject", self.rng.choice([ALICE_TOKEN, BOB_TOKEN]))
        elif plot == "outsider_then_approve":
            # carol is not among the tool's approvers: always refused, on either replica.
            status = await self._decide(request_id, "approve", CAROL_TOKEN)
            if status == 200:
                self.tally.outsider_accepted += 1
            await self._decide(request_id, "approve", ALICE_TOKEN)
        # time_out: nobody decides.

    async def _request_id(self) -> str | None:
        with anyio.move_on_after(30):
            await self.known.wait()
        return self.request_id

    async def _decide(self, request_id: str, verdict: str, token: str, which: int | None = None) -> int | None:
        """A decision through a replica (a given one, or any); retried on the other while one is down."""
        for _attempt in range(20):
            self.tally.actions += 1
            replica = self.replicas[which] if which is not None else self.replica()
            try:
                response = await decide(replica.url, request_id, verdict, token)
            except Exception:
                which = None
                await anyio.sleep(0.3)
                continue
            self.tally.count(f"{verdict}:{response.status_code}")
            return response.status_code
        return None


def pick_plot(rng: random.Random) -> str:
    plots = list(PLOTS)
    return rng.choices(plots, weights=[PLOTS[p] for p in plots])[0]


def milestones(total: int, kills: int) -> list[int]:
    """After how many started stories each kill happens: spread evenly over the run."""
    return [round(total * (k + 1) / (kills + 1)) for k in range(kills)]
