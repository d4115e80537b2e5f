"""A small stdio upstream of the tests' own, which the gateway has no code for: notes that can be read and deleted.

`notes_delete` records the arguments it receives, one JSON line each, in the file named by
`NOTES_RECEIVED`, so a test can check on the upstream's side what it was sent. `notes_slow_read`
never answers in time: a lookup made to hang.
"""

from __future__ import annotations

import json
import os
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

NOTES = {
    "groceries": {"name": "groceries", "owner": "dana", "size": 120, "locked": False},
    "budget": {"name": "budget", "owner": "erik", "size": 4096, "locked": True},
}
_NAME = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
TOOLS = [
    types.Tool(name="notes_read", description="A note's owner, size and lock.", input_schema=_NAME),
    types.Tool(name="notes_slow_read", description="The same, very slowly.", input_schema=_NAME),
    types.Tool(
        name="notes_delete", description="Delete a note.", input_schema={**_NAME, "additionalProperties": False}
    ),
]


def _result(data: dict[str, Any], *, is_error: bool = False) -> types.CallToolResult:
    text = types.TextContent(type="text", text=json.dumps(data))
    return types.CallToolResult(content=[text], structured_content=data, is_error=is_error)


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    arguments = dict(params.arguments or {})
    note = NOTES.get(str(arguments.get("name")))
    if params.name == "notes_slow_read":
        await anyio.sleep(600)
    if params.name == "notes_delete":
        async with await anyio.open_file(os.environ["NOTES_RECEIVED"], "a") as received:
            await received.write(json.dumps(arguments) + "\n")
        return _result({"deleted": arguments.get("name")})
    if note is None:
        return _result({"error": f"no note named {arguments.get('name')!r}"}, is_error=True)
    return _result(note)


async def main() -> None:
    server = Server("notes", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
