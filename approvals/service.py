"""The approval use cases. Channels (API, CLI, web, Slack) and the scheduler act only through here.

Every state change is one compare-and-set UPDATE plus its audit event in the same transaction,
so approve, reject, timeout and cancel can race from any number of tasks or replicas and
exactly one of them wins.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypedDict, Unpack

import anyio
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals import audit
from approvals.approvers import Approver, ApproverDirectory, may_decide
from approvals.audit import Event, canonical_json
from approvals.db import Database
from approvals.errors import AlreadyDecided, ArgumentsChanged, InvalidDecision, NotAllowed, RequestNotFound
from approvals.models import ApprovalRequest, AuditEvent, Decision
from approvals.states import Status, can_transition
from approvals.views import AuditEventView, DecisionOutcome, DecisionView, NewRequest, RequestView

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]
_decisions = Decision.__table__  # type: ignore[attr-defined]
_events = AuditEvent.__table__  # type: ignore[attr-defined]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_request_id() -> str:
    return "apr_" + secrets.token_urlsafe(16)


def arguments_digest(arguments_json: str) -> str:
    return hashlib.sha256(arguments_json.encode()).hexdigest()


class Listener(Protocol):
    """A channel that wants to hear about every change (created, approved, executed, ...)."""

    async def request_changed(self, request: RequestView, change: str) -> None: ...


class ApprovalService:
    def __init__(
        self,
        db: Database,
        approvers: ApproverDirectory,
        *,
        clock: Clock = utcnow,
        poll_interval: float = 1.0,
    ) -> None:
        self.db = db
        self.approvers = approvers
        self.clock = clock
        # Decisions made by another process reach waiters here by polling at this interval.
        self.poll_interval = poll_interval
        self._listeners: list[Listener] = []
        # Per request: each waiting task's event and the status it last saw.
        self._watchers: dict[str, dict[anyio.Event, Status]] = {}

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # ---- reading

    async def get(self, request_id: str) -> RequestView:
        async with self.db.read() as conn:
            return await self._load(conn, request_id)

    async def list_requests(
        self, *, statuses: Collection[Status] | None = None, agent: str | None = None, limit: int = 100
    ) -> list[RequestView]:
        query = select(_requests)
        if statuses:
            query = query.where(_requests.c.status.in_([s.value for s in statuses]))
        if agent:
            query = query.where(_requests.c.agent == agent)
        if statuses and set(statuses) <= {Status.PENDING}:
            query = query.order_by(_requests.c.expires_at.asc())
        else:
            query = query.order_by(_requests.c.created_at.desc())
        async with self.db.read() as conn:
            rows = (await conn.execute(query.limit(limit))).mappings().all()
        return [RequestView.from_row(r) for r in rows]

    async def decisions(self, request_id: str) -> list[DecisionView]:
        query = select(_decisions).where(_decisions.c.request_id == request_id).order_by(_decisions.c.id)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            DecisionView(r["approver"], r["channel"], r["verdict"], r["reason"], audit.as_utc(r["at"])) for r in rows
        ]

    async def events(self, *, request_id: str | None = None, limit: int = 200) -> list[AuditEventView]:
        query = select(_events)
        if request_id is not None:
            query = query.where(_events.c.request_id == request_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(query.order_by(_events.c.seq.desc()).limit(limit))).mappings().all()
        return [AuditEventView.from_row(r) for r in reversed(rows)]

    async def verify_audit(self) -> audit.ChainReport:
        async with self.db.read() as conn:
            return await audit.verify(conn)

    # ---- writing

    async def record(self, event: Event) -> None:
        """Audit a call that needs no request (allowed, denied, rate limited, hidden)."""
        async with self.db.write() as conn:
            await audit.append(conn, event, self.clock())

    async def create(self, new: NewRequest) -> RequestView:
        now = self.clock()
        arguments_json = canonical_json(dict(new.arguments))
        row: dict[str, Any] = {
            "id": new_request_id(),
            "upstream": new.upstream,
            "tool": new.tool,
            "upstream_tool": new.upstream_tool,
            "arguments": arguments_json,
            "arguments_sha256": arguments_digest(arguments_json),
            "agent": new.agent,
            "session_id": new.session_id,
            "rule": new.rule,
            "reason": new.reason,
            "approvers": canonical_json(list(new.approvers)),
            "quorum": new.quorum,
            "channels": canonical_json(list(new.channels)),
            "timeout_seconds": new.timeout_seconds,
            "reject_reason_required": new.reject_reason_required,
            "slack_channel": new.slack_channel,
            "pickup_seconds": new.pickup_seconds,
            "run_unattended": new.run_unattended,
            "created_at": now,
            "expires_at": now + timedelta(seconds=new.timeout_seconds),
            "status": Status.PENDING.value,
            "status_changed_at": now,
            "agent_waiting": True,
        }
        async with self.db.write() as conn:
            await conn.execute(insert(_requests).values(**row))
            await audit.append(
                conn,
                Event(
                    kind="request.created",
                    outcome="held",
                    message=f"held for approval: {new.reason}",
                    agent=new.agent,
                    tool=new.tool,
                    upstream=new.upstream,
                    request_id=row["id"],
                    arguments=arguments_json,
                    detail={
                        "rule": new.rule,
                        "expires_at": row["expires_at"].isoformat(),
                        "quorum": new.quorum,
                    },
                ),
                now,
            )
            view = await self._load(conn, row["id"])
        await self._changed(view, "created")
        return view

    async def approve(
        self, request_id: str, approver: Approver, channel: str, reason: str | None = None
    ) -> DecisionOutcome:
        return await self._decide(request_id, approver, channel, "approve", reason)

    async def reject(self, request_id: str, approver: Approver, channel: str, reason: str | None) -> DecisionOutcome:
        return await self._decide(request_id, approver, channel, "reject", reason)

    async def _decide(
        self, request_id: str, approver: Approver, channel: str, verdict: str, reason: str | None
    ) -> DecisionOutcome:
        reason = (reason or "").strip() or None
        now = self.clock()
        # Checking who may decide needs no write lock; only a refusal is written (to the audit log).
        current = await self.get(request_id)
        if not may_decide(approver, current.approvers):
            await self.record(self._refusal(current, approver, channel, verdict))
            raise NotAllowed(approver.name, request_id, "not among the approvers this request allows")
        if current.status != Status.PENDING:
            raise self._already(current)
        if verdict == "reject" and reason is None and current.reject_reason_required:
            raise InvalidDecision("the policy for this tool requires a reason to reject")

        try:
            async with self.db.write() as conn:
                await conn.execute(
                    insert(_decisions).values(
                        request_id=request_id,
                        approver=approver.name,
                        channel=channel,
                        verdict=verdict,
                        reason=reason,
                        at=now,
                    )
                )
                approvals = await self._approvals(conn, request_id)
                needed = current.quorum
                if verdict == "approve" and len(approvals) < needed:
                    if not await self._still(conn, request_id, Status.PENDING):
                        raise _Lost()
                    await audit.append(
                        conn,
                        self._decision_event(
                            current,
                            approver,
                            channel,
                            "approval",
                            reason,
                            f"approval {len(approvals)} of {needed}",
                        ),
                        now,
                    )
                    view = await self._load(conn, request_id)
                    outcome = DecisionOutcome(view, len(approvals), needed, f"{len(approvals)} of {needed} approvals")
                    transitioned = None
                else:
                    new = Status.APPROVED if verdict == "approve" else Status.REJECTED
                    by = ", ".join(approvals) if verdict == "approve" else approver.name
                    won = await self._cas(
                        conn,
                        request_id,
                        {Status.PENDING},
                        new,
                        now,
                        decided_by=by,
                        decided_via=channel,
                        decision_reason=reason,
                    )
                    if not won:
                        raise _Lost()
                    text = f"{new.value} by {by}" + (f": {reason}" if reason else "")
                    await audit.append(
                        conn, self._decision_event(current, approver, channel, new.value, reason, text), now
                    )
                    view = await self._load(conn, request_id)
                    outcome = DecisionOutcome(view, len(approvals), needed, text)
                    transitioned = new.value
        except (_Lost, IntegrityError):
            # Someone else moved the request (or this approver already voted) between our read and write.
            latest = await self.get(request_id)
            if latest.status == Status.PENDING:
                approvals_now = [d.approver for d in await self.decisions(request_id) if d.verdict == "approve"]
                return DecisionOutcome(
                    latest,
                    len(approvals_now),
                    latest.quorum,
                    f"{approver.name} has already approved; {len(approvals_now)} of {latest.quorum} approvals",
                )
            raise self._already(latest) from None
        await self._changed(view, transitioned or "approval")
        return outcome

    async def expire(self, request_id: str) -> bool:
        """Time ran out: a pending request's decision time, or an approved one's pick-up window.

        Idempotent: returns False when the request is not (or not yet) due.
        """
        now = self.clock()
        async with self.db.write() as conn:
            current = await self._load(conn, request_id)
            if current.status == Status.PENDING and current.expires_at <= now:
                why = f"no decision within {_human(current.timeout_seconds)}"
                decided_by: str | None = "timeout"
            elif current.status == Status.APPROVED and (deadline := current.pickup_deadline) and deadline <= now:
                why = (
                    f"approved by {current.decided_by} but the agent did not come back for it within "
                    f"{_human(current.pickup_seconds)}; it was never executed"
                )
                decided_by = current.decided_by
            else:
                return False
            won = await self._cas(
                conn, request_id, {current.status}, Status.EXPIRED, now, decided_by=decided_by, agent_waiting=False
            )
            if not won:
                return False
            await audit.append(conn, self._transition_event(current, "request.expired", "expired", why), now)
            view = await self._load(conn, request_id)
        await self._changed(view, "expired")
        return True

    async def find_open(self, agent: str, tool: str, arguments_sha256: str) -> RequestView | None:
        """The agent's pending or approved-but-not-started request for exactly this call, to re-attach to."""
        query = (
            select(_requests)
            .where(
                _requests.c.agent == agent,
                _requests.c.tool == tool,
                _requests.c.arguments_sha256 == arguments_sha256,
                _requests.c.status.in_([Status.PENDING.value, Status.APPROVED.value]),
            )
            .order_by(_requests.c.created_at.asc())
            .limit(1)
        )
        async with self.db.read() as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else RequestView.from_row(row)

    async def attach(self, request_id: str, agent: str, how: str) -> RequestView:
        """The agent is waiting for this request again (it repeated the call, or asked to wait)."""
        now = self.clock()
        async with self.db.write() as conn:
            current = await self._load(conn, request_id)
            if current.is_terminal or current.agent_waiting:
                return current
            await conn.execute(update(_requests).where(_requests.c.id == request_id).values(agent_waiting=True))
            await audit.append(
                conn,
                self._transition_event(
                    current, "request.attached", "attached", f"{agent} is waiting for the decision again ({how})"
                ),
                now,
            )
            view = await self._load(conn, request_id)
        await self._changed(view, "agent_waiting")
        return view

    async def detach(self, request_id: str, why: str) -> RequestView | None:
        """The agent stopped waiting but did not withdraw: the request stays decidable."""
        now = self.clock()
        async with self.db.write() as conn:
            current = await self._load(conn, request_id)
            if current.is_terminal or not current.agent_waiting or current.status == Status.EXECUTING:
                return None
            await conn.execute(update(_requests).where(_requests.c.id == request_id).values(agent_waiting=False))
            await audit.append(conn, self._transition_event(current, "request.detached", "detached", why), now)
            view = await self._load(conn, request_id)
        await self._changed(view, "agent_gone")
        return view

    async def cancel(self, request_id: str, why: str, *, actor: str | None = None) -> bool:
        """The agent went away or withdrew. Never undoes an execution that has begun."""
        now = self.clock()
        async with self.db.write() as conn:
            current = await self._load(conn, request_id)
            won = await self._cas(
                conn,
                request_id,
                {Status.PENDING, Status.APPROVED},
                Status.CANCELLED,
                now,
                decided_by=current.decided_by or actor,
                decision_reason=current.decision_reason or why,
                agent_waiting=False,
            )
            if not won:
                return False
            await audit.append(conn, self._transition_event(current, "request.cancelled", "cancelled", why), now)
            view = await self._load(conn, request_id)
        await self._changed(view, "cancelled")
        return True

    async def begin_execution(self, request_id: str, arguments_sha256: str) -> RequestView:
        """approved -> executing, only for exactly the approved arguments. Raises unless this caller won."""
        now = self.clock()
        async with self.db.write() as conn:
            current = await self._load(conn, request_id)
            if current.arguments_sha256 != arguments_sha256:
                raise ArgumentsChanged(f"request {request_id}: the arguments differ from the approved ones")
            won = await self._cas(conn, request_id, {Status.APPROVED}, Status.EXECUTING, now)
            if not won:
                raise self._already(current)
            await audit.append(
                conn,
                self._transition_event(
                    current,
                    "request.executing",
                    "executing",
                    f"forwarding to upstream {current.upstream}",
                ),
                now,
            )
            view = await self._load(conn, request_id)
        await self._changed(view, "executing")
        return view

    async def abandon_start(self, request_id: str, why: str) -> bool:
        """executing -> approved: the start was recorded but nothing was forwarded. The approval stands."""
        now = self.clock()
        async with self.db.write() as conn:
            current = await self._load(conn, request_id)
            won = await self._cas(conn, request_id, {Status.EXECUTING}, Status.APPROVED, now, agent_waiting=False)
            if not won:
                return False
            await audit.append(conn, self._transition_event(current, "request.start_abandoned", "approved", why), now)
            view = await self._load(conn, request_id)
        await self._changed(view, "approved")
        return True

    async def finish_execution(
        self, request_id: str, *, ok: bool, result: Mapping[str, Any] | None, error: str | None, summary: str
    ) -> RequestView:
        now = self.clock()
        new = Status.EXECUTED if ok else Status.FAILED
        async with self.db.write() as conn:
            current = await self._load(conn, request_id)
            won = await self._cas(
                conn,
                request_id,
                {Status.EXECUTING},
                new,
                now,
                result=None if result is None else canonical_json(dict(result)),
                error=error,
            )
            if not won:
                raise self._already(current)
            await audit.append(
                conn,
                self._transition_event(
                    current,
                    f"request.{new.value}",
                    new.value,
                    summary,
                    detail={"error": error} if error else {},
                ),
                now,
            )
            view = await self._load(conn, request_id)
        await self._changed(view, new.value)
        return view

    async def set_slack_ts(self, request_id: str, channel: str, ts: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(_requests).where(_requests.c.id == request_id).values(slack_channel=channel, slack_ts=ts)
            )

    async def overdue_and_pending(self) -> tuple[list[RequestView], list[RequestView]]:
        """Requests with a deadline (pending: expiry; approved: pick-up) split into (past it, not yet)."""
        waiting = await self.list_requests(statuses={Status.PENDING, Status.APPROVED}, limit=1_000_000)
        now = self.clock()
        due = [r for r in waiting if deadline_of(r) <= now]
        return due, [r for r in waiting if deadline_of(r) > now]

    async def wait_for_change(self, request_id: str, seen: Status, within: float) -> RequestView:
        """Return as soon as the request leaves `seen`, or after `within` seconds with its current state.

        A change made in this process wakes the waiter at once; one made by another process or replica
        is noticed by `watch_changes`, which checks every watched request in one query per poll interval.
        """
        deadline = anyio.current_time() + max(within, 0.0)
        while True:
            event = anyio.Event()
            self._watchers.setdefault(request_id, {})[event] = seen
            try:
                view = await self.get(request_id)
                remaining = deadline - anyio.current_time()
                if view.status != seen or remaining <= 0:
                    return view
                with anyio.move_on_after(remaining):
                    await event.wait()
            finally:
                watchers = self._watchers.get(request_id)
                if watchers is not None:
                    watchers.pop(event, None)
                    if not watchers:
                        del self._watchers[request_id]

    async def watch_changes(self) -> None:
        """Wake waiters whose request another process changed. Runs for the life of the gateway."""
        while True:
            await anyio.sleep(self.poll_interval)
            try:
                await self._poll_watched()
            except Exception as exc:  # the store may be down; waiters fail closed on their own deadlines
                log.warning("could not poll for decisions made elsewhere: %s", exc)

    async def _poll_watched(self) -> None:
        ids = list(self._watchers)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = select(_requests.c.id, _requests.c.status).where(_requests.c.id.in_(chunk))
            async with self.db.read() as conn:
                rows = (await conn.execute(query)).all()
            for request_id, status in rows:
                for event, seen in list(self._watchers.get(request_id, {}).items()):
                    if status != seen.value:
                        event.set()

    # ---- internals

    async def _load(self, conn: AsyncConnection, request_id: str) -> RequestView:
        row = (await conn.execute(select(_requests).where(_requests.c.id == request_id))).mappings().first()
        if row is None:
            raise RequestNotFound(request_id)
        return RequestView.from_row(row)

    async def _cas(
        self,
        conn: AsyncConnection,
        request_id: str,
        old: Iterable[Status],
        new: Status,
        now: datetime,
        **values: Any,
    ) -> bool:
        old = frozenset(old)
        # The transitions in states.py are the rules; a use case that asks for any other is a bug.
        assert all(can_transition(o, new) for o in old), f"{sorted(old)} -> {new} is not a transition"
        result = await conn.execute(
            update(_requests)
            .where(_requests.c.id == request_id, _requests.c.status.in_([s.value for s in old]))
            .values(status=new.value, status_changed_at=now, **values)
        )
        return bool(result.rowcount == 1)

    async def _still(self, conn: AsyncConnection, request_id: str, status: Status) -> bool:
        query = (
            select(func.count())
            .select_from(_requests)
            .where(_requests.c.id == request_id, _requests.c.status == status.value)
        )
        return bool((await conn.execute(query)).scalar_one())

    async def _approvals(self, conn: AsyncConnection, request_id: str) -> list[str]:
        query = (
            select(_decisions.c.approver)
            .where(_decisions.c.request_id == request_id, _decisions.c.verdict == "approve")
            .order_by(_decisions.c.id)
        )
        return list(dict.fromkeys((await conn.execute(query)).scalars()))

    async def _changed(self, view: RequestView, change: str) -> None:
        for event in list(self._watchers.get(view.id, {})):
            event.set()
        for listener in self._listeners:
            try:
                await listener.request_changed(view, change)
            except Exception:
                # A channel failing must never block a decision or lose a request.
                log.exception("listener %r failed on %s of %s", listener, change, view.id)

    def _already(self, view: RequestView) -> AlreadyDecided:
        by = view.decided_by
        if view.status == Status.CANCELLED:
            by = None
        return AlreadyDecided(view.id, view.status.value, by, view.status_changed_at)

    @staticmethod
    def _refusal(current: RequestView, approver: Approver, channel: str, verdict: str) -> Event:
        return Event(
            kind="decision.refused",
            outcome="refused",
            message=f"{approver.name} tried to {verdict} but is not an allowed approver",
            agent=current.agent,
            tool=current.tool,
            upstream=current.upstream,
            request_id=current.id,
            actor=approver.name,
            channel=channel,
        )

    @staticmethod
    def _decision_event(
        current: RequestView, approver: Approver, channel: str, outcome: str, reason: str | None, text: str
    ) -> Event:
        return Event(
            kind=f"request.{outcome}",
            outcome=outcome,
            message=text,
            agent=current.agent,
            tool=current.tool,
            upstream=current.upstream,
            request_id=current.id,
            actor=approver.name,
            channel=channel,
            detail={"reason": reason} if reason else {},
        )

    @staticmethod
    def _transition_event(
        current: RequestView, kind: str, outcome: str, text: str, detail: Mapping[str, Any] | None = None
    ) -> Event:
        return Event(
            kind=kind,
            outcome=outcome,
            message=text,
            agent=current.agent,
            tool=current.tool,
            upstream=current.upstream,
            request_id=current.id,
            detail=detail or {},
        )

    # ---- approver-facing queries (web inbox and audit history)

    async def requests_by_ids(self, ids: Collection[str]) -> list[RequestView]:
        """The requests among `ids` that exist, in no particular order."""
        if not ids:
            return []
        query = select(_requests).where(_requests.c.id.in_(list(ids)))
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [RequestView.from_row(r) for r in rows]

    async def search_events(
        self,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int = 50,
        **filters: Unpack[EventFilters],
    ) -> list[AuditEventView]:
        """One page of matching events, newest first.

        Paged by sequence number (keyset), so a page deep in a large history costs the same as the first:
        `before_seq` gives the page after the one ending there, `after_seq` the page before (still newest first).
        """
        query = select(_events).where(*_event_conditions(filters))
        if after_seq is not None:
            # The page just newer than `after_seq`: take the oldest `limit` above it, then show them newest first.
            query = query.where(_events.c.seq > after_seq).order_by(_events.c.seq.asc())
        else:
            if before_seq is not None:
                query = query.where(_events.c.seq < before_seq)
            query = query.order_by(_events.c.seq.desc())
        async with self.db.read() as conn:
            rows = (await conn.execute(query.limit(limit))).mappings().all()
        views = [AuditEventView.from_row(r) for r in rows]
        return sorted(views, key=lambda v: v.seq, reverse=True)

    async def count_events(self, *, cap: int | None = None, **filters: Unpack[EventFilters]) -> int:
        """How many events match; with `cap`, counting stops there (the answer is then at least `cap`)."""
        matching = select(_events.c.seq).where(*_event_conditions(filters))
        if cap is not None:
            matching = matching.limit(cap)
        query = select(func.count()).select_from(matching.subquery())
        async with self.db.read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def event_facets(self) -> dict[str, list[str]]:
        """The distinct tools, agents, outcomes and actors in the audit log, for filter menus."""
        facets: dict[str, list[str]] = {}
        async with self.db.read() as conn:
            for name in ("tool", "agent", "outcome", "actor"):
                column = _events.c[name]
                query = select(column).where(column.is_not(None)).distinct().order_by(column)
                facets[name] = [str(v) for v in (await conn.execute(query)).scalars()]
        return facets

    # ---- added for channels

    async def precheck(self, request_id: str, approver: Approver, channel: str, verdict: str) -> RequestView:
        """Could `approver` decide this request now? Before a channel asks for more (e.g. a reason dialog).

        Refuses exactly as a decision would: a non-approver is audited and gets NotAllowed; a request
        that has left `pending` gives AlreadyDecided. Nothing is decided here.
        """
        current = await self.get(request_id)
        if not may_decide(approver, current.approvers):
            await self.record(self._refusal(current, approver, channel, verdict))
            raise NotAllowed(approver.name, request_id, "not among the approvers this request allows")
        if current.status != Status.PENDING:
            raise self._already(current)
        return current


