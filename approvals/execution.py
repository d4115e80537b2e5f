"""Executing an approved call exactly once, and saying so when nobody can tell whether it ran.

`begin_execution` is the compare-and-set (approved -> executing) that lets one caller forward the
call; it records which gateway process won (`executing_by`) and a lease (`lease_until`). The
winner renews the lease while it waits for the upstream (`renew_lease`) and ends the request with
the upstream's answer (`finish_execution`).

A process that dies in between (kill -9, a crash, the machine gone) stops renewing. A request
whose lease has run out is ended by any process as `outcome_unknown` (`end_lapsed`): the upstream
may or may not have run the call, so it is neither forwarded again nor reported as not executed.
A lease rather than "on start-up, end whatever is executing": a replica that starts cannot tell
its own dead predecessor from another replica that is alive and waiting on a slow upstream, but
a live process keeps its lease fresh however slow the upstream is.

When the process that records an approval also holds the agent waiting for it, the start can
be recorded in the decision's own transaction (`LocalStarts`, `_start_with_decision`): the same
checks and compare-and-set as `begin_execution`, one commit instead of two, and the waiting call
forwards as soon as it is woken. A decision made anywhere else, or one whose waiter cannot start
it now, leaves the request approved for `begin_execution`, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals import audit
from approvals.errors import ArgumentsChanged
from approvals.evidence import evidence_of, not_as_approved
from approvals.models import ApprovalRequest
from approvals.reads import load
from approvals.request_events import bound_to
from approvals.states import EndReason, Status
from approvals.story import ending
from approvals.transitions import Transitions, already, request_event
from approvals.views import RequestView

log = logging.getLogger(__name__)
_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Start:
    """What a waiter that can forward an approved call now asks to be recorded as its start."""

    owner: str
    lease: float
    arguments_sha256: str


class Starter(Protocol):
    """A task of this process waiting for a request's decision, able to forward the call once it is approved."""

    def claim(self, view: RequestView) -> Start | None:
        """Called inside the approval's transaction with the request as approved: start it now (or None: not now).

        Must not block: no I/O, no awaiting."""
        ...

    def started(self, view: RequestView | None) -> None:
        """Called once after a claim: the start is recorded in the transaction (`view`: the request as started;
        None: it was not). Once that transaction has committed, the waiter is woken with it and forwards."""
        ...


class LocalStarts:
    """The starters of this process, by request id (see `Starter`)."""

    def __init__(self) -> None:
        self._by_request: dict[str, list[Starter]] = {}

    def add(self, request_id: str, starter: Starter) -> None:
        self._by_request.setdefault(request_id, []).append(starter)

    def discard(self, request_id: str, starter: Starter) -> None:
        starters = self._by_request.get(request_id)
        if starters is not None and starter in starters:
            starters.remove(starter)
            if not starters:
                del self._by_request[request_id]

    def of(self, request_id: str) -> list[Starter]:
        return list(self._by_request.get(request_id, ()))


