"""Who is calling a tool, how to tell that they left or withdrew, and the progress line back to them."""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import anyio

from gateway.identity import AgentIdentity

log = logging.getLogger(__name__)

T = TypeVar("T")

Progress = Callable[[float, float | None, str | None], Awaitable[None]]
DirectNotice = Callable[[float, str], Awaitable[bool]]

# A client that gives up on its own read timeout cancels with a reason like "Request timed out" or
# "timed out after 60.0s"; that is the agent detaching, not withdrawing its request.
_TIMEOUT_REASON = re.compile(r"time[sd]?\s*out|timeout", re.IGNORECASE)


# What the audit log says when the agent's HTTP connection went away without a cancel.
CONNECTION_CLOSED = "the agent's connection closed"


class Departure(enum.Enum):
    TIMED_OUT = "timed_out"  # the client gave up on its own timeout and said so in its cancel: it may come back
    CLOSED = "closed"  # the connection went away without a cancel: it may come back
    CANCELLED = "cancelled"  # the client cancelled on purpose: a withdrawal


@dataclass(frozen=True)
class Left:
    """How an agent's call ended early, and the client's own words when it sent a cancel."""

    kind: Departure
    reason: str = ""

    def describe(self) -> str:
        said = f" ({self.reason})" if self.reason else ""
        if self.kind is Departure.TIMED_OUT:
            return f"the agent's client gave up waiting{said}"
        if self.kind is Departure.CLOSED:
            return CONNECTION_CLOSED
        return f"the agent cancelled the call{said}"


class _Identified(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=_Identified)


@dataclass
class TaskSlot:
    """Given by a caller that asked for a task: a held call records its request id here and returns at once."""

    request_id: str | None = None

    def took(self, request: R) -> R:
        self.request_id = request.id
        return request


class Gone:
    """A connection's end: a flag that runs callbacks when it is set, so a held call can watch it without a task.

    Set once, from the task that reads the connection (`gateway.post_stream`); never cleared.
    """

    __slots__ = ("_callbacks", "_set")

    def __init__(self) -> None:
        self._set = False
        self._callbacks: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` once when the flag is set (at once if it is); returns what takes it back."""
        if self._set:
            callback()
            return _nothing
        self._callbacks.append(callback)

        def forget() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return forget

    async def wait(self) -> None:
        if self._set:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        forget = self.on_set(wake)
        try:
            await done
        finally:
            forget()


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Caller:
    """Who is calling, and how to tell that they went away or withdrew."""

    agent: str
    session: str
    disconnected: Gone | None = None
    # Returns the reason when the client explicitly cancelled this request (notifications/cancelled).
    cancel_reason: Callable[[], Awaitable[str | None]] | None = None
    # Set when the call asked to become a task (gateway.tasks): it is not held, its request is the task.
    task: TaskSlot | None = None
    # The agent's groups (configured, or from its JWT), for policy conditions on `agent.groups`.
    groups: tuple[str, ...] = ()

    @property
    def identity(self) -> AgentIdentity:
        return AgentIdentity(self.agent, self.groups)

    @property
    def gone(self) -> bool:
        return self.disconnected is not None and self.disconnected.is_set()

    async def how_it_left(self) -> Left:
        """Why the call ended early: a cancel on the client's timeout, a closed connection, or a withdrawal."""
        reason = None if self.cancel_reason is None else await self.cancel_reason()
        if reason is None:
            return Left(Departure.CLOSED)
        reason = " ".join(reason.split())[:200]
        return Left(Departure.TIMED_OUT if _TIMEOUT_REASON.search(reason) else Departure.CANCELLED, reason)


class ProgressLine:
    """Keeps progress values increasing across our own notices and relayed upstream progress."""

    def __init__(self, send: Progress | None) -> None:
        self._send = send
        self.value = 0.0
        # Our own notices may go a quicker way than `send` (gateway.stream_progress.StreamProgress) until the
        # first thing goes by `send`: from then on all do, so nothing overtakes what is already on its way.
        self._direct: DirectNotice | None = getattr(send, "notice_direct", None)
        self._now: Callable[[float, str], bool] | None = getattr(send, "notice_now", None)

    def notice_now(self, message: str) -> bool:
        """Our own notice, written at once without waiting if it can be (True); else `notice` is the way."""
        if self._direct is None or self._now is None or not self._now(self.value + 1, message):
            return False
        self.value += 1
        return True

    async def notice(self, message: str) -> None:
        self.value += 1
        if self._direct is not None:
            try:
                if await self._direct(self.value, message):
                    return
            except Exception as exc:  # as below: a client that cannot take progress still gets its result
                self._direct = None
                log.debug("progress not delivered: %s", exc)
                return
            self._direct = None
        await self._emit(self.value, None, message)

    async def relay(self, progress: float, total: float | None, message: str | None) -> None:
        self._direct = None
        base = self.value
        await self._emit(base + progress, None if total is None else base + total, message)

    async def _emit(self, value: float, total: float | None, message: str | None) -> None:
        if self._send is None:
            return
        try:
            await self._send(value, total, message)
        except Exception as exc:  # a client that cannot take progress still gets its result
            log.debug("progress not delivered: %s", exc)


async def race_gone(step: Awaitable[T], gone: Gone) -> T | None:
    """Run a wait step, but give up as soon as `gone` is set (then return None).

    The step runs in the caller's own task, and the connection's end cancels it through a callback:
    a held call costs no task of its own for watching (they wait by the ten thousand).
    """
    result: list[T] = []
    with anyio.CancelScope() as scope:
        forget = gone.on_set(scope.cancel)
        try:
            result.append(await step)
        finally:
            forget()
    return result[0] if result and not gone.is_set() else None
