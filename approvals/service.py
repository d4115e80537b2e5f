"""The approval use cases. Channels (API, CLI, web, Slack) and the scheduler act only through here.

Every state change is one compare-and-set UPDATE plus its audit event in the same transaction,
so approve, reject, timeout and cancel can race from any number of tasks or replicas and
exactly one of them wins. The audit event is also the change's entry in the change feed
(`approvals.feed`), which every process hears; this module never calls a listener itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from approvals import audit, driver_sql
from approvals.approvers import Approver, ApproverDirectory, may_decide
from approvals.audit import Event, canonical_json
from approvals.audit_batch import AuditBatches
from approvals.db import Database
from approvals.decision_batches import DecisionBatches
from approvals.edits import describe_edits
from approvals.errors import AlreadyOpen, InvalidDecision, NotAllowed
from approvals.escalation import EscalationCases, steps_json
from approvals.execution import LocalStarts
from approvals.feed import ChangeFeed
from approvals.grant_terms import GrantAsk
from approvals.grants import Grants, make_grant
from approvals.history import AuditHistory
from approvals.models import ApprovalRequest, Decision
from approvals.park_batch import Park, ParkBatches
from approvals.reads import RequestReads, approvals_of, load
from approvals.request_events import bound_to, decision_event, edited_values, refusal_event, shown_with, terms_of
from approvals.states import EndReason, Status
from approvals.story import describe, ending
from approvals.transitions import Clock, already, request_event
from approvals.views import DecisionOutcome, NewRequest, RequestView

log = logging.getLogger(__name__)

_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]
_decisions = Decision.__table__  # type: ignore[attr-defined]
_NEW_FIELDS = tuple(f.name for f in fields(NewRequest))

# Channels that may decide any request their approver may decide: the approver API and the CLI on top of it.
# Every other channel (web, slack) decides only requests whose policy names it.
ALWAYS_DECIDES = frozenset({"api", "cli"})


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_request_id() -> str:
    return "apr_" + secrets.token_urlsafe(16)


def arguments_digest(arguments_json: str) -> str:
    return hashlib.sha256(arguments_json.encode()).hexdigest()


def open_key(agent: str, tool: str, arguments_sha256: str) -> str:
    """The identity of a call, held by its one open request (approval_request.open_key; migration 0003)."""
    return hashlib.sha256(canonical_json([agent, tool, arguments_sha256]).encode()).hexdigest()


def channel_may_decide(view: RequestView, channel: str) -> bool:
    return channel in ALWAYS_DECIDES or channel in view.channels


class ApprovalService(DecisionBatches, EscalationCases, RequestReads):
    """The use cases that change requests; reading them is `RequestReads`."""

    def __init__(
        self,
        db: Database,
        approvers: ApproverDirectory,
        *,
        clock: Clock = utcnow,
        feed: ChangeFeed | None = None,
    ) -> None:
        self.db = db
        self.approvers = approvers
        self.clock = clock
        self.feed = feed or ChangeFeed(db)
        self.history = AuditHistory(db)
        self.batches = AuditBatches(db)
        self.grants = Grants(db, lambda: self.clock())
        # Waiters of this process that can forward a call as soon as it is approved (approvals.execution).
        self.starts = LocalStarts()
        self.parks = ParkBatches(self._write, _created)
        # Plain approvals and recorded results arriving together are written together (approvals.decision_batches).
        self._batch_decisions()

    # ---- writing

    async def record(self, event: Event) -> None:
        """Audit something that changes no request (a call allowed, denied or limited; a refusal).

        Returns once the event is committed. Events recorded at the same time share write
        transactions (`approvals.audit_batch`); a request event is a change and is written on its own.
        """
        if not event.kind.startswith("request."):
            # A call allowed or refused wakes nobody: no feed to poke, no other process to notify.
            await self.batches.append(event, self.clock())
            return
        async with self._write() as conn:
            await audit.append(conn, event, self.clock())

    async def create(self, new: NewRequest, *, max_pending: int | None = None) -> RequestView:
        """Park a call. Raises AlreadyOpen when the same call has an open request (it arrived at the same time),
        TooManyPending when the agent has `max_pending` pending (counted in the serialised write)."""
        now = self.clock()
        arguments_json = canonical_json(dict(new.arguments))
        digest = arguments_digest(arguments_json)
        row: dict[str, Any] = {
            # Shallow: every field that holds more than a value is replaced by its stored form below.
            **{name: getattr(new, name) for name in _NEW_FIELDS},
            "id": new.id or new_request_id(),
            # Not canonical: the keys keep the order the policy's selection gave them, which is the order shown.
            "context": json.dumps([i.as_json() for i in new.context], ensure_ascii=False, allow_nan=False)
            if new.context
            else None,
            "arguments": arguments_json,
            "arguments_sha256": digest,
            "editable": canonical_json(list(new.editable)) if new.editable else None,
            "escalation": steps_json(new.escalation),
            "open_key": open_key(new.agent, new.tool, digest),
            "grant_offer": None if new.grant_offer is None else new.grant_offer.to_json(),
            "approvers": canonical_json(list(new.approvers)),
            "channels": canonical_json(list(new.channels)),
            "created_at": now,
            "expires_at": now + timedelta(seconds=new.timeout_seconds),
            "status": Status.PENDING.value,
            "status_changed_at": now,
            "agent_waiting": True,
        }
        for attempt in (1, 2):
            try:
                # Parks arriving together are made in one transaction (approvals.park_batch); returns once committed.
                view, seq = await self.parks.park(Park(row, (new, arguments_json), max_pending, now))
                break
            except IntegrityError as exc:
                # The unique open key: an identical call won the race to park. Its request is the one to join,
                # also when it was decided in the moment since (this call then gets that outcome, as a repeat).
                existing = await self.find_repeat(new.agent, new.tool, digest, ended_since=now)
                if existing is not None:
                    raise AlreadyOpen(existing.id) from exc
                if attempt == 2:
                    raise
                # It ended by its agent's own withdrawal, which a repeat does not inherit: the key is free again.
        self.feed.made(view, seq)
        return view

    async def approve(
        self,
        request_id: str,
        approver: Approver,
        channel: str,
        reason: str | None = None,
        *,
        grant: GrantAsk | None = None,
        edits: Mapping[str, Any] | None = None,
    ) -> DecisionOutcome:
        """Approve; with `grant`, also allow the same call for a while (approvals.grants), in the same transaction.

        With `edits` (argument path -> new value, only the request's `editable` paths), approve the call as
        changed. The gateway checks an edited call against the tool's schema and policy first
        (gateway.edited); here the paths are checked again and the change is bound into the audit chain.
        """
        return await self._decide(request_id, approver, channel, "approve", reason, grant, edits or {})

    async def reject(self, request_id: str, approver: Approver, channel: str, reason: str | None) -> DecisionOutcome:
        return await self._decide(request_id, approver, channel, "reject", reason)

    async def precheck(self, request_id: str, approver: Approver, channel: str, verdict: str) -> RequestView:
        """Could `approver` decide this request through `channel` now? Asked before a channel asks for more.

        Refuses exactly as a decision would: a refusal is audited and raises NotAllowed; a request that
        has left `pending` raises AlreadyDecided. Nothing is decided here.
        """
        current = await self.get(request_id)
        why = None
        if not channel_may_decide(current, channel):
            why = f"this request is not decided through {channel} (its channels: {', '.join(current.channels)})"
        elif not may_decide(approver, current.approvers):
            why = "not among the approvers this request allows"
        if why is not None:
            await self.record(refusal_event(current, approver, channel, verdict, why))
            raise NotAllowed(approver.name, request_id, why)
        if current.status != Status.PENDING:
            raise already(current)
        return current

    async def _decide(
        self,
        request_id: str,
        approver: Approver,
        channel: str,
        verdict: str,
        reason: str | None,
        grant: GrantAsk | None = None,
        edits: Mapping[str, Any] | None = None,
    ) -> DecisionOutcome:
        reason = (reason or "").strip() or None
        if verdict == "approve" and grant is None and not edits:
            done = await self._approve_at_once(request_id, approver, channel, reason)
            if done is not None:
                return done
        # Checking who may decide needs no write lock; only a refusal is written (to the audit log).
        current = await self.precheck(request_id, approver, channel, verdict)
        if verdict == "approve" and current.damage:
            raise InvalidDecision(describe(current))
        if verdict == "reject" and reason is None and current.reject_reason_required:
            raise InvalidDecision("the policy for this tool requires a reason to reject")
        if grant is not None and (current.grant_offer is None or current.quorum > 1):
            # Refused before anything is written: the approver asked for more than an approval.
            raise InvalidDecision(f"the policy for {current.tool} allows no standing approvals; approve it on its own")
        edited = edited_values(current, edits or {})
        if grant is not None and edited:
            # A grant allows the agent's own call again; a changed call is a one-off decision about that call.
            raise InvalidDecision(
                "a standing approval cannot be made with changes: approve the changed call on its own"
            )
        now = self.clock()
        try:
            async with self._write() as conn:
                decision: dict[str, Any] = {"approver": approver.name, "channel": channel, "verdict": verdict}
                decision.update(reason=reason, policy_version=current.policy_version, request_id=request_id, at=now)
                await driver_sql.insert(conn, _decisions, [decision])
                if verdict == "approve" and current.quorum == 1:
                    # The one approval it needs: nobody else's can be recorded while it is pending.
                    approvals = [approver.name]
                else:
                    approvals = await approvals_of(conn, request_id)
                if verdict == "approve" and len(approvals) < current.quorum:
                    # One approval of several: a decision, not yet a transition. Still only while pending.
                    text = f"approval {len(approvals)} of {current.quorum}"
                    moved = await self._touch(conn, current, Status.PENDING)
                    if moved is None:
                        raise _Lost()
                    await audit.append(conn, decision_event(moved, approver, channel, "approval", reason, text), now)
                    progress = f"{len(approvals)} of {current.quorum} approvals"
                    return DecisionOutcome(moved, len(approvals), current.quorum, progress)
                new = Status.APPROVED if verdict == "approve" else Status.REJECTED
                by = ", ".join(approvals) if verdict == "approve" else approver.name
                values: dict[str, Any] = {"decided_by": by, "decided_via": channel, "decision_reason": reason, **edited}
                if new is Status.REJECTED:
                    values["ended_because"] = EndReason.REJECTED.value
                moved = await self._cas(conn, current, {Status.PENDING}, new, now, **values)
                if moved is None:
                    raise _Lost()
                text = f"{new.value} by {by}" + (f" with changes ({describe_edits(moved.edits)})" if edited else "")
                text += f": {reason}" if reason else ""
                event = decision_event(moved, approver, channel, new.value, reason, text)
                if grant is None and new is Status.APPROVED:
                    # Appended with the start, when a waiter here starts it with its approval (one insert).
                    await self._start_with_decision(conn, moved, now, event)
                    return DecisionOutcome(moved, len(approvals), current.quorum, text)
                await audit.append(conn, event, now)
                if grant is None or new is not Status.APPROVED:
                    return DecisionOutcome(moved, len(approvals), current.quorum, text)
                made, terms = await make_grant(conn, current, approver, channel, grant, now)
                note = terms.note(current.grant_offer) if current.grant_offer else ""
                text = f"{text}; the same call is allowed until {made.expires_at:%H:%M} UTC, {made.max_uses} times"
                text += f" ({note})" if note else ""
                return DecisionOutcome(moved, len(approvals), current.quorum, text, made)
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
            raise already(latest) from None

    def _may_approve(self, view: RequestView, approver: Approver, channel: str) -> bool:
        return channel_may_decide(view, channel) and may_decide(approver, view.approvers)

    async def expire(self, request_id: str) -> bool:
        """Time ran out: a pending request's decision time, or an approved one's pick-up window.

        Idempotent: returns False when the request is not (or not yet) due.
        """
        now = self.clock()
        async with self._write() as conn:
            current = await load(conn, request_id)
            if current.status == Status.PENDING and current.expires_at <= now:
                because = EndReason.TIMED_OUT
            elif current.status == Status.APPROVED and current.deadline <= now:
                because = EndReason.NOT_PICKED_UP
            else:
                return False
            moved = await self._cas(
                conn, current, {current.status}, Status.EXPIRED, now, ended_because=because.value, agent_waiting=False
            )
            if moved is None:
                return False
            await audit.append(conn, request_event(moved, "request.expired", "expired", ending(moved)), now)
        return True

    async def attach(self, request_id: str, agent: str, how: str) -> RequestView:
        """The agent is waiting for this request again (it repeated the call, or asked to wait). Always audited."""
        now = self.clock()
        async with self._write() as conn:
            current = await load(conn, request_id)
            if current.is_terminal:
                return current
            await conn.execute(update(_requests).where(_requests.c.id == request_id).values(agent_waiting=True))
            view = await load(conn, request_id)
            text = f"{agent} is waiting for the decision again ({how})"
            if current.agent_waiting:
                text = f"{agent} is also waiting for this request ({how})"
            await audit.append(conn, request_event(view, "request.attached", "attached", text), now)
        return view

    async def detach(self, request_id: str, why: str) -> RequestView | None:
        """The agent stopped waiting but did not withdraw: the request stays decidable."""
        now = self.clock()
        async with self._write() as conn:
            current = await load(conn, request_id)
            if current.is_terminal or not current.agent_waiting or current.status == Status.EXECUTING:
                return None
            await conn.execute(update(_requests).where(_requests.c.id == request_id).values(agent_waiting=False))
            view = await load(conn, request_id)
            await audit.append(conn, request_event(view, "request.detached", "detached", why), now)
        return view

    async def withdraw(self, request_id: str, why: str, *, policy: Mapping[str, str] | None = None) -> bool:
        """The agent withdrew its call, or a `policy` change denies it now (`why`, its rule's message, is kept
        as the request's `error` for the story). Never undoes an execution that has begun."""
        now = self.clock()
        because, note = (EndReason.WITHDRAWN, None) if policy is None else (EndReason.POLICY_WITHDRAWN, why)
        async with self._write() as conn:
            current = await load(conn, request_id)
            moved = await self._cas(
                conn,
                current,
                {Status.PENDING, Status.APPROVED},
                Status.CANCELLED,
                now,
                ended_because=because.value,
                agent_waiting=False,
                error=note,
            )
            if moved is None:
                return False
            text = why if policy is None else ending(moved)
            await audit.append(
                conn, request_event(moved, "request.cancelled", "cancelled", text, detail=dict(policy or {})), now
            )
        return True

    async def set_slack_ts(self, request_id: str, channel: str, ts: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(_requests).where(_requests.c.id == request_id).values(slack_channel=channel, slack_ts=ts)
            )

    async def claim_reminder(self, request_id: str) -> RequestView | None:
        """Win the right to send this pending request's one reminder; None when it is not due or already sent."""
        now = self.clock()
        async with self._write() as conn:
            claimed = await conn.execute(
                update(_requests)
                .where(
                    _requests.c.id == request_id,
                    _requests.c.status == Status.PENDING.value,
                    _requests.c.reminded_at.is_(None),
                )
                .values(reminded_at=now)
            )
            if claimed.rowcount != 1:
                return None
            view = await load(conn, request_id)
            await audit.append(conn, request_event(view, "request.reminded", "reminded", "approvers reminded"), now)
        return view


def _created(view: RequestView, asked: tuple[NewRequest, str]) -> Event:
    """The `request.created` event of a request just made (`view`, as stored) for `asked` (and its arguments)."""
    new, arguments_json = asked
    text = f"held for approval: {new.title} ({new.reason})" if new.title else f"held for approval: {new.reason}"
    detail = {
        **shown_with(new),
        **terms_of(new),
        "rule": new.rule,
        "expires_at": view.expires_at.isoformat(),
        "quorum": new.quorum,
        **bound_to(view),
    }
    return request_event(view, "request.created", "held", text, arguments=arguments_json, detail=detail)


class _Lost(Exception):
    """Our compare-and-set lost to a concurrent writer."""
