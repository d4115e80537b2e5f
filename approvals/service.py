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
from typing import Any, Protocol

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
from approvals.states import TERMINAL, Status
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
        self._watchers: dict[str, set[anyio.Event]] = {}

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
        async with self.db.write() as conn:
            current = await self._load(conn, request_id)
            if not may_decide(approver, current.approvers):
                await audit.append(conn, self._refusal(current, approver, channel, verdict), now)
                refused = True
            else:
                refused = False
        if refused:
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
        """Time ran out. Idempotent: returns False when the request had already left `pending`."""
        now = self.clock()
        async with self.db.write() as conn:
            current = await self._load(conn, request_id)
            if current.status != Status.PENDING or current.expires_at > now + timedelta(seconds=1):
                return False
            won = await self._cas(conn, request_id, {Status.PENDING}, Status.EXPIRED, now, decided_by="timeout")
            if not won:
                return False
            await audit.append(
                conn,
                self._transition_event(
                    current,
                    "request.expired",
                    "expired",
                    f"no decision within {_human(current.timeout_seconds)}",
                ),
                now,
            )
            view = await self._load(conn, request_id)
        await self._changed(view, "expired")
        return True

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

    async def set_agent_waiting(self, request_id: str, waiting: bool) -> None:
        async with self.db.write() as conn:
            result = await conn.execute(
                update(_requests)
                .where(_requests.c.id == request_id, _requests.c.status.not_in([s.value for s in TERMINAL]))
                .values(agent_waiting=waiting)
            )
            if result.rowcount == 0:
                return
            view = await self._load(conn, request_id)
        await self._changed(view, "agent_waiting" if waiting else "agent_gone")

    async def set_slack_ts(self, request_id: str, channel: str, ts: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(_requests).where(_requests.c.id == request_id).values(slack_channel=channel, slack_ts=ts)
            )

    async def overdue_and_pending(self) -> tuple[list[RequestView], list[RequestView]]:
        """Pending requests split into (already past their expiry, still running) — for re-arming timers."""
        pending = await self.list_requests(statuses={Status.PENDING}, limit=1_000_000)
        now = self.clock()
        return [r for r in pending if r.expires_at <= now], [r for r in pending if r.expires_at > now]

    async def wait_for_change(self, request_id: str, seen: Status, within: float) -> RequestView:
        """Return as soon as the request leaves `seen`, or after `within` seconds with its current state."""
        deadline = anyio.current_time() + max(within, 0.0)
        while True:
            event = anyio.Event()
            self._watchers.setdefault(request_id, set()).add(event)
            try:
                view = await self.get(request_id)
                remaining = deadline - anyio.current_time()
                if view.status != seen or remaining <= 0:
                    return view
                with anyio.move_on_after(min(remaining, self.poll_interval)):
                    await event.wait()
            finally:
                watchers = self._watchers.get(request_id)
                if watchers is not None:
                    watchers.discard(event)
                    if not watchers:
                        del self._watchers[request_id]

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
        for event in self._watchers.get(view.id, set()):
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


class _Lost(Exception):
    """Our compare-and-set lost to a concurrent writer."""


def _human(duration: float) -> str:
    seconds = round(duration)
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"
