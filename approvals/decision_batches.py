"""Decisions and results that arrive together, written as one: a statement per step for all of them.

A plain approval (no grant, no changes, one approval needed) is a compare-and-set, a decision row,
the evidence read and the start's compare-and-set; a recorded result is one compare-and-set. Write
groups (`approvals.write_groups`) already share the commit, and the inserts go in together before it
(`driver_sql.insert`, deferrable); but each block's compare-and-sets and reads are still round trips
of their own, one after another, under the chain's lock, which every replica's writes wait for.

Here the approvals that arrive while a block is on its way to its turn in the write group go in
that block, taken when it runs (`_Gather`; who arrives after that opens the next block): one
block, one compare-and-set for all of them (on PostgreSQL, `unnest` of the ids and values), who
may decide each checked on the row it returns, one evidence read and one start for those their
waiters start, every event in the chain in order, each approval just before its start. Results
alike: one compare-and-set per outcome (executed, failed) for the batch. Each caller returns only
once the transaction holding its own change has committed, with its own outcome, exactly as it
would have alone: a request no longer pending (or needing several approvals) takes the general
way; an approver or channel that may not decide one of them rolls the batch's block back, and
then each approval of that batch is tried again alone, so the refusal is told and audited as
before. Nothing is decided twice: a request asked for twice in one batch goes into it once, and
the other asker takes the general way (which finds it decided).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import anyio
from sqlalchemy.exc import IntegrityError

from approvals import audit, driver_sql
from approvals.approvers import Approver
from approvals.audit import canonical_json
from approvals.errors import RequestNotFound
from approvals.execution import ExecutionCases
from approvals.models import Decision
from approvals.reads import load
from approvals.request_events import decision_event
from approvals.states import EndReason, Status
from approvals.transitions import already, request_event
from approvals.views import DecisionOutcome, RequestView

# As many as a write group takes.
MAX_BATCH = 64

_decisions = Decision.__table__  # type: ignore[attr-defined]


@dataclass(eq=False)
class _Approval:
    request_id: str
    approver: Approver
    channel: str
    reason: str | None
    woken: anyio.Event = field(default_factory=anyio.Event)
    leads: bool = False
    # Approved here (None: not this way; the general way decides).
    outcome: DecisionOutcome | None = None
    # Its batch was rolled back for another's refusal: try again alone.
    again: bool = False
    failure: BaseException | None = None


@dataclass(eq=False)
class _Result:
    request_id: str
    ok: bool
    result: Mapping[str, Any] | None
    error: str | None
    summary: str
    woken: anyio.Event = field(default_factory=anyio.Event)
    leads: bool = False
    moved: RequestView | None = None
    lost: RequestView | RequestNotFound | None = None
    failure: BaseException | None = None


class _Item(Protocol):
    woken: anyio.Event
    leads: bool
    failure: BaseException | None


T = TypeVar("T", bound=_Item)


class _Gather(Generic[T]):
    """Items asked for while a block is on its way to its turn in a write group go in that block, taken when it
    runs: the first asker opens a block (`run`, which calls `collect` once it holds the transaction), and who
    asks before it is collected waits to be taken by it. Who asks after that opens the next block, which
    queues in the write group behind (or joins) the one under way. More than `max_batch` waiting: the first of
    those left over opens the next block. Every item is woken once the block that took it has ended."""

    def __init__(self, run: Callable[[Callable[[], list[T]]], Awaitable[None]], max_batch: int = MAX_BATCH) -> None:
        self._run = run
        self.max_batch = max_batch
        self._queue: deque[T] = deque()
        self._open = False  # a block is on its way that will take what is queued

    async def take(self, item: T) -> None:
        # Shielded: an asker cancelled while queued must still be written (or failed) with its block.
        with anyio.CancelScope(shield=True):
            self._queue.append(item)
            if self._open:
                await item.woken.wait()
                if not item.leads:
                    return
            self._open = True
            taken: list[T] = []
            collected = False

            def collect() -> list[T]:
                nonlocal collected
                collected, self._open = True, False
                taken.extend(self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue))))
                if self._queue:
                    following = self._queue[0]
                    following.leads, self._open = True, True
                    following.woken.set()
                return taken

            try:
                await self._run(collect)
            except Exception as exc:
                if not collected:
                    collect()
                for each in taken:
                    each.failure = exc
            finally:
                if not collected:  # cancelled before its turn (shielded: only at shutdown)
                    collect()
                for each in taken:
                    each.woken.set()


class _Refused(Exception):
    """One approval of the batch may not be made by its approver or channel: the batch's block is undone."""


