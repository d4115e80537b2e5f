"""A small upstream of the tests' own, run over stdio: prompts, resources, completion, logs and elicitation.

`python -m tests.gateway.relay_upstream` serves both protocol eras, as SDK 2.3 servers do (the
gateway then speaks 2026-07-28 to it); `--legacy` serves only the 2025-11-25 handshake era.
Tools that talk back to the client do it the way their era allows: a log message on the call's
own stream, and an elicitation as a server-to-client request (2025) or an `input_required`
result the client answers by retrying the call (2026, SEP-2322).
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.runner import serve_loop
from mcp.server.stdio import stdio_server
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

Ctx = ServerRequestContext[Any, Any]
CallOutcome = types.CallToolResult | types.InputRequiredResult

NOTES = {"monday": "buy milk", "tuesday": "call the bank"}
SECRET = "the vault code is 0000"
BIG = "x" * 100_000

PROMPTS = [
    types.Prompt(
        name="greet",
        description="Greets someone by name.",
        arguments=[types.PromptArgument(name="name", description="who to greet", required=True)],
    ),
    types.Prompt(name="internal_notes", description="Only for the operators."),
    types.Prompt(name="wipe_plan", description="Plans a wipe."),
]
RESOURCES = [
    types.Resource(name="today", uri="memo://notes/monday", mime_type="text/plain"),
    types.Resource(name="secret", uri="memo://secret/key", mime_type="text/plain"),
    types.Resource(name="big", uri="memo://big", mime_type="text/plain"),
]
TEMPLATES = [types.ResourceTemplate(name="notes", uri_template="memo://notes/{day}", mime_type="text/plain")]
TOOLS = [
    types.Tool(name="echo", input_schema={"type": "object", "properties": {"text": {"type": "string"}}}),
    types.Tool(name="chatty", input_schema={"type": "object", "properties": {"text": {"type": "string"}}}),
    types.Tool(name="confirm", input_schema={"type": "object", "properties": {"action": {"type": "string"}}}),
    types.Tool(name="touch", input_schema={"type": "object", "properties": {"uri": {"type": "string"}}}),
    types.Tool(name="haiku", input_schema={"type": "object", "properties": {"topic": {"type": "string"}}}),
]
CONFIRM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"confirm": {"type": "boolean", "description": "go ahead?"}},
    "required": ["confirm"],
}


def text(value: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=value)])


def modern(ctx: Ctx) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def build() -> Server[Any]:
    subscribed: set[str] = set()

    async def list_prompts(ctx: Ctx, params: Any) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=PROMPTS)

    async def get_prompt(ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        who = (params.arguments or {}).get("name", "nobody")
        message = types.PromptMessage(role="user", content=types.TextContent(type="text", text=f"Hello, {who}!"))
        return types.GetPromptResult(description=f"{params.name} prompt", messages=[message])

    async def list_resources(ctx: Ctx, params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=RESOURCES)

    async def list_templates(ctx: Ctx, params: Any) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=TEMPLATES)

    async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = params.uri
        if uri == "memo://secret/key":
            body = SECRET
        elif uri == "memo://big":
            body = BIG
        elif uri.startswith("memo://notes/"):
            body = NOTES.get(uri.rsplit("/", 1)[1], "nothing noted")
        else:
            from mcp import MCPError

            raise MCPError(types.INVALID_PARAMS, f"no resource {uri}")
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="text/plain", text=body)]
        )

    async def subscribe(ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        subscribed.add(params.uri)
        return types.EmptyResult()

    async def unsubscribe(ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        subscribed.discard(params.uri)
        return types.EmptyResult()

    async def complete(ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        pool = ["Alice", "Alfred", "Bob"] if isinstance(params.ref, types.PromptReference) else list(NOTES)
        values = [v for v in pool if v.startswith(params.argument.value)]
        return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))

    async def set_level(ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        return types.EmptyResult()

    async def list_tools(ctx: Ctx, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> CallOutcome:
        arguments = params.arguments or {}
        if params.name == "chatty":
            await ctx.session.send_log_message(  # type: ignore[deprecated]
                "info", {"said": arguments.get("text")}, logger="relay-upstream", related_request_id=ctx.request_id
            )
            return text("logged")
        if params.name == "confirm":
            return await confirm(ctx, params, str(arguments.get("action")))
        if params.name == "haiku":
            return await haiku(ctx, params, str(arguments.get("topic")))
        if params.name == "touch":
            uri = str(arguments.get("uri"))
            if uri in subscribed:
                await ctx.session.send_resource_updated(uri)
            return text(f"touched {uri}")
        return text(f"echo: {arguments.get('text')}")

    async def confirm(
        ctx: Ctx, params: types.CallToolRequestParams, action: str
    ) -> types.CallToolResult | types.InputRequiredResult:
        question = f"Really {action}?"
        if modern(ctx):
            answer = (params.input_responses or {}).get("confirm")
            if answer is None:
                request = types.ElicitRequest(
                    params=types.ElicitRequestFormParams(message=question, requested_schema=CONFIRM_SCHEMA)
                )
                return types.InputRequiredResult(input_requests={"confirm": request}, request_state="asked")
            result = types.ElicitResult.model_validate(answer.model_dump(by_alias=True))
        else:
            try:
                result = await ctx.session.elicit_form(question, CONFIRM_SCHEMA, related_request_id=ctx.request_id)
            except Exception as exc:
                return types.CallToolResult(content=[types.TextContent(type="text", text=str(exc))], is_error=True)
        if result.action == "accept" and (result.content or {}).get("confirm") is True:
            return text(f"{action}: confirmed")
        return text(f"{action}: {result.action}")

    async def haiku(
        ctx: Ctx, params: types.CallToolRequestParams, topic: str
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Asks the client's model (sampling) for a haiku, the way its era allows."""
        ask = types.SamplingMessage(role="user", content=types.TextContent(type="text", text=f"A haiku on {topic}"))
        if modern(ctx):
            answer = (params.input_responses or {}).get("model")
            if answer is None:
                request = types.CreateMessageRequest(
                    params=types.CreateMessageRequestParams(messages=[ask], max_tokens=50)
                )
                return types.InputRequiredResult(input_requests={"model": request}, request_state="sampling")
            result = types.CreateMessageResult.model_validate(answer.model_dump(by_alias=True))
        else:
            try:
                result = await ctx.session.create_message(  # type: ignore[deprecated]
                    [ask], max_tokens=50, related_request_id=ctx.request_id
                )
            except Exception as exc:
                return types.CallToolResult(content=[types.TextContent(type="text", text=str(exc))], is_error=True)
        said = result.content.text if isinstance(result.content, types.TextContent) else "?"
        return text(f"the model said: {said}")

    return Server(  # type: ignore[call-overload, no-any-return]
        "relay-upstream",
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_completion=complete,
        on_set_logging_level=set_level,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def main(legacy: bool) -> None:
    server = build()
    async with stdio_server() as (read, write):
        if not legacy:
            await server.run(read, write, server.create_initialization_options())
            return
        options = server.create_initialization_options(NotificationOptions(resources_changed=True))
        await serve_loop(server, read, write, lifespan_state={}, init_options=options)


if __name__ == "__main__":
    anyio.run(main, "--legacy" in sys.argv[1:])
