"""`countersign connect CLIENT --agent NAME`: the snippet that points an MCP client at this gateway.

Clients that speak HTTP get the /mcp URL and the agent's bearer token; Claude Desktop, which only
spawns servers, gets `countersign serve --stdio --agent NAME`. The token is printed only with
`--show-token` (and only when the configuration holds it, not just its SHA-256); otherwise the
snippet reads it from the `COUNTERSIGN_TOKEN` environment variable where the client can, and
shows a placeholder where it cannot. docs/clients.md shows the same snippets.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli_common import CONFIG_HELP, command, config_path, read_settings

if TYPE_CHECKING:
    from gateway.cli_common import Subparsers

TOKEN_VARIABLE = "COUNTERSIGN_TOKEN"


@dataclass(frozen=True)
class Target:
    url: str
    agent: str
    token: str | None
    config: str

    def bearer(self, placeholder: str) -> str:
        return f"Bearer {self.token or placeholder}"


def _claude_desktop(t: Target) -> str:
    args = ["serve", "--stdio", "--agent", t.agent, "--config", t.config, "--no-http"]
    return json.dumps({"mcpServers": {"countersign": {"command": "countersign", "args": args}}}, indent=2)


def _claude_code(t: Target) -> str:
    server = {"type": "http", "url": t.url, "headers": {"Authorization": t.bearer(f"${{{TOKEN_VARIABLE}}}")}}
    return json.dumps({"mcpServers": {"countersign": server}}, indent=2)


def _cursor(t: Target) -> str:
    server = {"url": t.url, "headers": {"Authorization": t.bearer(f"${{env:{TOKEN_VARIABLE}}}")}}
    return json.dumps({"mcpServers": {"countersign": server}}, indent=2)


def _vscode(t: Target) -> str:
    prompt = {"type": "promptString", "id": "countersign-token", "description": "Countersign agent token"}
    server = {"type": "http", "url": t.url, "headers": {"Authorization": t.bearer("${input:countersign-token}")}}
    document = {"inputs": [] if t.token else [{**prompt, "password": True}], "servers": {"countersign": server}}
    return json.dumps(document, indent=2)


def _inspector(t: Target) -> str:
    return "\n".join(
        [
            "npx @modelcontextprotocol/inspector",
            "# In the page: Transport Type: Streamable HTTP",
            f"#   URL: {t.url}",
            f"#   Authentication, header Authorization: {t.bearer('<the agent token>')}",
        ]
    )


def _python(t: Target) -> str:
    token = json.dumps(t.token) if t.token else f'os.environ["{TOKEN_VARIABLE}"]'
    return f"""import asyncio
import os

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main() -> None:
    headers = {{"Authorization": "Bearer " + {token}}}
    # A held call waits for a human; Countersign keeps its response alive with a byte every 2 s
    # (under httpx's default 5 s read timeout), and this leaves room for a slow proxy.
    timeout = httpx2.Timeout(30.0, read=60.0)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        Client(streamable_http_client({json.dumps(t.url)}, http_client=http)) as client,
    ):
        tools = await client.list_tools()
        print([tool.name for tool in tools.tools])


asyncio.run(main())
"""


def _typescript(t: Target) -> str:
    spec = {"url": t.url, "token": t.token or "<the agent token>", "tool": "<a tool>", "listFirst": True}
    return "\n".join(
        [
            "# tests/node/call_tool.mjs from the Countersign repository (the same file its tests run):",
            f"node call_tool.mjs '{json.dumps({**spec, 'timeoutMs': 60000, 'resetTimeoutOnProgress': True})}'",
        ]
    )


# Each client: how its snippet is rendered, and what the snippet is (for the reader).
CLIENTS: dict[str, tuple[Callable[[Target], str], str]] = {
    "claude-desktop": (_claude_desktop, "claude_desktop_config.json (Claude Desktop spawns servers: stdio)"),
    "claude-code": (_claude_code, ".mcp.json in the project (or `claude mcp add-json countersign '<server>'`)"),
    "cursor": (_cursor, "~/.cursor/mcp.json (or .cursor/mcp.json in the project)"),
    "vscode": (_vscode, ".vscode/mcp.json"),
    "inspector": (_inspector, "the MCP Inspector"),
    "python": (_python, "the Python SDK"),
    "typescript": (_typescript, "the TypeScript SDK"),
}


def snippet(client: str, target: Target) -> str:
    render, _ = CLIENTS[client]
    return render(target)


def add_connect(sub: Subparsers) -> None:
    connect = command(sub, "connect", "print the snippet that points an MCP client at this gateway", cmd_connect)
    connect.add_argument("client", choices=sorted(CLIENTS), help="the MCP client to set up")
    connect.add_argument("--agent", required=True, help="the configured agent ([[agents]] name) the client is")
    connect.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    connect.add_argument("--url", help="the gateway's /mcp URL as the client reaches it (default: from [server])")
    connect.add_argument(
        "--show-token", action="store_true", help="put the agent's token in the snippet (when the file holds it)"
    )


def cmd_connect(args: argparse.Namespace) -> int:
    settings = read_settings(args.config, only=("server", "agents"))
    agents = {a.name: a for a in settings.agents}
    agent = agents.get(args.agent)
    if agent is None:
        known = ", ".join(sorted(agents)) or "none are configured"
        print(f"countersign connect: no agent named {args.agent!r} in [[agents]] ({known})", file=sys.stderr)
        return 2
    if args.show_token and agent.token is None:
        print(
            f"countersign connect: agent {args.agent!r} is configured by token_sha256; the token itself is not "
            "in the file, so the snippet keeps a placeholder",
            file=sys.stderr,
        )
    target = Target(
        url=args.url or f"{settings.server.base_url}/mcp",
        agent=agent.name,
        token=agent.token if args.show_token else None,
        config=str(Path(config_path(args.config)).resolve()),
    )
    _, where = CLIENTS[args.client]
    print(f"# {where}", file=sys.stderr)
    print(snippet(args.client, target))
    return 0
