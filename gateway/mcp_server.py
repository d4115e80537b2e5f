"""The downstream MCP server agents talk to: the filtered catalog and every call through CallHandler."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.subscriptions import ListenHandler, SubscriptionBus
from starlette.requests import Request

from approvals.errors import ApprovalError, StoreUnavailable
from gateway import tracing
from gateway.caller import Caller, Gone, Progress
from gateway.calls import CallHandler
from gateway.errors import CallRefused, Tag, instructions
from gateway.post_stream import PostStream
from gateway.relay_server import Relay, RelayServer
from gateway.results import WAIT_TOOL, gateway_tools, text_of
from gateway.stream_progress import StreamProgress, progress_token
from gateway.tasks import HeldTasks

log = logging.getLogger(__name__)

AGENT_KEY = "countersign.agent"
AGENT_GROUPS_KEY = "countersign.agent_groups"
DISCONNECTED_KEY = "countersign.disconnected"
# The 2025-era POST's response wrapper (gateway.post_stream.PostStream), for a call that may wait.
STREAM_KEY = "countersign.stream"
# Set while gateway.lean_calls serves the request: it answers only calls that cannot wait.
LEAN_KEY = "countersign.lean"


class NotPlain(Exception):
    """The policy changed under a call the lean path took: it may wait now, so the SDK's transport must serve it."""