class EventFilters(TypedDict, total=False):
    """What the audit history can be filtered by; every given filter must hold."""

    tool: str | None
    agent: str | None
    outcome: str | None
    actor: str | None
    request_id: str | None
    since: datetime | None
    until: datetime | None
    text: str | None


def _event_conditions(filters: EventFilters) -> list[Any]:
    conditions: list[Any] = []
    for name in ("tool", "agent", "outcome", "actor", "request_id"):
        value = filters.get(name)
        if value:
            conditions.append(_events.c[name] == value)
    since, until, text = filters.get("since"), filters.get("until"), filters.get("text")
    if since is not None:
        conditions.append(_events.c.at >= since)
    if until is not None:
        conditions.append(_events.c.at < until)
    if text:
        # A literal substring: the user's % and _ are not wildcards.
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        conditions.append(
            _events.c.arguments.ilike(pattern, escape="\\") | _events.c.message.ilike(pattern, escape="\\")
        )
    return conditions


class _Lost(Exception):
    """Our compare-and-set lost to a concurrent writer."""


def deadline_of(request: RequestView) -> datetime:
    """When the request's current wait ends: its expiry while pending, its pick-up window once approved."""
    return request.pickup_deadline or request.expires_at


def _human(duration: float) -> str:
    seconds = round(duration)
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"
