"""The project's own conformance upstream: what the MCP conformance suite's server scenarios ask for.

`python -m tests.conformance.upstream --port N` serves streamable HTTP at `/mcp`, in both protocol
eras (as SDK 2.3 servers do). The names and behaviours are the ones the suite's scenario
descriptions require (`conformance list`, and each scenario's text in the installed package):
tools `test_*`, prompts `test_*_prompt*`, resources under `test://` (listed in `catalog.py`).
Written here against the SDK's low-level server API.

Talking back during a call follows the era of the request: a 2025-era client gets log lines,
progress and server-to-client requests (elicitation, sampling) on the call's stream; a 2026-era
client (the gateway's own upstream connection) gets `input_required` results to answer and retry
(SEP-2322), and log lines only when its request opted in.
"""

from __future__ import annotations

import argparse
import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp import MCPError
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.applications import Starlette
from starlette.routing import Route

from tests.conformance.catalog import (
    DEFAULTS_SCHEMA,
    ENUMS_SCHEMA,
    IDENTITY_SCHEMA,
    PNG,
    PROMPTS,
    RESOURCES,
    TEMPLATES,
    TOOLS,
    WAV,
)

Ctx = ServerRequestContext[Any, Any]
CallOutcome = types.CallToolResult | types.InputRequiredResult


def text(value: str) -> types.TextContent:
    return types.TextContent(type="text", text=value)


def result(*content: types.ContentBlock, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=list(content), is_error=is_error)


def modern(ctx: Ctx) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


class RecentEvents(EventStore):
    """The last few thousand SSE events of every stream, so a client can resume with `Last-Event-ID`."""

    def __init__(self, keep: int = 4096) -> None:
        self._events: deque[tuple[StreamId, EventId, types.JSONRPCMessage | None]] = deque(maxlen=keep)
        self._next = 0

    async def store_event(self, stream_id: StreamId, message: types.JSONRPCMessage | None) -> EventId:
        self._next += 1
        event_id = str(self._next)
        self._events.append((stream_id, event_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        events = list(self._events)
        start = next((i for i, (_, event_id, _) in enumerate(events) if event_id == last_event_id), None)
        if start is None:
            return None
        stream = events[start][0]
        for stream_id, event_id, message in events[start + 1 :]:
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


async def _ask(
    ctx: Ctx, params: types.CallToolRequestParams, key: str, request: types.ElicitRequest | types.CreateMessageRequest
) -> dict[str, Any] | types.InputRequiredResult:
    """The client's answer to one server-to-client request, in the era of this call."""
    if modern(ctx):
        answer = (params.input_responses or {}).get(key)
        if answer is None:
            return types.InputRequiredResult(input_requests={key: request}, request_state=key)
        answered: dict[str, Any] = answer.model_dump(by_alias=True, exclude_none=True)
        return answered
    if isinstance(request, types.ElicitRequest):
        assert isinstance(request.params, types.ElicitRequestFormParams)
        elicited = await ctx.session.elicit_form(
            request.params.message, request.params.requested_schema, related_request_id=ctx.request_id
        )
        return elicited.model_dump(by_alias=True, exclude_none=True)
    sampled = await ctx.session.create_message(
        request.params.messages, max_tokens=request.params.max_tokens, related_request_id=ctx.request_id
    )
    return sampled.model_dump(by_alias=True, exclude_none=True)


def _elicit(message: str, schema: dict[str, Any]) -> types.ElicitRequest:
    return types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))


async def _talk_back(ctx: Ctx, params: types.CallToolRequestParams) -> CallOutcome:
    arguments = params.arguments or {}
    name = params.name
    if name == "test_sampling":
        message = types.SamplingMessage(role="user", content=text(str(arguments.get("prompt", ""))))
        request: types.ElicitRequest | types.CreateMessageRequest = types.CreateMessageRequest(
            params=types.CreateMessageRequestParams(messages=[message], max_tokens=100)
        )
    elif name == "test_elicitation":
        request = _elicit(str(arguments.get("message", "")), IDENTITY_SCHEMA)
    elif name == "test_elicitation_sep1034_defaults":
        request = _elicit("Please review these values.", DEFAULTS_SCHEMA)
    else:
        request = _elicit("Please choose.", ENUMS_SCHEMA)
    try:
        answer = await _ask(ctx, params, "ask", request)
    except MCPError as exc:
        return result(text(f"the client could not answer: {exc.message}"), is_error=True)
    if isinstance(answer, types.InputRequiredResult):
        return answer
    if name == "test_sampling":
        said = answer.get("content", {})
        return result(text(f"LLM response: {said.get('text') if isinstance(said, dict) else said}"))
    action, content = answer.get("action"), json.dumps(answer.get("content"))
    if name == "test_elicitation":
        return result(text(f"User response: action={action}, content={content}"))
    return result(text(f"Elicitation completed: action={action}, content={content}"))


async def _log(ctx: Ctx, line: str) -> None:
    await ctx.session.send_log_message("info", line, logger="conformance-upstream", related_request_id=ctx.request_id)


