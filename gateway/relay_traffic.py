"""Server-to-client traffic during a call: the upstream's log lines, elicitations and sampling reach the agent.

While the gateway serves an agent's `tools/call`, that call is the agent's *line*: the
upstream's `notifications/message`, `elicitation/create` and `sampling/createMessage` (2025
era; a 2026-era upstream asks with an `input_required` result, which the gateway's upstream
client turns into the same callbacks) are passed to that agent on the call's own stream, and
the agent's answer goes back. An agent whose client did not declare elicitation (or sampling)
gets nothing, and the upstream gets the protocol's own refusal, as from any client without it.

Which call an upstream message belongs to: the line travels with the call as a context
variable, which the SDK carries through a streamable HTTP upstream's responses and a 2026-era
upstream's `input_required` rounds. Messages that arrive without it (a stdio upstream's
server-to-client requests and log lines) belong to the one call in flight on that upstream; when
several are in flight nobody can tell whose it is, so a request is refused and a log line dropped.

A held call reaches its upstream only after approval, so its elicitation can only come after it.
Every elicitation answer is audited (`call.elicitation`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final

import mcp_types as types
from mcp.client.session import ClientRequestContext
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from approvals.audit import Event, canonical_json
from approvals.service import ApprovalService
from gateway.relay_rounds import Round, Rounds

log = logging.getLogger(__name__)

Ctx = ServerRequestContext[Any, Any]
_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_ANSWER_LIMIT = 4_096
_LINE: ContextVar[AgentLine | None] = ContextVar("countersign_agent_line", default=None)


@dataclass(eq=False)
class AgentLine:
    """One agent's tools/call in progress: where the upstream's messages for it go."""

    ctx: Ctx
    agent: str
    tool: str
    level: str | None  # the 2025-era agent's logging/setLevel; None: it never asked
    round: Round | None = None  # a 2026-era call that can ask its agent (gateway.relay_rounds)

    @property
    def modern(self) -> bool:
        return self.ctx.protocol_version in MODERN_PROTOCOL_VERSIONS

    def can(self, capability: types.ClientCapabilities) -> bool:
        return self.ctx.session.check_client_capability(capability)


@dataclass
class Traffic:
    """The agents' lines, and the callbacks every upstream's client is built with."""

    service: ApprovalService
    agent_of: Callable[[Ctx], str] | None = None
    rounds: Rounds = field(default_factory=Rounds)
    _levels: dict[str, str] = field(default_factory=dict)
    _serving: dict[str, set[AgentLine]] = field(default_factory=dict)

    # ---- the downstream side

    async def middleware(self, ctx: Ctx, call_next: CallNext) -> HandlerResult:
        """Open the agent's line for the length of its tools/call; remember 2025-era log levels."""
        if ctx.method == "logging/setLevel" and ctx.params and self.agent_of is not None:
            level = ctx.params.get("level")
            if level in _LEVELS:
                self._levels[_session_key(ctx)] = str(level)
        if ctx.method != "tools/call" or self.agent_of is None:
            return await call_next(ctx)
        params = ctx.params or {}
        tool = str(params.get("name", ""))
        line = AgentLine(ctx, self.agent_of(ctx), tool, self._levels.get(_session_key(ctx)))
        if line.modern and self.rounds.running and _askable_at_all(line):
            # Only a call whose agent could be asked something needs to outlive its request (a task hop).
            return await self._in_rounds(line, call_next)
        token = _LINE.set(line)
        try:
            return await call_next(ctx)
        finally:
            _LINE.reset(token)

    async def _in_rounds(self, line: AgentLine, call_next: CallNext) -> HandlerResult:
        """A 2026-era call runs where it can outlive one request, so it can ask its agent (`input_required`)."""
        params = line.ctx.params or {}
        state = params.get("requestState")
        if state is not None:
            round_ = self.rounds.take(str(state), line.agent, line.tool)
            earlier: AgentLine = round_.line
            earlier.ctx = line.ctx  # what the call sends from now on rides the retry's stream
            responses = params.get("inputResponses")
            return await self.rounds.resume(round_, responses if isinstance(responses, dict) else {})

        async def run(round_: Round) -> HandlerResult:
            token = _LINE.set(line)
            try:
                return await call_next(line.ctx)
            finally:
                _LINE.reset(token)

        line.round = Round(line.agent, line.tool, line=line)
        return await self.rounds.start(line.round, run)

    async def set_level(self, ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        # Recorded by the middleware (per session); the upstreams are asked for every level and each
        # agent is sent only what it asked for, since one upstream connection serves every agent.
        return types.EmptyResult()

    # ---- the upstream side

    def client_options(self, upstream: str) -> dict[str, Any]:
        async def elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> Any:
            return await self._elicit(upstream, params)

        async def sample(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
            return await self._sample(upstream, params)

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            await self._log(upstream, params)

        return {
            "elicitation_callback": elicit,
            "sampling_callback": sample,
            "logging_callback": on_log,
            # 2026-era upstreams send log lines only to requests that opt in; ask for all of them.
            "log_level": "debug",
        }

    @asynccontextmanager
    async def serving(self, upstream: str) -> AsyncIterator[None]:
        """Around a tools/call sent upstream: the line it serves, for messages that arrive without one."""
        line = _LINE.get()
        if line is None:
            yield
            return
        lines = self._serving.setdefault(upstream, set())
        lines.add(line)
        try:
            yield
        finally:
            lines.discard(line)

    def _line(self, upstream: str) -> AgentLine | None:
        line = _LINE.get()
        if line is not None:
            return line
        lines = self._serving.get(upstream, set())
        return next(iter(lines)) if len(lines) == 1 else None

    async def _log(self, upstream: str, params: types.LoggingMessageNotificationParams) -> None:
        line = self._line(upstream)
        if line is None:
            log.debug("upstream %s log line not relayed: no single call it belongs to", upstream)
            return
        if not line.modern and line.level is not None and _LEVELS.index(params.level) < _LEVELS.index(line.level):
            return
        try:
            await line.ctx.session.send_log_message(
                params.level, params.data, params.logger, related_request_id=line.ctx.request_id
            )
        except Exception as exc:
            log.debug("log line not delivered to %s: %s", line.agent, exc)

    async def _elicit(self, upstream: str, params: types.ElicitRequestParams) -> types.ElicitResult | types.ErrorData:
        line = self._line(upstream)
        refusal = _refusal(line, _ELICITATION, "Elicitation")
        if refusal is not None or line is None:
            await self._audit(upstream, line, "refused", "elicitation refused: " + (refusal or _NO_LINE).message)
            return refusal or _NO_LINE
        result = await _send(line, types.ElicitRequest(params=params), types.ElicitResult)
        if not isinstance(result, types.ElicitResult):
            failure = result if isinstance(result, types.ErrorData) else _WRONG_ANSWER
            await self._audit(upstream, line, "failed", f"elicitation not answered: {failure.message}")
            return failure
        answer = canonical_json(result.content) if result.content is not None else None
        if answer is not None and len(answer) > _ANSWER_LIMIT:
            answer = answer[:_ANSWER_LIMIT]
        await self._audit(upstream, line, result.action, f"elicitation answered: {result.action}", answer=answer)
        return result

    async def _sample(
        self, upstream: str, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.ErrorData:
        line = self._line(upstream)
        refusal = _refusal(line, _SAMPLING, "Sampling")
        if refusal is not None or line is None:
            return refusal or _NO_LINE
        result = await _send(line, types.CreateMessageRequest(params=params), types.CreateMessageResult)
        if isinstance(result, types.CreateMessageResult | types.ErrorData):
            return result
        return _WRONG_ANSWER

    async def _audit(
        self, upstream: str, line: AgentLine | None, outcome: str, message: str, answer: str | None = None
    ) -> None:
        event = Event(
            kind="call.elicitation",
            outcome=outcome,
            message=message[:500],
            agent=line.agent if line else None,
            tool=line.tool if line else None,
            upstream=upstream,
            arguments=answer,
        )
        try:
            await self.service.record(event)
        except Exception as exc:
            log.error("audit event not written (call.elicitation): %s", exc)


def _refusal(line: AgentLine | None, wanted: types.ClientCapabilities, what: str) -> types.ErrorData | None:
    if line is None:
        return _NO_LINE
    if not line.can(wanted):
        # The words and code an SDK client without the capability answers with.
        return types.ErrorData(code=types.INVALID_REQUEST, message=f"{what} not supported")
    if line.modern and (line.round is None or line.round.done.is_set()):
        # A call answered with a task runs unattended: nobody is there to answer.
        message = f"{what} not supported: nobody waits on this call"
        return types.ErrorData(code=types.INVALID_REQUEST, message=message)
    return None


async def _send(line: AgentLine, request: types.InputRequest, answer: type[Any]) -> Any:
    """The agent's answer: a server-to-client request (2025 era), a question in its call's round (2026)."""
    try:
        if line.round is not None:
            return await line.round.ask(request)
        return await line.ctx.session.send_request(
            request, answer, metadata=ServerMessageMetadata(related_request_id=line.ctx.request_id)
        )
    except Exception as exc:
        return types.ErrorData(code=types.INTERNAL_ERROR, message=f"the agent did not answer: {exc}")


def _askable_at_all(line: AgentLine) -> bool:
    """Whether the agent's client declared anything the upstream (or an approval) could ask it with."""
    return line.can(_ELICITATION) or line.can(_SAMPLING)


def askable() -> bool:
    """Whether the agent whose call is being served now can be asked something (an elicitation)."""
    line = _LINE.get()
    return line is not None and _refusal(line, _ELICITATION, "Elicitation") is None


async def ask_agent(request: types.ElicitRequest) -> types.ElicitResult | types.ErrorData:
    """Put an elicitation to the agent whose call is being served now (either era)."""
    line = _LINE.get()
    refusal = _refusal(line, _ELICITATION, "Elicitation")
    if refusal is not None or line is None:
        return refusal or _NO_LINE
    result = await _send(line, request, types.ElicitResult)
    return result if isinstance(result, types.ElicitResult | types.ErrorData) else _WRONG_ANSWER


_ELICITATION = types.ClientCapabilities(elicitation=types.ElicitationCapability())
_SAMPLING = types.ClientCapabilities(sampling=types.SamplingCapability())
_WRONG_ANSWER = types.ErrorData(code=types.INTERNAL_ERROR, message="the agent answered with something else")
_NO_LINE = types.ErrorData(
    code=types.INVALID_REQUEST, message="Elicitation not supported: no single agent call is waiting on this upstream"
)


def _session_key(ctx: Ctx) -> str:
    request = ctx.request
    headers = getattr(request, "headers", None)
    session = headers.get("mcp-session-id") if headers is not None else None
    return session or "stdio"
