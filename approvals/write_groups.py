"""Group commit for request transitions: the changes that arrive together share one write transaction.

A decision, the start of its execution and the recording of its result are each a write
transaction of their own (`approvals.transitions`): the chain lock (SQLite's write lock;
PostgreSQL's advisory lock, shared by every replica), a compare-and-set, an audit append and a
commit that waits for the disk. With many decisions in flight they queue one behind another, and
each waits for every commit ahead of it.

Here the writer that finds no transaction in flight opens one at once, so a lone change waits for
nothing. Writers that arrive meanwhile queue; when the first writer's block is done, each queued
writer runs its block in the same transaction, in turn, inside a savepoint of its own (its statements
run through the driver, `approvals.driver_sql`, like the blocks' hot statements), and one
commit ends them all. A block that fails (a compare-and-set lost, a unique key taken) rolls back
its own savepoint and raises to its own caller only; the others still commit. The first writer's
block needs no savepoint (two statements fewer per transaction): nothing precedes it, so when it
fails the whole transaction is rolled back, and the writers queued meanwhile open the next. Every writer's
block returns (or raises) only once the group's transaction has ended, so what a writer reads
next shows what it lost to; when that commit fails every writer in the group gets the error:
nothing is acknowledged that is not durable.

Blocks run one after another, never interleaved, so each sees the changes (and the audit chain's
head) of the blocks before it exactly as if they had been separate transactions. Work every block
would repeat (PostgreSQL's notification) is asked for with `before_commit` and done once per group.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import anyio
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals import driver_sql
from approvals.audit import forget_head
from approvals.errors import StoreUnavailable

# Enough to take in every change of a burst in a few transactions, few enough that the writers
# queued behind one group are not kept waiting long by it.
MAX_GROUP = 64


# conn.info key: the actions blocks asked to run once, just before the group's commit (see `before_commit`).
_BEFORE_COMMIT = "countersign_before_commit"


def before_commit(conn: AsyncConnection, name: str, action: Callable[[], Awaitable[None]]) -> None:
    """Run `action` once in this group's transaction, after its last block and before the commit.

    Asked for by several blocks under the same `name`, it runs once. A block that asks and then fails
    still has it run: only for actions that are harmless when nothing changed (a notification).
    """
    conn.info.setdefault(_BEFORE_COMMIT, {})[name] = action


@dataclass(eq=False)
class _Writer:
    # Set when it is this writer's turn: either to run its block in `conn`, or (`leads`) to open the next group.
    turn: anyio.Event = field(default_factory=anyio.Event)
    conn: AsyncConnection | None = None
    leads: bool = False
    # Set by the writer when its block is done (successfully or not), so the leader can go on.
    done: anyio.Event = field(default_factory=anyio.Event)
    committed: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None
    # Its block failed without a savepoint to roll back to (see `WriteGroups.write`): the group cannot commit.
    spoiled: bool = False
    # Its block keeps its deferrable inserts for the group's commit (see `WriteGroups.write`).
    defer: bool = False


@asynccontextmanager
async def _savepoint(conn: AsyncConnection) -> AsyncIterator[None]:
    """A block's savepoint, its statements run through the driver (`approvals.driver_sql`): rolled back to
    (and dropped) when the block raises.

    A block that is done leaves its savepoint in place, unreleased: releasing it would be a round trip
    that changes nothing the group's commit does not (it ends every savepoint in it). The next block's
    savepoint, of the same name, is taken inside it, and `ROLLBACK TO` names the latest of that name, so a
    failing block undoes its own changes only, and forgets the inserts it kept unsent. Blocks never overlap,
    so one name serves them all."""
    kept = driver_sql.kept(conn)
    await driver_sql.plain(conn, f"SAVEPOINT {_SAVEPOINT}")
    try:
        yield
    except BaseException:
        driver_sql.keep_only(conn, kept)
        await driver_sql.plain(conn, f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        await driver_sql.plain(conn, f"RELEASE SAVEPOINT {_SAVEPOINT}")
        raise


_SAVEPOINT = "countersign_block"


class WriteGroups:
    """Runs write blocks in as few transactions as the load allows; see the module's description."""

    def __init__(
        self, open_write: Callable[[], AbstractAsyncContextManager[AsyncConnection]], *, max_group: int = MAX_GROUP
    ) -> None:
        if max_group < 1:
            raise ValueError(f"max_group must be at least 1, not {max_group}")
        self._open_write = open_write
        self.max_group = max_group
        self._queue: deque[_Writer] = deque()
        self._writing = False
        # How many transactions carried how many blocks (size -> transactions).
        self.sizes: Counter[int] = Counter()

    @property
    def queued(self) -> int:
        """Writers waiting for their turn (in the group under way or the next)."""
        return len(self._queue)

    @asynccontextmanager
    async def write(self, *, savepoint: bool = True, defer: bool = False) -> AsyncIterator[AsyncConnection]:
        """A write transaction (shared with the writers queued beside this one); exits once it has committed.

        `savepoint=False`: a block that raises only when the database fails (its outcomes, such as a
        compare-and-set lost, are told after it) needs no savepoint, one statement fewer. If it raises all
        the same, there is nothing to roll back to: the group's transaction is rolled back whole, and every
        other block in it fails with `StoreUnavailable`.

        `defer`: the block's deferrable inserts (its audit events; `approvals.driver_sql.insert`) are kept and
        sent together with those of the other blocks that defer, just before the group commits: on PostgreSQL
        a round trip fewer per insert under the chain's lock. Only for blocks that read back nothing they
        insert that way but the chain's head (kept here) and, through `driver_sql.flush(touching=…)`, what
        they name. A block that does not defer finds every kept row sent before it begins.
        """
        me = _Writer(defer=defer)
        # Shielded like every database write: a writer cancelled while queued must still take its turn.
        with anyio.CancelScope(shield=True):
            if self._writing:
                self._queue.append(me)
                await me.turn.wait()
            else:
                self._writing = True
                me.leads = True
        if me.leads:
            async with self._lead(me) as conn:
                yield conn
            return
        assert me.conn is not None
        own: Exception | None = None
        try:
            with anyio.CancelScope(shield=True):
                driver_sql.defer(me.conn, defer)
                if savepoint:
                    async with _savepoint(me.conn):
                        yield me.conn
                else:
                    yield me.conn
        except Exception as exc:  # rolled back to its savepoint; raised once the group has ended
            own = exc
            forget_head(me.conn)
            me.spoiled = not savepoint
        finally:
            driver_sql.defer(me.conn, False)
            me.done.set()
        # Even a block that failed waits: what it lost to may be in this very group, committed only then.
        with anyio.CancelScope(shield=True):
            await me.committed.wait()
        if own is not None:
            raise own
        if me.error is not None:
            raise me.error

    @asynccontextmanager
    async def _lead(self, me: _Writer) -> AsyncIterator[AsyncConnection]:
        group = [me]
        try:
            async with self._open_write() as conn:
                conn.info.pop(_BEFORE_COMMIT, None)
                # The leader's block is the transaction's first, so it needs no savepoint: when it fails, the
                # transaction is rolled back whole (nothing else is in it yet) and raises to the leader alone,
                # and the writers that queued meanwhile go on in the next group.
                driver_sql.defer(conn, me.defer)
                try:
                    yield conn
                finally:
                    driver_sql.defer(conn, False)
                # The others go in turn, then one commit for all.
                while self._queue and len(group) < self.max_group:
                    if not self._queue[0].defer:
                        # It may read what the blocks before it inserted: nothing is kept from it.
                        await driver_sql.flush(conn)
                    writer = self._queue.popleft()
                    group.append(writer)
                    writer.conn = conn
                    writer.turn.set()
                    await writer.done.wait()
                    if writer.spoiled:
                        raise StoreUnavailable(
                            "the write was rolled back: a change it shared a transaction with failed half-way"
                        )
                for action in conn.info.pop(_BEFORE_COMMIT, {}).values():
                    await action()
        except BaseException as exc:
            # The commit (or the transaction itself) failed: no block of this group is durable.
            for writer in group[1:]:
                writer.error = exc
            raise
        finally:
            self.sizes[len(group)] += 1
            for writer in group[1:]:
                writer.committed.set()
            self._hand_on()

    def _hand_on(self) -> None:
        """The group has ended: the first writer still queued opens the next one, or nobody is writing."""
        if self._queue:
            writer = self._queue.popleft()
            writer.leads = True
            writer.turn.set()
        else:
            self._writing = False
