"""One upstream read for the context lookups of many requests made at once (single-flight).

When a burst of calls to a held tool arrives, every request's context lookup asks the same
upstream tool the same question at the same moment. Made one by one, each is a round trip through
the MCP client and a parse of the whole answer (an order book of a thousand orders, say), and
they queue for the upstream's connections. Here the first lookup for a question sends it; the
lookups for the same question that come while it is in flight, or soon after it was sent, wait
for that answer instead of sending their own. "Soon" is `FRESH_SECONDS`, or `COST_MULTIPLE` times
as long as the read took when that is longer: a read that costs seconds (the whole book of ten
thousand working orders is some 4 MB of JSON to write, send, parse and check) is not sent again
every second, which would keep the upstream and the gateway busy with little else.

A question is the agent the request is made for, the upstream, its tool, the lookup's arguments
(canonical JSON) and the lookup's time bound: nothing is ever shared between two agents, and two
lookups share an answer only when they would have sent exactly the same read. A lookup that
failed (an error, an exception, no answer within the bound) serves only the lookups that were
already waiting for it; the next one asks again. Each request still audits its own lookup
(`gateway.context`), so the record shows what every request was shown and where it came from.
An answer is kept only while it can serve a new lookup: then it is let go, since the calls it was
read for may be held for minutes and it would stay beside them.

The read itself runs shielded from its first asker's cancellation: the others waiting for it must
not lose their answer because that agent went away. It is bounded by the lookup's own timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import mcp_types as types

from gateway.results import text_of

# How long after a read was sent its answer still serves a new lookup for the same question.
FRESH_SECONDS: Final = 1.0
# ... or this many times as long as the read took, when longer: one question keeps an upstream busy at most
# about a fifth of the time, however slow its answer.
COST_MULTIPLE: Final = 4.0
# Beyond this many remembered questions, answers no longer fresh are dropped before another is added.
PRUNE_ABOVE: Final = 256

Question = tuple[str, str, str, str, float]


@dataclass(eq=False)
class Flight:
    """One read: sent once, its answer (or why there is none) given to every lookup that asked for it."""

    asked_for: str  # the request whose lookup sent it
    sent: float
    landed: anyio.Event = field(default_factory=anyio.Event)
    result: types.CallToolResult | None = None  # None with no error: no answer within the bound
    error: Exception | None = None
    fresh_for: float = 0.0  # how long after `sent` it serves new lookups, once landed
    _content: Any = None
    _parsed: bool = False

    @property
    def answered(self) -> bool:
        return self.result is not None and not self.result.is_error

    def content(self) -> Any:
        """What a selection reads, computed once for all who share it: the structured result, else the text
        as JSON, else {"text": the text}. Callers only read it."""
        if not self._parsed:
            assert self.result is not None
            self._content = _content_of(self.result)
            self._parsed = True
        return self._content


class SharedLookups:
    """Sends each question once while its answer is in flight or fresh; see the module's description."""

    def __init__(self, *, fresh: float = FRESH_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.fresh = fresh
        self.clock = clock
        self._flights: dict[Question, Flight] = {}
        # Lookups that sent a read, and lookups that were given another one's answer, for /metrics and the bench.
        self.sent = 0
        self.shared = 0

    async def ask(
        self,
        question: Question,
        request_id: str,
        read: Callable[[], Awaitable[types.CallToolResult]],
    ) -> tuple[Flight, bool]:
        """The flight that answers `question`, once it has landed, and whether this lookup sent it."""
        now = self.clock()
        flight = self._flights.get(question)
        if flight is not None and (
            not flight.landed.is_set() or (flight.answered and now - flight.sent <= flight.fresh_for)
        ):
            self.shared += 1
            await flight.landed.wait()
            return flight, False
        if len(self._flights) >= PRUNE_ABOVE:
            self._prune(now)
        flight = Flight(request_id, now)
        self._flights[question] = flight
        self.sent += 1
        bound = question[4]
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(bound):
                flight.result = await read()
        except Exception as exc:  # handed to every lookup that waits for this read
            flight.error = exc
        finally:
            flight.fresh_for = max(self.fresh, COST_MULTIPLE * (self.clock() - flight.sent))
            flight.landed.set()
            if not flight.answered and self._flights.get(question) is flight:
                del self._flights[question]
            elif flight.answered:
                # Once no new lookup may take it, the answer (a whole order book, say) is let go, not kept until
                # the next prune: it would stay beside every call held meanwhile.
                left = flight.sent + flight.fresh_for - self.clock()
                asyncio.get_running_loop().call_later(max(left, 0.0), self._let_go, question, flight)
        return flight, True

    def __len__(self) -> int:
        """How many questions' answers are kept (in flight, or fresh enough to serve a new lookup)."""
        return len(self._flights)

    def _let_go(self, question: Question, flight: Flight) -> None:
        if self._flights.get(question) is flight and self.clock() - flight.sent > flight.fresh_for:
            del self._flights[question]

    def _prune(self, now: float) -> None:
        stale = [q for q, f in self._flights.items() if f.landed.is_set() and now - f.sent > f.fresh_for]
        for question in stale:
            del self._flights[question]


def _content_of(result: types.CallToolResult) -> Any:
    if result.structured_content is not None:
        return result.structured_content
    text = text_of(result, 1_000_000)
    try:
        return json.loads(text)
    except ValueError:
        return {"text": text}