class DecisionBatches(ExecutionCases):
    """Plain approvals and recorded results in batches; see the module's description."""

    def _may_approve(self, view: RequestView, approver: Approver, channel: str) -> bool:
        raise NotImplementedError

    _approvals: _Gather[_Approval]
    _results: _Gather[_Result]

    def _batch_decisions(self) -> None:
        """Take plain approvals and recorded results in batches from here on (called once, when the service is made)."""
        self._approvals = _Gather(self._approve_batch)
        self._results = _Gather(self._finish_batch)

    async def _approve_at_once(
        self, request_id: str, approver: Approver, channel: str, reason: str | None
    ) -> DecisionOutcome | None:
        """A plain approval of a request that needs one, without reading it first (with those asked meanwhile):
        the compare-and-set (pending, one approval needed) returns the request, who may decide it is checked on
        that, and the decision, its audit event and the start follow in the same block. None when that is not
        this case (not pending, several approvals needed, not found) or the approver or channel may not decide
        it, or it is damaged: the general way then refuses, counts approvals or says who got there first."""
        asked = _Approval(request_id, approver, channel, reason)
        await self._approvals.take(asked)
        if asked.again:
            asked.again = False
            await self._approve_batch(lambda: [asked])
        if asked.failure is not None:
            raise asked.failure
        return asked.outcome

    async def _approve_batch(self, collect: Callable[[], list[_Approval]]) -> None:
        batch: list[_Approval] = []
        try:
            # Its inserts (the decisions, the events) are sent with the group's: nothing here reads them back.
            async with self._write(defer=True) as conn:
                batch = collect()
                now = self.clock()
                # A request asked for twice goes in once; the other asker takes the general way.
                mine = list({a.request_id: a for a in reversed(batch)}.values())[::-1]
                moves = [
                    (
                        a.request_id,
                        {"decided_by": a.approver.name, "decided_via": a.channel, "decision_reason": a.reason},
                    )
                    for a in mine
                ]
                moved = await self._cas_many(conn, moves, {Status.PENDING}, Status.APPROVED, now, equal={"quorum": 1})
                done = [(a, moved[a.request_id]) for a in mine if a.request_id in moved]
                for asked, view in done:
                    if view.damage or not self._may_approve(view, asked.approver, asked.channel):
                        raise _Refused()  # undone: alone, the general way says why
                rows: list[dict[str, Any]] = []
                approved = []
                for asked, view in done:
                    rows.append({"approver": asked.approver.name, "channel": asked.channel, "verdict": "approve"})
                    rows[-1].update(reason=asked.reason, policy_version=view.policy_version, request_id=view.id, at=now)
                    text = f"approved by {asked.approver.name}" + (f": {asked.reason}" if asked.reason else "")
                    event = decision_event(
                        view, asked.approver, asked.channel, Status.APPROVED.value, asked.reason, text
                    )
                    approved.append((view, event))
                    asked.outcome = DecisionOutcome(view, 1, 1, text)
                # No other decision on these can exist: each was pending and needed one approval, this one.
                await driver_sql.insert(conn, _decisions, rows, deferrable=True)
                await self._start_with_decisions(conn, approved, now)
        except (_Refused, IntegrityError):
            for asked in batch:
                asked.outcome = None
                asked.again = len(batch) > 1
        except Exception:
            for asked in batch:
                asked.outcome = None
            raise

    async def finish_execution(
        self, request_id: str, *, ok: bool, result: Mapping[str, Any] | None, error: str | None, summary: str
    ) -> RequestView:
        """executing -> executed or failed, with the upstream's answer (with the answers recorded meanwhile).

        If the request was ended as outcome unknown meanwhile (this process lost its lease: it stalled
        longer than the lease), the end stands, and the late answer is written to the audit log.
        """
        mine = _Result(request_id, ok, result, error, summary)
        await self._results.take(mine)
        if mine.failure is not None:
            raise mine.failure
        if isinstance(mine.lost, RequestNotFound):
            raise mine.lost
        if mine.moved is None:
            assert mine.lost is not None
            raise already(mine.lost)
        return mine.moved

    async def _finish_batch(self, collect: Callable[[], list[_Result]]) -> None:
        # No savepoint: nothing in this block raises but the database (a lost compare-and-set is told after it).
        async with self._write(savepoint=False, defer=True) as conn:
            batch = collect()
            now = self.clock()
            events: list[tuple[audit.Event, Any]] = []
            for ok in (True, False):
                await self._finish_some(conn, [r for r in batch if r.ok is ok], ok, now, events)
            await audit.append_many(conn, events)

    async def _finish_some(
        self, conn: Any, batch: list[_Result], ok: bool, now: Any, events: list[tuple[audit.Event, Any]]
    ) -> None:
        new, because = (Status.EXECUTED, EndReason.EXECUTED) if ok else (Status.FAILED, EndReason.FAILED)
        # The compare-and-set needs only the ids: a request is read back only when it was lost.
        moves = [
            (r.request_id, {"result": None if r.result is None else canonical_json(dict(r.result)), "error": r.error})
            for r in batch
        ]
        moved = await self._cas_many(
            conn,
            [(i, {**v, "ended_because": because.value}) for i, v in _distinct(moves)],
            {Status.EXECUTING},
            new,
            now,
        )
        for r in batch:
            detail = {"error": r.error} if r.error else {}
            view = moved.pop(r.request_id, None)
            if view is not None:
                r.moved = view
                events.append((request_event(view, f"request.{new.value}", new.value, r.summary, detail=detail), now))
                continue
            try:
                r.lost = await load(conn, r.request_id)
            except RequestNotFound as missing:
                r.lost = missing
                continue
            if r.lost.status == Status.OUTCOME_UNKNOWN:
                text = f"the upstream answered after the request was ended as outcome unknown: {r.summary}"
                events.append((request_event(r.lost, "request.answered_late", new.value, text, detail=detail), now))


def _distinct(moves: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The first of each id (a second answer for one request loses, as it would after the first)."""
    return list({i: (i, v) for i, v in reversed(moves)}.values())[::-1]
