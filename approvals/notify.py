"""Wake-ups for the change feed on PostgreSQL: NOTIFY when a request changes, LISTEN on one connection per process.

Every write transaction that appends a request event also runs `pg_notify` (see `announce`).
PostgreSQL delivers a notification only when its transaction commits, so a listener that is
woken always finds the change already readable. The notification carries nothing: it only says
"read the feed now", and the feed reads everything after its cursor. A notification that is lost
(the listening connection dropped, a replica restarting) therefore loses nothing either: on every
(re)connection the listener wakes the feed once to catch up, and the feed keeps a slow safety poll.

The listening connection is a plain asyncpg connection of its own, outside SQLAlchemy's pool: it
must stay open and idle for the life of the process, which a pooled connection never is.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger(__name__)

CHANNEL = "countersign_feed"
# How the listening connection shows up in pg_stat_activity.
APPLICATION_NAME = "countersign-feed"
# An idle connection can die without a word (a NAT or a failover); probe it this often.
_PROBE_SECONDS = 10.0
_MAX_BACKOFF = 30.0


async def announce(conn: AsyncConnection) -> None:
    """Wake every process listening on the database once this (PostgreSQL) transaction commits."""
    await conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def listen_dsn(sqlalchemy_url: str) -> str:
    """The plain PostgreSQL DSN asyncpg connects with, from the gateway's `postgresql+asyncpg://` URL."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """Keeps one LISTEN connection open, reconnecting with backoff; calls `wake` on every notification.

    `wake` is also called right after each (re)connection, because whatever was committed while
    the connection was down sent its notification to nobody. `on_state(True/False)` says whether
    notifications are arriving, so the feed can poll fast while they are not.
    """

    def __init__(self, dsn: str, wake: Callable[[], None], on_state: Callable[[bool], None]) -> None:
        self.dsn = dsn
        self.wake = wake
        self.on_state = on_state
        self.connections = 0

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._listen_once()
            except Exception as exc:  # a lost database must never take the gateway down
                log.warning("change feed: notifications lost (%s); reconnecting in %.1fs", _describe(exc), delay)
            else:
                delay = 0.5
            await anyio.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 2, _MAX_BACKOFF)

    async def _listen_once(self) -> None:
        conn: Any = await asyncpg.connect(self.dsn, timeout=10, server_settings={"application_name": APPLICATION_NAME})
        lost = anyio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, lambda *_args: self.wake())
            self.connections += 1
            self.on_state(True)
            self.wake()  # catch up on what was committed while nobody listened
            if self.connections > 1:
                log.info("change feed: listening for notifications again")
            while not lost.is_set():
                with anyio.move_on_after(_PROBE_SECONDS):
                    await lost.wait()
                if not lost.is_set():
                    with anyio.fail_after(10):
                        await conn.fetchval("SELECT 1")
            raise ConnectionError("the listening connection was closed")
        finally:
            self.on_state(False)
            conn.terminate()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
