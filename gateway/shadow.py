"""A policy in shadow: every call is also judged by the candidate policy, and differences are audited.

The shadow enforces nothing. `ShadowRun.observe` is called on the call path once the live decision
is known; it evaluates the candidate in memory and, when the decisions differ, queues an audit event
(`shadow.differs`). A task of its own writes the queue, so the live call never waits for the database
on the shadow's account, and nothing the shadow does can raise into the call: a failure is logged and
audited (`shadow.error`, once per shadow version and kind of failure).

Decisions differ when the action differs (allow, deny, hidden, hold, limited) or, for two holds, the
approvers or the quorum. Quotas: where the shadow's limits for the call are the live policy's, the live
outcome stands for both; where they differ, the shadow counts the calls it would have let through in
this process's memory (never given back), so each replica counts only its own traffic.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from approvals.audit import Event, canonical_json
from gateway.identity import AgentIdentity
from gateway.policy import Evaluation, Policy
from gateway.policy_shadow import ShadowStore
from gateway.ratelimit import RateLimiter, Refusal

log = logging.getLogger(__name__)

Decided = Literal["allow", "deny", "hidden", "hold", "limited"]
DECISIONS: Final[tuple[str, ...]] = ("allow", "deny", "hidden", "hold", "limited")
DIFFERS = "shadow.differs"
# Differences waiting to be written; past this many (a database slower than the traffic) they are counted, not kept.
QUEUE_SIZE: Final = 1_000


def outcome_for(decision: str) -> str:
    """The audit outcome of a difference: what the shadow would have done (`would_deny`)."""
    return f"would_{decision}"


@dataclass(frozen=True)
class Decision:
    """What one policy does with one call: the action, the rule, and who would decide a hold."""

    action: Decided
    rule: str
    message: str = ""
    approvers: tuple[str, ...] = ()
    quorum: int | None = None

    @classmethod
    def of(cls, evaluation: Evaluation, *, limited: str | None = None) -> Decision:
        """The decision an evaluation comes to; `limited` is the quota's refusal, when a quota refused it."""
        if limited is not None:
            return cls("limited", evaluation.rule, limited)
        if evaluation.action == "hold" and evaluation.approval is not None:
            approval = evaluation.approval
            return cls("hold", evaluation.rule, evaluation.message, approval.approvers, approval.quorum)
        return cls(evaluation.action, evaluation.rule, evaluation.message)

    def differs_in(self, other: Decision) -> list[str]:
        if self.action != other.action:
            return ["decision"]
        if self.action != "hold":
            return []
        found = []
        if sorted(self.approvers) != sorted(other.approvers):
            found.append("approvers")
        if self.quorum != other.quorum:
            found.append("quorum")
        return found

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"decision": self.action, "rule": self.rule, "message": self.message}
        if self.action == "hold":
            shown.update(approvers=list(self.approvers), quorum=self.quorum)
        return shown

    def phrase(self) -> str:
        if self.action == "hold":
            who = ", ".join(self.approvers) or "any approver"
            return f"hold for {who} (quorum {self.quorum})"
        return {"allow": "allow", "deny": "deny", "hidden": "hide", "limited": "refuse (quota)"}[self.action]


@dataclass(frozen=True)
class ShadowCall:
    """The call as the live policy saw it."""

    agent: str
    session: str
    tool: str
    upstream: str | None
    arguments: Mapping[str, Any]
    schema: Mapping[str, Any] | None = None
    # Who calls, for the shadow's conditions on agent.name and agent.groups.
    identity: AgentIdentity | None = None


