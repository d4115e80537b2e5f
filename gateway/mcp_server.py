"""The downstream MCP server agents talk to: the filtered catalog and every call through CallHandler."""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import ListenHandler, SubscriptionBus
from starlette.requests import Request

from gateway.calls import Caller, CallHandler

AGENT_KEY = "countersign.agent"
DISCONNECTED_KEY = "countersign.disconnected"


def build_server(handler: CallHandler, bus: SubscriptionBus, *, stdio_agent: str | None = None) -> Server[Any]:
    """`stdio_agent` names the agent for a process that serves one client over stdio.

    2026-era clients that listen for `tools/list_changed` hear it through `bus` whenever an
    upstream's catalog or the policy changes what they may see.
    """

    def caller_of(ctx: ServerRequestContext[Any, Any]) -> Caller:
        request = ctx.request
        if isinstance(request, Request):
            agent = request.scope.get(AGENT_KEY)
            if not isinstance(agent, str):
                # The ASGI layer authenticates every /mcp request; reaching here without it is a wiring bug.
                raise RuntimeError("unauthenticated request reached the MCP handler")
            gone = request.scope.get(DISCONNECTED_KEY)
            session = request.headers.get("mcp-session-id") or agent
            return Caller(agent, session, gone if isinstance(gone, anyio.Event) else None)
        if stdio_agent is None:
            raise RuntimeError("no agent identity for this transport")
        return Caller(stdio_agent, f"stdio:{stdio_agent}", None)

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=handler.visible_tools())

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = caller_of(ctx)

        async def progress(value: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(value, total, message)

        return await handler.call(caller, params.name, dict(params.arguments or {}), progress)

    def input_schema(name: str) -> dict[str, Any] | None:
        return handler.upstreams.input_schema(name)

    return Server(
        "countersign",
        version=_version(),
        title="Countersign approval gateway",
        instructions=(
            "Tool calls pass through a policy. Some calls are held until a human approves them: such a call "
            "stays open and reports progress while it waits. Results starting with [APPROVAL REJECTED], "
            "[APPROVAL EXPIRED], [POLICY DENIED] or [RATE LIMITED] mean the call was not executed; do not retry "
            "a rejected call with the same arguments."
        ),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        get_tool_input_schema=input_schema,
        on_subscriptions_listen=ListenHandler(bus),
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("countersign")
    except PackageNotFoundError:
        return "0"
