"""Standing approvals: made with an approval, used by matching calls, listed and revoked by approvers.

A grant lives only in the database. Every use is one conditional UPDATE (not revoked, not expired,
uses below the maximum) in the same transaction as the call's audit event, so each use is counted and
audited exactly once, and a revoke or the last use stops the grant on every replica at the next call.
Nothing is cached in a process.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals import audit
from approvals.approvers import Approver
from approvals.audit import Event, canonical_json
from approvals.db import Database
from approvals.errors import ApprovalError, InvalidDecision
from approvals.grant_terms import GrantAsk, GrantTerms, GrantView, clamp, key_digest
from approvals.models import ApprovalGrant
from approvals.request_events import request_event
from approvals.views import RequestView

_grants = ApprovalGrant.__table__  # type: ignore[attr-defined]

Clock = Callable[[], datetime]
STATES = ("live", "revoked", "used up", "expired")


class GrantNotFound(ApprovalError):
    def __init__(self, grant_id: str) -> None:
        super().__init__(f"no standing approval with id {grant_id!r}")
        self.grant_id = grant_id


def new_grant_id() -> str:
    return "grt_" + secrets.token_urlsafe(12)


async def make_grant(
    conn: AsyncConnection, view: RequestView, approver: Approver, channel: str, ask: GrantAsk, now: datetime
) -> tuple[GrantView, GrantTerms]:
    """Make the grant asked for with `view`'s approval, inside the transaction that approves it."""
    offer = view.grant_offer
    if offer is None:
        raise InvalidDecision(f"the policy for {view.tool} allows no standing approvals; approve it on its own")
    try:
        terms = clamp(offer, ask)
    except ValueError as exc:
        raise InvalidDecision(str(exc)) from None
    grant_id = new_grant_id()
    row: dict[str, object] = {
        "id": grant_id,
        "request_id": view.id,
        "agent": view.agent,
        "tool": view.tool,
        "key_names": None if offer.key is None else canonical_json(list(offer.key)),
        "key_sha256": key_digest(view.agent, view.tool, view.arguments, offer.key),
        "arguments": view.arguments_json,
        "approver": approver.name,
        "channel": channel,
        "created_at": now,
        "expires_at": now + timedelta(seconds=terms.seconds),
        "max_uses": terms.uses,
        "uses": 0,
        "policy_version": view.policy_version,
    }
    await conn.execute(insert(_grants).values(**row))
    grant = await _load(conn, grant_id)
    text = f"standing approval by {approver.name}: {grant.describe()}"
    detail = {
        "grant_id": grant.id,
        "expires_at": grant.expires_at.isoformat(),
        "max_uses": grant.max_uses,
        "key": None if offer.key is None else list(offer.key),
        "key_sha256": row["key_sha256"],
        "clamped": terms.clamped,
    }
    event = request_event(
        view,
        "grant.created",
        "granted",
        text,
        actor=approver.name,
        channel=channel,
        arguments=view.arguments_json,
        detail=detail,
    )
    await audit.append(conn, event, now)
    return grant, terms


class Grants:
    """Reading, using and revoking grants; making one is part of an approval (`ApprovalService.approve`)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def use(
        self,
        agent: str,
        tool: str,
        key_sha256: str,
        *,
        max_seconds: float,
        max_uses: int,
        event_for: Callable[[GrantView], Event],
    ) -> GrantView | None:
        """Count one call against a live grant matching it and audit it, in one transaction; None when none can.

        `max_seconds` and `max_uses` are the policy's maximum now: a grant made under a looser policy
        stops where the current one would have stopped it.
        """
        now = self.clock()
        async with self.db.write() as conn:
            rows = await conn.execute(
                select(_grants)
                .where(
                    _grants.c.agent == agent,
                    _grants.c.tool == tool,
                    _grants.c.key_sha256 == key_sha256,
                    _grants.c.revoked_at.is_(None),
                    _grants.c.expires_at > now,
                    _grants.c.uses < _grants.c.max_uses,
                )
                .order_by(_grants.c.expires_at)
            )
            for candidate in [GrantView.from_row(row._mapping) for row in rows]:
                ceiling = min(candidate.max_uses, max_uses)
                if candidate.created_at + timedelta(seconds=max_seconds) <= now or candidate.uses >= ceiling:
                    continue
                counted = await conn.execute(
                    update(_grants)
                    .where(
                        _grants.c.id == candidate.id,
                        _grants.c.revoked_at.is_(None),
                        _grants.c.expires_at > now,
                        _grants.c.uses < ceiling,
                    )
                    .values(uses=_grants.c.uses + 1)
                )
                if counted.rowcount == 1:
                    grant = await _load(conn, candidate.id)
                    await audit.append(conn, event_for(grant), now)
                    return grant
        return None

    async def get(self, grant_id: str) -> GrantView:
        async with self.db.read() as conn:
            return await _load(conn, grant_id)

    async def list(
        self, *, states: Sequence[str] = (), agent: str | None = None, tool: str | None = None, limit: int = 200
    ) -> list[GrantView]:
        """Newest first; `states` (see STATES) filters on how each grant stands now."""
        now = self.clock()
        query = select(_grants).order_by(_grants.c.created_at.desc())
        if agent:
            query = query.where(_grants.c.agent == agent)
        if tool:
            query = query.where(_grants.c.tool == tool)
        if list(states) == ["live"]:
            query = query.where(
                _grants.c.revoked_at.is_(None), _grants.c.expires_at > now, _grants.c.uses < _grants.c.max_uses
            )
        async with self.db.read() as conn:
            rows = (await conn.execute(query.limit(limit if not states else limit * 10))).all()
        grants = [GrantView.from_row(row._mapping) for row in rows]
        if states:
            grants = [g for g in grants if g.state(now) in states]
        return grants[:limit]

    async def revoke(self, grant_id: str, approver: Approver, channel: str) -> tuple[GrantView, bool]:
        """Revoke a grant; the grant and whether this call revoked it (False: it had already been revoked)."""
        now = self.clock()
        async with self.db.write() as conn:
            revoked = await conn.execute(
                update(_grants)
                .where(_grants.c.id == grant_id, _grants.c.revoked_at.is_(None))
                .values(revoked_at=now, revoked_by=approver.name)
            )
            grant = await _load(conn, grant_id)
            if revoked.rowcount != 1:
                return grant, False
            event = Event(
                kind="grant.revoked",
                outcome="revoked",
                message=f"standing approval {grant.id} revoked by {approver.name} after {grant.uses} calls",
                agent=grant.agent,
                tool=grant.tool,
                request_id=grant.request_id,
                actor=approver.name,
                channel=channel,
                detail={"grant_id": grant.id, "uses": grant.uses, "max_uses": grant.max_uses},
            )
            await audit.append(conn, event, now)
        return grant, True


async def _load(conn: AsyncConnection, grant_id: str) -> GrantView:
    row = (await conn.execute(select(_grants).where(_grants.c.id == grant_id))).first()
    if row is None:
        raise GrantNotFound(grant_id)
    return GrantView.from_row(row._mapping)