async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> CallOutcome:
    name = params.name
    resource = types.EmbeddedResource(
        type="resource",
        resource=types.TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
        ),
    )
    image = types.ImageContent(type="image", data=PNG, mime_type="image/png")
    if name == "test_simple_text":
        return result(text("This is a simple text response for testing."))
    if name == "test_image_content":
        return result(image)
    if name == "test_audio_content":
        return result(types.AudioContent(type="audio", data=WAV, mime_type="audio/wav"))
    if name == "test_embedded_resource":
        return result(resource)
    if name == "test_multiple_content_types":
        mixed = types.TextResourceContents(
            uri="test://mixed-content-resource", mime_type="application/json", text='{"test":"data","value":123}'
        )
        return result(
            text("Multiple content types test:"), image, types.EmbeddedResource(type="resource", resource=mixed)
        )
    if name == "test_error_handling":
        return result(text("This tool intentionally returns an error for testing"), is_error=True)
    if name == "test_tool_with_logging":
        for line in ("Tool execution started", "Tool processing data", "Tool execution completed"):
            await _log(ctx, line)
            await anyio.sleep(0.05)
        return result(text("Logged three lines."))
    if name == "test_tool_with_progress":
        token = (ctx.meta or {}).get("progress_token")
        for step in (0, 50, 100):
            if token is not None:
                await ctx.session.send_progress_notification(token, step, 100, related_request_id=str(ctx.request_id))
            if step < 100:
                await anyio.sleep(0.05)
        return result(text("Progress reported: 0, 50, 100 of 100."))
    if name == "test_reconnection":
        if ctx.close_sse_stream is not None:
            await anyio.sleep(0.05)
            await ctx.close_sse_stream()
        await anyio.sleep(0.2)
        return result(text("Answered after the stream was closed."))
    if name in {
        "test_sampling",
        "test_elicitation",
        "test_elicitation_sep1034_defaults",
        "test_elicitation_sep1330_enums",
    }:
        return await _talk_back(ctx, params)
    raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")


def build() -> Server[Any]:
    subscribed: set[str] = set()

    async def list_tools(ctx: Ctx, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def list_prompts(ctx: Ctx, params: Any) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=PROMPTS)

    async def get_prompt(ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        arguments = params.arguments or {}

        def say(content: types.ContentBlock) -> types.PromptMessage:
            return types.PromptMessage(role="user", content=content)

        if params.name == "test_simple_prompt":
            messages = [say(text("This is a simple prompt for testing."))]
        elif params.name == "test_prompt_with_arguments":
            arg1, arg2 = arguments.get("arg1", ""), arguments.get("arg2", "")
            messages = [say(text(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"))]
        elif params.name == "test_prompt_with_embedded_resource":
            embedded = types.TextResourceContents(
                uri=arguments.get("resourceUri", "test://example-resource"),
                mime_type="text/plain",
                text="Embedded resource content for testing.",
            )
            messages = [
                say(types.EmbeddedResource(type="resource", resource=embedded)),
                say(text("Please process the embedded resource above.")),
            ]
        elif params.name == "test_prompt_with_image":
            messages = [
                say(types.ImageContent(type="image", data=PNG, mime_type="image/png")),
                say(text("Please analyze the image above.")),
            ]
        else:
            raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name}")
        return types.GetPromptResult(messages=messages)

    async def list_resources(ctx: Ctx, params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=RESOURCES)

    async def list_templates(ctx: Ctx, params: Any) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=TEMPLATES)

    async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        contents: types.TextResourceContents | types.BlobResourceContents
        if uri == "test://static-text":
            contents = types.TextResourceContents(
                uri=uri, mime_type="text/plain", text="This is the content of the static text resource."
            )
        elif uri == "test://static-binary":
            contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG)
        elif uri == "test://watched-resource":
            contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched content.")
        elif uri.startswith("test://template/") and uri.endswith("/data"):
            ident = uri.removeprefix("test://template/").removesuffix("/data")
            body = json.dumps({"id": ident, "templateTest": True, "data": f"Data for ID: {ident}"})
            contents = types.TextResourceContents(uri=uri, mime_type="application/json", text=body)
        else:
            raise MCPError(types.INVALID_PARAMS, f"Resource not found: {uri}")
        return types.ReadResourceResult(contents=[contents])

    async def subscribe(ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        subscribed.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        subscribed.discard(str(params.uri))
        return types.EmptyResult()

    async def complete(ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        pool = ["paris", "park", "party", "testValue"]
        values = [v for v in pool if v.startswith(params.argument.value)]
        return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))

    async def set_level(ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        return types.EmptyResult()

    return Server(
        "countersign-conformance-upstream",
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_completion=complete,
        on_set_logging_level=set_level,
    )


def app() -> Starlette:
    localhost = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )
    manager = StreamableHTTPSessionManager(
        build(), event_store=RecentEvents(), retry_interval=500, security_settings=localhost
    )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return Starlette(routes=[Route("/mcp", StreamableHTTPASGIApp(manager))], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    uvicorn.run(app(), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