class CancelLog:
    """Remembers why clients cancelled requests, so a held call can tell "withdraw" from "timed out".

    The SDK cancels the handler as soon as `notifications/cancelled` arrives and shows the
    notification to middleware just after, so the handler may wait a moment for the reason.
    """

    def __init__(self) -> None:
        self._reasons: dict[tuple[str, str], str] = {}
        self._arrived: dict[tuple[str, str], anyio.Event] = {}

    async def middleware(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "notifications/cancelled" and ctx.params:
            key = (_connection_key(ctx), str(ctx.params.get("requestId")))
            reason = ctx.params.get("reason")
            self._reasons[key] = reason if isinstance(reason, str) else ""
            self._event(key).set()
        return await call_next(ctx)

    def _event(self, key: tuple[str, str]) -> anyio.Event:
        return self._arrived.setdefault(key, anyio.Event())

    def probe(self, ctx: ServerRequestContext[Any, Any]) -> Any:
        key = (_connection_key(ctx), str(ctx.request_id))
        requested = _cancel_requested(ctx)

        async def reason() -> str | None:
            try:
                if requested is None or not requested.is_set():
                    return None  # cancelled by a dropped connection, not by the client
                with anyio.move_on_after(0.5):
                    await self._event(key).wait()
                return self._reasons.get(key, "")
            finally:
                self._reasons.pop(key, None)
                self._arrived.pop(key, None)

        return reason

    def forget(self, ctx: ServerRequestContext[Any, Any]) -> None:
        key = (_connection_key(ctx), str(ctx.request_id))
        self._reasons.pop(key, None)
        self._arrived.pop(key, None)


def _connection_key(ctx: ServerRequestContext[Any, Any]) -> str:
    request = ctx.request
    if isinstance(request, Request):
        return request.headers.get("mcp-session-id") or f"agent:{request.scope.get(AGENT_KEY)}"
    return "stdio"


def _cancel_requested(ctx: ServerRequestContext[Any, Any]) -> anyio.Event | None:
    # The SDK sets this event when the client's notifications/cancelled names the request; it is not
    # public API, so a missing attribute just means "not an explicit cancel" (the agent detaches).
    outbound = getattr(ctx.session, "_request_outbound", None)
    event = getattr(outbound, "cancel_requested", None)
    return event if isinstance(event, anyio.Event) else None


def build_server(
    handler: CallHandler, bus: SubscriptionBus, *, stdio_agent: str | None = None, relay: Relay | None = None
) -> Server[Any]:
    """`stdio_agent` names the agent for a process that serves one client over stdio.

    2026-era clients that listen for `tools/list_changed` hear it through `bus` whenever an
    upstream's catalog or the policy changes what they may see. `relay` adds the upstreams'
    prompts, resources and completions (`gateway.relay_server`).
    """
    cancels = CancelLog()
    tasks = HeldTasks(handler, guarded)

    def caller_of(ctx: ServerRequestContext[Any, Any]) -> Caller:
        request = ctx.request
        if isinstance(request, Request):
            agent = request.scope.get(AGENT_KEY)
            if not isinstance(agent, str):
                # The ASGI layer authenticates every /mcp request; reaching here without it is a wiring bug.
                raise RuntimeError("unauthenticated request reached the MCP handler")
            gone = request.scope.get(DISCONNECTED_KEY)
            session = request.headers.get("mcp-session-id") or agent
            groups = request.scope.get(AGENT_GROUPS_KEY, ())
            return Caller(agent, session, gone if isinstance(gone, Gone) else None, cancels.probe(ctx), groups=groups)
        if stdio_agent is None:
            raise RuntimeError("no agent identity for this transport")
        groups = handler.agents.identity(stdio_agent).groups
        return Caller(stdio_agent, f"stdio:{stdio_agent}", None, cancels.probe(ctx), groups=groups)

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=handler.visible_tools(caller_of(ctx).identity))

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = caller_of(ctx)
        if tasks.wanted(ctx, params):
            return await tasks.create_2026(caller, params)
        if isinstance(ctx.request, Request) and (params.name == WAIT_TOOL or handler.may_hold(params.name)):
            if ctx.request.scope.get(LEAN_KEY):
                raise NotPlain(params.name)  # before anything is audited or sent
            stream = ctx.request.scope.get(STREAM_KEY)
            if stream is not None and progress_token(params.meta) is None:
                # Nothing may be streamed before its end: the headers now. With a token, the first notice opens it.
                await stream.stream_now()

        async def sdk_progress(value: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(value, total, message)

        progress: Progress = sdk_progress
        if isinstance(ctx.request, Request) and ctx.request.headers.get("mcp-session-id"):
            stream = ctx.request.scope.get(STREAM_KEY)
            token = progress_token(params.meta)
            if isinstance(stream, PostStream) and token is not None:
                progress = StreamProgress(stream, str(ctx.request_id), token, sdk_progress)

        headers = ctx.request.headers if isinstance(ctx.request, Request) else None
        try:
            if tracing.untraced(params.meta, headers):
                # No span to record or carry: the call is awaited without one (a held call keeps no span's frame).
                return await answer_call(handler, caller, params.name, dict(params.arguments or {}), progress)
            with tracing.tool_call(params.name, caller.agent, meta=params.meta, headers=headers) as span:
                result = await answer_call(handler, caller, params.name, dict(params.arguments or {}), progress)
                if span.is_recording():
                    tracing.outcome(span, result.is_error, text_of(result, 120))
                return result
        finally:
            cancels.forget(ctx)

    gateway_schemas = {tool.name: tool.input_schema for tool in gateway_tools()}

    def input_schema(name: str) -> dict[str, Any] | None:
        # Asked on every 2026-era tools/call: a lookup, not a rebuild of the catalog.
        return gateway_schemas.get(name) or handler.upstreams.input_schema(name)

    server = RelayServer(
        "countersign",
        version=_version(),
        title="Countersign approval gateway",
        instructions=instructions(),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        get_tool_input_schema=input_schema,
        on_subscriptions_listen=ListenHandler(bus),
    )
    server.middleware.append(cancels.middleware)
    tasks.install(server, caller_of)
    if relay is not None:
        server.catalog = relay.catalog
        relay.install(server, lambda ctx: caller_of(ctx).agent)
        listen = relay.subscriptions.listen(ListenHandler(bus))
        server.add_request_handler("subscriptions/listen", types.SubscriptionsListenRequestParams, listen)
    return server


def answer_call(
    handler: CallHandler, caller: Caller, tool: str, arguments: dict[str, Any], progress: Any
) -> Awaitable[types.CallToolResult]:
    """The call's answer, to be awaited: `guarded` handed back as it is (a held call keeps one frame less)."""
    return guarded(caller, tool, lambda: handler.call(caller, tool, arguments, progress))


async def guarded(
    caller: Caller, tool: str, run: Callable[[], Awaitable[types.CallToolResult]]
) -> types.CallToolResult:
    """The one error boundary of a tool call (and of a task's result): every outcome is a result the model can read.

    A refusal becomes its tagged result; the approval store failing becomes [APPROVAL UNAVAILABLE];
    anything unexpected is logged and becomes a generic [GATEWAY ERROR] — never a JSON-RPC error,
    which many clients show as a crash rather than something the model can act on.
    """
    try:
        return await run()
    except CallRefused as refusal:
        return refusal.result()
    except StoreUnavailable as exc:
        log.warning("%s for %s: %s", tool, caller.agent, exc)
        return Tag.APPROVAL_UNAVAILABLE.result(
            f"the approval store cannot be reached ({exc}); the call was not executed. Try again later."
        )
    except ApprovalError as exc:
        log.error("%s for %s failed in the approval core: %s", tool, caller.agent, exc)
        return Tag.APPROVAL_UNAVAILABLE.result(f"the approval queue could not settle this call ({exc}).")
    except Exception:
        log.exception("%s for %s failed unexpectedly", tool, caller.agent)
        return Tag.GATEWAY_ERROR.result(
            "the gateway failed while handling this call; the failure is logged. Check the approval status "
            "or audit history before retrying anything that may have run."
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("countersign")
    except PackageNotFoundError:
        return "0"
