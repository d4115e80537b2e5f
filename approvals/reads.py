"""Reading approval requests: one request, lists for the inbox and the API, decisions, the open one to re-attach to."""

from __future__ import annotations

from collections.abc import Awaitable, Collection
from datetime import datetime
from typing import overload

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals import audit
from approvals.db import Database
from approvals.errors import RequestNotFound
from approvals.feed import ChangeFeed, Until
from approvals.models import ApprovalRequest, Decision
from approvals.repeat_batch import RepeatReads
from approvals.states import OPEN, Status
from approvals.views import DecisionView, RequestView

_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]
_decisions = Decision.__table__  # type: ignore[attr-defined]

# One request by its id: read on every park and every wake-up of a held call.
_BY_ID = select(_requests).where(_requests.c.id == bindparam("id"))


class RequestReads:
    db: Database
    feed: ChangeFeed
    _repeats: RepeatReads | None = None

    async def get(self, request_id: str) -> RequestView:
        async with self.db.read(brief=True) as conn:
            return await load(conn, request_id)

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

    async def pending_by_agent(self) -> dict[str, int]:
        """How many requests each agent has waiting for a decision, most first: one flooding agent stands out."""
        count = func.count().label("n")
        query = (
            select(_requests.c.agent, count)
            .where(_requests.c.status == Status.PENDING.value)
            .group_by(_requests.c.agent)
            .order_by(count.desc(), _requests.c.agent)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return {str(agent): int(n) for agent, n in rows}

    async def requests_by_ids(self, ids: Collection[str]) -> list[RequestView]:
        """The requests among `ids` that exist, in no particular order."""
        if not ids:
            return []
        async with self.db.read() as conn:
            rows = (await conn.execute(select(_requests).where(_requests.c.id.in_(list(ids))))).mappings().all()
        return [RequestView.from_row(r) for r in rows]

    async def decisions(self, request_id: str) -> list[DecisionView]:
        query = select(_decisions).where(_decisions.c.request_id == request_id).order_by(_decisions.c.id)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            DecisionView(r["approver"], r["channel"], r["verdict"], r["reason"], audit.as_utc(r["at"])) for r in rows
        ]

    async def find_open(self, agent: str, tool: str, arguments_sha256: str) -> RequestView | None:
        """The agent's open request (pending, approved or executing) for exactly this call, to re-attach to."""
        async with self.db.read() as conn:
            return await _open_request(conn, agent, tool, arguments_sha256)

    async def find_repeat(
        self, agent: str, tool: str, arguments_sha256: str, *, ended_since: datetime
    ) -> RequestView | None:
        """The request a repeat of this call belongs to: its open one, or else the newest that ended at or after
        `ended_since` other than by the agent's own withdrawal (a repeat gets that outcome again).

        The calls asking at once share one statement (`approvals.repeat_batch`); each branch of its OR is answered
        by an index (the digest, the original digest), so the read touches only the calls' own requests."""
        if self._repeats is None:
            self._repeats = RepeatReads(self.db)
        return await self._repeats.find(agent, tool, arguments_sha256, ended_since)

    async def waiting(self) -> list[RequestView]:
        """Every request that still has a deadline ahead of it: pending (expiry) or approved (pick-up)."""
        return await self.list_requests(statuses={Status.PENDING, Status.APPROVED}, limit=1_000_000)

    async def sweepable(self, now: datetime) -> list[RequestView]:
        """What a sweep may have to act on: pending requests past their expiry or with escalation steps left
        to take, and approved ones (their pick-up window is kept in seconds, so it is checked by the caller).

        A read of the few rows that can be due, not of every waiting request: thousands of calls held
        for a decision are pending with an expiry ahead and no escalation, and are not read at all.
        """
        c = _requests.c
        query = select(_requests).where(
            or_(
                and_(c.status == Status.PENDING.value, or_(c.expires_at <= now, c.escalation.is_not(None))),
                c.status == Status.APPROVED.value,
            )
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [RequestView.from_row(r) for r in rows]

    @overload
    def wait_for_change(self, request_id: str, seen: Status, within: float) -> Awaitable[RequestView]: ...

    @overload
    def wait_for_change(
        self, request_id: str, seen: Status, within: float, until: Until | None
    ) -> Awaitable[RequestView | None]: ...

    def wait_for_change(
        self, request_id: str, seen: Status, within: float, until: Until | None = None
    ) -> Awaitable[RequestView | None]:
        """Return as soon as the request leaves `seen` (whichever process moved it), or after `within` seconds;
        given `until`, None as soon as that is set (the agent's connection ending).

        The feed's own wait is handed back to be awaited: no frame of its own for each of thousands of held calls.
        """
        return self.feed.wait_unless(request_id, seen, within, self.get, until)


async def _open_request(conn: AsyncConnection, agent: str, tool: str, arguments_sha256: str) -> RequestView | None:
    query = (
        select(_requests)
        .where(
            _requests.c.agent == agent,
            _requests.c.tool == tool,
            _requests.c.arguments_sha256 == arguments_sha256,
            _requests.c.status.in_([s.value for s in OPEN]),
        )
        .order_by(_requests.c.created_at.asc())
        .limit(1)
    )
    row = (await conn.execute(query)).mappings().first()
    return None if row is None else RequestView.from_row(row)


async def load(conn: AsyncConnection, request_id: str) -> RequestView:
    row = (await conn.execute(_BY_ID, {"id": request_id})).mappings().first()
    if row is None:
        raise RequestNotFound(request_id)
    return RequestView.from_row(row)


async def approvals_of(conn: AsyncConnection, request_id: str) -> list[str]:
    query = (
        select(_decisions.c.approver)
        .where(_decisions.c.request_id == request_id, _decisions.c.verdict == "approve")
        .order_by(_decisions.c.id)
    )
    return list(dict.fromkeys((await conn.execute(query)).scalars()))


_PENDING_OF = select(func.count()).where(
    _requests.c.agent == bindparam("agent"), _requests.c.status == Status.PENDING.value
)


async def pending_of(conn: AsyncConnection, agent: str) -> int:
    """How many of the agent's requests wait for a decision."""
    return int((await conn.execute(_PENDING_OF, {"agent": agent})).scalar_one())