class ShadowRun:
    def __init__(self, store: ShadowStore, record: Callable[[Event], Awaitable[None]]) -> None:
        self.store = store
        self.record = record
        self.dropped = 0
        self._errors_told: set[tuple[str, str]] = set()
        self._quotas: tuple[str, RateLimiter] = ("", RateLimiter())
        sender, receiver = anyio.create_memory_object_stream[Event](QUEUE_SIZE)
        self._sender: MemoryObjectSendStream[Event] = sender
        self._receiver: MemoryObjectReceiveStream[Event] = receiver

    @property
    def active(self) -> bool:
        return self.store.current is not None

    async def observe(
        self, call: ShadowCall, live_policy: Policy, live: Evaluation, *, limited: str | None = None
    ) -> None:
        """Judge the call by the shadow policy and queue the difference, if any. Never raises, never waits on I/O.

        `limited` is the live quota's refusal message when a quota refused the call (None when it passed or
        the call never reached the quotas).
        """
        shadow = self.store.current
        if shadow is None:
            return
        version = self.store.version
        try:
            mine = await self._decide(shadow, version, call, live, limited)
            theirs = Decision.of(live, limited=limited)
            differs = theirs.differs_in(mine)
            if differs:
                self._queue(self._difference(call, live_policy, theirs, version, mine, differs))
        except Exception as exc:
            self._failed(version, call, exc)

    async def _decide(
        self, shadow: Policy, version: str, call: ShadowCall, live: Evaluation, limited: str | None
    ) -> Decision:
        evaluation = shadow.evaluate(call.tool, call.arguments, call.schema, agent=call.identity)
        if evaluation.action not in ("allow", "hold") or not evaluation.limits:
            return Decision.of(evaluation)
        reached_quotas = live.action in ("allow", "hold")
        if reached_quotas and _limits(evaluation) == _limits(live):
            # The same quotas: what the live limiter said is what the shadow's would have said.
            return Decision.of(evaluation, limited=limited)
        if self._quotas[0] != version:
            self._quotas = (version, RateLimiter())
        taken = await self._quotas[1].reserve(call.tool, evaluation.limits, grant=call.agent, session=call.session)
        return Decision.of(evaluation, limited=taken.message if isinstance(taken, Refusal) else None)

    def _difference(
        self, call: ShadowCall, live_policy: Policy, live: Decision, version: str, shadow: Decision, differs: list[str]
    ) -> Event:
        message = f"the shadow policy would {shadow.phrase()}; the live policy did {live.phrase()}"
        return Event(
            kind=DIFFERS,
            outcome=outcome_for(shadow.action),
            message=message,
            agent=call.agent,
            tool=call.tool,
            upstream=call.upstream,
            arguments=canonical_json(dict(call.arguments)),
            detail={
                "differs_in": differs,
                "live": {**live.as_json(), "policy_version": live_policy.version},
                "shadow": {**shadow.as_json(), "policy_version": version},
            },
        )

    def _failed(self, version: str, call: ShadowCall, exc: Exception) -> None:
        key = (version, type(exc).__name__)
        log.error("shadow policy failed on %s (the call is unaffected): %s", call.tool, exc, exc_info=exc)
        if key in self._errors_told:
            return
        self._errors_told.add(key)
        message = f"the shadow policy could not judge a call of {call.tool}: {type(exc).__name__}: {exc}"
        self._queue(
            Event(
                kind="shadow.error",
                outcome="error",
                message=f"{message} (the call was decided by the live policy alone; said once per shadow version)",
                agent=call.agent,
                tool=call.tool,
                upstream=call.upstream,
                detail={"shadow": {"policy_version": version}},
            )
        )

    def _queue(self, event: Event) -> None:
        try:
            self._sender.send_nowait(event)
        except anyio.WouldBlock:
            self.dropped += 1

    async def run(self) -> None:
        """Write the queued events, off the call path; a lost write is logged, never retried into the call."""
        async for event in self._receiver:
            await self._write(event)
            if self.dropped:
                dropped, self.dropped = self.dropped, 0
                note = f"{dropped} shadow difference(s) not recorded: more arrived than the audit log could take"
                log.warning(note)
                await self._write(Event(kind="shadow.dropped", outcome="dropped", message=note))

    async def _write(self, event: Event) -> None:
        try:
            await self.record(event)
        except Exception as exc:
            log.error("shadow audit event not written (%s): %s", event.kind, exc)


def _limits(evaluation: Evaluation) -> tuple[tuple[str, float, int, str], ...]:
    return tuple((limit.counter, limit.window_seconds, limit.max, limit.scope) for limit in evaluation.limits)
