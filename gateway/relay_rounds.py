"""Asking a 2026-era agent during its call: `input_required` results and the agent's retry (multi round-trip requests).

A 2026-07-28 client cannot be sent a request while its `tools/call` runs. When something serving
the call must ask the agent (an upstream's elicitation or sampling, or the gateway itself asking
the agent's user to approve), the call keeps running in the gateway's own task group and the
agent's `tools/call` is answered with `resultType: "input_required"`: the questions, and a
`requestState` naming the parked call. The agent retries the same call with its answers and that
state; the answers go to whoever asked, and the retry is answered with what comes next: the
result, or the next questions.

The state is a random token bound to the agent and the tool: another agent, another tool, or a
token that was used, expired or never issued is refused (`-32602`, as the SDK refuses a state
that fails its checks). A question nobody answers within `ANSWER_WITHIN` is answered with an
error, so a call is never held up by an agent that went away; a result nobody collects is
dropped after the same time. At most `MAX_PARKED` calls wait on their agents at once.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import mcp_types as types
from anyio.abc import TaskGroup
from mcp import MCPError
from mcp.server.context import HandlerResult

log = logging.getLogger(__name__)

ANSWER_WITHIN: Final = 600.0
MAX_PARKED: Final = 1_000


class NotAnswered(Exception):
    """The agent did not answer a question in time, or its call was given up."""


@dataclass(eq=False)
class _Question:
    request: types.InputRequest
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: types.InputResponse | None = None


@dataclass(eq=False)
class Round:
    """One agent's call running in the gateway's task group, and the questions it is waiting on."""

    agent: str
    tool: str
    line: Any = None  # whoever started the call keeps its own record of it here
    questions: dict[str, _Question] = field(default_factory=dict)
    outcome: HandlerResult | BaseException | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    changed: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    _asked: int = 0

    async def ask(self, request: types.InputRequest) -> types.InputResponse:
        """Put a question to the agent and wait for its answer (raises NotAnswered)."""
        if self.done.is_set():
            # The agent has had its answer (a task, say) and asks nothing more about this call.
            raise NotAnswered("the agent's call has been answered; nobody waits on it")
        self._asked += 1
        key = f"q{self._asked}"
        question = _Question(request)
        self.questions[key] = question
        self._wake()
        try:
            with anyio.move_on_after(ANSWER_WITHIN):
                await question.answered.wait()
        finally:
            self.questions.pop(key, None)
        if question.answer is None:
            raise NotAnswered(f"the agent did not answer within {ANSWER_WITHIN:.0f} s")
        return question.answer

    def answer(self, responses: dict[str, Any]) -> None:
        """The agent's answers, as it sent them; an answer that is not one to its question is left unanswered."""
        for key, response in responses.items():
            question = self.questions.get(key)
            if question is None or question.answered.is_set():
                continue
            try:
                question.answer = _parse(question.request, response)
            except ValueError as exc:
                log.info("answer %s from %s not taken: %s", key, self.agent, exc)
                continue
            question.answered.set()

    def open_questions(self) -> dict[str, types.InputRequest]:
        return {key: q.request for key, q in self.questions.items() if not q.answered.is_set()}

    def _wake(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


@dataclass
class Rounds:
    """The parked calls of 2026-era agents, by request state; runs them in its own task group."""

    _parked: dict[str, Round] = field(default_factory=dict)
    _tasks: TaskGroup | None = None

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            try:
                await anyio.sleep(math.inf)
            finally:
                self._tasks = None
                tg.cancel_scope.cancel()

    @property
    def running(self) -> bool:
        return self._tasks is not None

    async def start(
        self, round_: Round, run: Callable[[Round], Awaitable[HandlerResult]]
    ) -> HandlerResult | types.InputRequiredResult:
        """Run a call that may ask its agent: its result, or the first questions it asks."""
        if self._tasks is None:
            raise RuntimeError("the gateway is not running")
        self._tasks.start_soon(self._drive, round_, run)
        return await self._next(round_)

    def take(self, state: str, agent: str, tool: str) -> Round:
        """The call an agent's retry names (each state is good for one retry)."""
        round_ = self._parked.get(state)
        if round_ is None or round_.agent != agent or round_.tool != tool:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message="Invalid or expired requestState",
                data={"reason": "invalid_request_state"},
            )
        del self._parked[state]
        round_._wake()
        return round_

    async def resume(self, round_: Round, responses: dict[str, Any]) -> HandlerResult | types.InputRequiredResult:
        """The agent's answers go to the questions; the call's next step answers the retry."""
        round_.answer(responses)
        return await self._next(round_)

    async def _drive(self, round_: Round, run: Callable[[Round], Awaitable[HandlerResult]]) -> None:
        with round_.scope:
            try:
                round_.outcome = await run(round_)
            except Exception as exc:
                round_.outcome = exc
        round_.done.set()
        round_._wake()
        # A result the agent never comes back for is dropped after a while.
        with anyio.move_on_after(ANSWER_WITHIN):
            while any(r is round_ for r in self._parked.values()):
                await round_.changed.wait()
        self._forget(round_)

    async def _next(self, round_: Round) -> HandlerResult | types.InputRequiredResult:
        try:
            while not round_.done.is_set() and not round_.open_questions():
                await round_.changed.wait()
        except BaseException:
            # The agent's request went away while the call ran: the call goes with it, as it would in-line.
            round_.scope.cancel()
            raise
        if round_.done.is_set():
            if isinstance(round_.outcome, BaseException):
                raise round_.outcome
            return round_.outcome
        if len(self._parked) >= MAX_PARKED:
            round_.scope.cancel()
            raise MCPError(code=types.INTERNAL_ERROR, message="too many calls are waiting on their agents' answers")
        state = secrets.token_urlsafe(24)
        self._parked[state] = round_
        return types.InputRequiredResult(input_requests=round_.open_questions(), request_state=state)

    def _forget(self, round_: Round) -> None:
        for state in [s for s, r in self._parked.items() if r is round_]:
            del self._parked[state]


def _parse(request: types.InputRequest, response: Any) -> types.InputResponse:
    if not isinstance(response, dict):
        if isinstance(response, types.ElicitResult | types.CreateMessageResult | types.ListRootsResult):
            return response
        raise ValueError("an answer must be an object")
    try:
        if isinstance(request, types.ElicitRequest):
            return types.ElicitResult.model_validate(response)
        if isinstance(request, types.ListRootsRequest):
            return types.ListRootsResult.model_validate(response)
        if isinstance(response.get("content"), list):
            return types.CreateMessageResultWithTools.model_validate(response)
        return types.CreateMessageResult.model_validate(response)
    except Exception as exc:
        raise ValueError(str(exc)) from exc