class ExecutionCases(Transitions):
    starts: LocalStarts

    async def begin_execution(
        self, request_id: str, arguments_sha256: str, *, owner: str = "", lease: float = 60.0
    ) -> RequestView:
        """approved -> executing, only for exactly what the audit chain says was approved. Raises unless this won.

        `arguments_sha256` is the digest of the arguments the caller will forward. When the stored
        request disagrees with the chain (`approvals.evidence`), it ends failed instead, never runs,
        and ArgumentsChanged says why. `owner` names the process (shown in the audit log); the lease
        runs `lease` seconds from now.
        """
        now = self.clock()
        async with self._write(defer=True) as conn:
            current = await load(conn, request_id)
            if current.status != Status.APPROVED:
                raise already(current)
            problem = "its stored record cannot be read" if current.damage else None
            problem = problem or await not_as_approved(conn, current, arguments_sha256)
            if problem is None:
                moved = await self._start(conn, current, owner, lease, now)
                if moved is None:
                    raise already(current)
                return moved
            refused = await self._cas(
                conn,
                current,
                {Status.APPROVED},
                Status.FAILED,
                now,
                error=problem,
                ended_because=EndReason.NOT_AS_APPROVED.value,
                agent_waiting=False,
            )
            if refused is None:
                raise already(current)
            detail = {"error": problem, **bound_to(current)}
            await audit.append(
                conn, request_event(refused, "request.failed", "failed", ending(refused), detail=detail), now
            )
        log.error("refused to execute %s: %s", request_id, problem)
        raise ArgumentsChanged(f"request {request_id} was not executed: {problem}")

    async def _start(
        self,
        conn: AsyncConnection,
        current: RequestView,
        owner: str,
        lease: float,
        now: datetime,
        *,
        approval: audit.Event | None = None,
    ) -> RequestView | None:
        """approved -> executing by `owner` and its audit event, once the evidence is checked; None if it lost.

        `approval`: the approval event of this same transaction, appended just before the start's, in one insert."""
        moved = await self._cas(
            conn,
            current,
            {Status.APPROVED},
            Status.EXECUTING,
            now,
            executing_by=owner or None,
            lease_until=now + timedelta(seconds=lease),
        )
        if moved is None:
            return None
        executing = self._executing_event(moved)
        await audit.append_many(conn, [*(() if approval is None else [(approval, now)]), (executing, now)])
        return moved

    @staticmethod
    def _executing_event(moved: RequestView) -> audit.Event:
        text = f"forwarding {moved.upstream_tool} to upstream {moved.upstream}"
        owner = moved.executing_by
        detail = {**bound_to(moved), **({"by": owner} if owner else {})}
        return request_event(moved, "request.executing", "executing", text, detail=detail)

    async def _start_with_decision(
        self, conn: AsyncConnection, approved: RequestView, now: datetime, approval: audit.Event
    ) -> None:
        """Inside the transaction that approved it: append `approval` (the approval's audit event) and start
        the request for a waiter of this process that can forward it now, both events in one insert. Otherwise
        (nobody here, the evidence disagrees, it cannot start now) it stays approved, and `begin_execution`
        decides later, as for a decision made elsewhere."""
        await self._start_with_decisions(conn, [(approved, approval)], now)

    async def _start_with_decisions(
        self, conn: AsyncConnection, approved: Sequence[tuple[RequestView, audit.Event]], now: datetime
    ) -> set[str]:
        """`_start_with_decision` for several requests approved in this transaction (distinct ids): one evidence
        read and one compare-and-set for those their waiters start (on PostgreSQL), every approval appended
        just before its start. The ids started."""
        claims: list[tuple[RequestView, audit.Event, Starter, Start]] = []
        for view, approval in approved:
            for starter in self.starts.of(view.id):
                try:
                    start = starter.claim(view)
                except Exception:
                    # The approval itself must not fail on an offer's account: the call then starts on its own.
                    log.exception("could not ask whether %s can be started with its approval", view.id)
                    start = None
                if start is not None:
                    claims.append((view, approval, starter, start))
                    break
        started: dict[str, RequestView] = {}
        try:
            evidence = await evidence_of(conn, [view.id for view, *_ in claims]) if claims else {}
            may = []
            for view, approval, _, start in claims:
                try:
                    sha = start.arguments_sha256
                    problem = view.damage or await not_as_approved(
                        conn, view, sha, approving=approval, rows=evidence[view.id]
                    )
                except SQLAlchemyError:
                    raise
                except Exception:  # an unreadable chain: the approval stands, and begin_execution says so
                    log.exception("could not check the evidence of %s with its approval", view.id)
                    continue
                if not problem:  # otherwise begin_execution records why it never runs
                    may.append((view, start))
            moves = [
                (view.id, {"executing_by": start.owner or None, "lease_until": now + timedelta(seconds=start.lease)})
                for view, start in may
            ]
            started = await self._cas_many(conn, moves, {Status.APPROVED}, Status.EXECUTING, now)
            events: list[tuple[audit.Event, datetime]] = []
            for view, approval in approved:
                events.append((approval, now))
                moved = started.get(view.id)
                if moved is not None:
                    events.append((self._executing_event(moved), now))
            await audit.append_many(conn, events)
        finally:
            for view, _, starter, _ in claims:
                starter.started(started.get(view.id))
        return set(started)

    async def renew_lease(self, request_id: str, owner: str, lease: float) -> bool:
        """Keep this process's hold on an execution; False when it has lost it (the request moved on)."""
        now = self.clock()
        # No audit event: a renewal changes nothing anyone acts on, and would flood the change feed.
        async with self.db.write() as conn:
            renewed = await conn.execute(
                update(_requests)
                .where(
                    _requests.c.id == request_id,
                    _requests.c.status == Status.EXECUTING.value,
                    _requests.c.executing_by == owner,
                )
                .values(lease_until=now + timedelta(seconds=lease))
            )
        return bool(renewed.rowcount == 1)

    async def abandon_start(self, request_id: str, why: str, *, start: RequestView | None = None) -> bool:
        """executing -> approved: the start was recorded but nothing was forwarded. The approval stands.

        With `start` (the request as a start left it), only if that start is still the request's."""
        now = self.clock()
        mine = None
        if start is not None:
            mine = (_requests.c.executing_by == start.executing_by) & (
                _requests.c.status_changed_at == start.status_changed_at
            )
        async with self._write() as conn:
            current = await load(conn, request_id)
            moved = await self._cas(
                conn, current, {Status.EXECUTING}, Status.APPROVED, now, only_if=mine, agent_waiting=False
            )
            if moved is None:
                return False
            window = {"pickup_until": moved.deadline.isoformat()}
            event = request_event(moved, "request.start_abandoned", "approved", why, detail=window)
            await audit.append(conn, event, now)
        return True

    async def lapsed_executions(self) -> list[RequestView]:
        """Requests executing whose lease has run out (or that have none): their process stopped."""
        now = self.clock()
        query = select(_requests).where(
            _requests.c.status == Status.EXECUTING.value,
            or_(_requests.c.lease_until.is_(None), _requests.c.lease_until < now),
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [RequestView.from_row(row) for row in rows]

    async def end_lapsed(self, request_id: str) -> RequestView | None:
        """executing -> outcome_unknown, if its lease has run out; the ended request, or None."""
        now = self.clock()
        async with self._write() as conn:
            current = await load(conn, request_id)
            lapsed = or_(_requests.c.lease_until.is_(None), _requests.c.lease_until < now)
            moved = await self._cas(
                conn,
                current,
                {Status.EXECUTING},
                Status.OUTCOME_UNKNOWN,
                now,
                only_if=lapsed,
                ended_because=EndReason.INTERRUPTED.value,
                agent_waiting=False,
            )
            if moved is None:
                return None
            by = f" ({current.executing_by})" if current.executing_by else ""
            detail = {"by": current.executing_by} if current.executing_by else {}
            text = f"the gateway process executing it{by} stopped before recording the outcome. {ending(moved)}"
            event = request_event(moved, "request.outcome_unknown", "outcome_unknown", text, detail=detail)
            await audit.append(conn, event, now)
        return moved
