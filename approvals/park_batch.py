"""Group commit for new requests: the calls parked together are made durable in one write transaction.

A burst of held calls used to make each request in a write block of its own: a savepoint, the
agent's pending count, the insert, a read back of the row, the audit append and the savepoint's
release, each a round trip on the event loop (on SQLite, each a hand-over to the driver's thread).
Group commit (`approvals.write_groups`) already shared the commit; the round trips stayed per call.

Here the caller that finds no park in flight writes at once, so a lone park waits for nothing.
Parks that arrive while a write is in flight queue, and the next write takes all of them (up to
`max_batch`): one grouped pending count, one insert of N rows, one read back, one append of N
`request.created` events, one commit. Each caller returns only once the transaction that holds
its row and its event has committed; when that transaction fails every caller in it gets the
error, so no agent is told its call is held before the request is durable.

A park refused on its own (the agent has too many pending; an identical call is open, so the
unique open key refuses the row) fails only its own caller: when the insert of the batch is
refused, it is rolled back to its savepoint and the rows go in one by one, each in a savepoint of
its own, exactly as separate transactions would have had them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals import audit
from approvals.audit import Event
from approvals.errors import RequestNotFound, StoreUnavailable, TooManyPending
from approvals.models import ApprovalRequest
from approvals.states import Status
from approvals.turns import Turns
from approvals.views import RequestView

# As many as a write group takes: a burst is made durable in a few transactions, none of them long.
MAX_BATCH = 64

_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]
_INSERT = insert(_requests)
_BY_IDS = select(_requests).where(_requests.c.id.in_(bindparam("ids", expanding=True)))
_PENDING_BY_AGENT = (
    select(_requests.c.agent, func.count())
    .where(_requests.c.agent.in_(bindparam("agents", expanding=True)), _requests.c.status == Status.PENDING.value)
    .group_by(_requests.c.agent)
)

# The `request.created` event of a request as stored (the row read back), given what the caller asked for.
Describe = Callable[[RequestView, Any], Event]


@dataclass(eq=False)
class Park:
    """One request to make: its row, what its event is built from, and (once written) the outcome."""

    row: dict[str, Any]
    asked: Any
    max_pending: int | None
    at: datetime
    woken: anyio.Event = field(default_factory=anyio.Event)
    leads: bool = False
    view: RequestView | None = None
    seq: int = 0
    error: BaseException | None = None


class ParkBatches:
    """Makes requests in as few write transactions as the load allows; see the module's description."""

    def __init__(
        self,
        write: Callable[[], AbstractAsyncContextManager[AsyncConnection]],
        describe: Describe,
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._write = write
        self._describe = describe
        self._turns = Turns(self._write_batch, max_batch)
        # How many transactions made how many requests (size -> transactions).
        self.sizes: Counter[int] = Counter()

    async def park(self, park: Park) -> tuple[RequestView, int]:
        """The request as stored and its creation's event number, once committed; raises what refused it."""
        await self._turns.take(park)
        if park.error is not None:
            raise park.error
        assert park.view is not None
        return park.view, park.seq

    async def _write_batch(self, batch: list[Park]) -> None:
        try:
            async with self._write() as conn:
                await self._make(conn, batch)
            self.sizes[len(batch)] += 1
        except BaseException as exc:
            # Nothing of this transaction is durable: every park in it fails, whatever it had on its own.
            failed = exc if isinstance(exc, Exception) else StoreUnavailable("the write was interrupted")
            for park in batch:
                park.view, park.error = None, failed
            if not isinstance(exc, Exception):
                raise
        finally:
            for park in batch:
                if park.view is None and park.error is None:
                    park.error = StoreUnavailable("the write ended before this request was made")

    async def _make(self, conn: AsyncConnection, batch: Sequence[Park]) -> None:
        counted = await _pending(conn, batch)
        admitted = _admit(batch, Counter(counted))
        if not admitted:
            return
        try:
            async with conn.begin_nested():
                await conn.execute(_INSERT, [park.row for park in admitted])
            made = admitted
        except IntegrityError:
            # Some row is refused (an identical call's request is open): each goes in on its own, counted in turn.
            made = await _one_by_one(conn, batch, Counter(counted))
        if not made:
            return
        rows = (await conn.execute(_BY_IDS, {"ids": [park.row["id"] for park in made]})).mappings().all()
        views = {row["id"]: RequestView.from_row(row) for row in rows}
        events: list[tuple[Event, datetime]] = []
        for park in made:
            view = views.get(park.row["id"])
            if view is None:  # not possible inside the transaction that inserted it; never acknowledge it
                raise RequestNotFound(park.row["id"])
            park.view = view
            events.append((self._describe(view, park.asked), park.at))
        for park, seq in zip(made, await audit.append_many(conn, events), strict=True):
            park.seq = seq


async def _pending(conn: AsyncConnection, batch: Sequence[Park]) -> Counter[str]:
    """The pending requests of each agent in the batch that has a limit, read once for all of them."""
    agents = sorted({park.row["agent"] for park in batch if park.max_pending is not None})
    if not agents:
        return Counter()
    return Counter({agent: int(n) for agent, n in await conn.execute(_PENDING_BY_AGENT, {"agents": agents})})


def _admit(batch: Sequence[Park], pending: Counter[str]) -> list[Park]:
    """The parks within their agents' pending limits, counted in order as if each were written before the next."""
    admitted = []
    for park in batch:
        park.error = None
        if _over(park, pending):
            continue
        pending[park.row["agent"]] += 1
        admitted.append(park)
    return admitted


async def _one_by_one(conn: AsyncConnection, batch: Sequence[Park], pending: Counter[str]) -> list[Park]:
    """Each row in a savepoint of its own, counted in turn: one refused row fails only its own park."""
    made = []
    for park in batch:
        park.error = None
        if _over(park, pending):
            continue
        try:
            async with conn.begin_nested():
                await conn.execute(_INSERT, park.row)
        except IntegrityError as exc:
            park.error = exc
            continue
        pending[park.row["agent"]] += 1
        made.append(park)
    return made


def _over(park: Park, pending: Counter[str]) -> bool:
    """Refuses `park` (TooManyPending) when its agent already has its limit pending."""
    agent = park.row["agent"]
    if park.max_pending is not None and pending[agent] >= park.max_pending:
        park.error = TooManyPending(agent, park.max_pending)
        return True
    return False
