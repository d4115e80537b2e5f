"""`countersign policy suggest`: connect to upstreams and write a starter policy from their tools' annotations.

Registered by `gateway.cli_policy.add_policy`; the judging is `gateway.policy_suggest`.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.cli_common import CONFIG_HELP, command, read_settings
from gateway.config import ConfigError, Settings, parse_settings

if TYPE_CHECKING:
    import argparse

    from gateway.cli_common import Subparsers


def add_suggest(commands: Subparsers) -> None:
    suggest = command(
        commands,
        "suggest",
        "write a starter policy from the upstreams' tools and their MCP annotations, saying why for each tool",
        cmd_policy_suggest,
    )
    suggest.add_argument("--config", metavar="FILE", help=f"read the upstreams from this {CONFIG_HELP}")
    suggest.add_argument(
        "--upstream",
        metavar="CMD-OR-URL",
        action="append",
        help="instead of the configured upstreams: an MCP server's URL (http…) or the command that starts it "
        "on stdio (quoted, e.g. 'npx -y @modelcontextprotocol/server-filesystem /data'); may be repeated",
    )
    suggest.add_argument("-o", "--output", metavar="FILE", help="write the policy here (default: standard output)")
    suggest.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    suggest.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="how long to wait for each upstream (30)"
    )


# Programs that run another one: the upstream is named after what they run.
_LAUNCHERS = frozenset({"npx", "uvx", "uv", "run", "node", "deno", "bun", "python", "python3", "env"})


def _named(index: int, target: str) -> dict[str, Any]:
    """An upstream entry for a --upstream value, named after its host or program (names must be simple)."""
    entry: dict[str, Any]
    if target.startswith(("http://", "https://")):
        stem, entry = urlsplit(target).hostname or "upstream", {"url": target}
    else:
        words = shlex.split(target)
        if not words:
            raise ValueError("--upstream: the command is empty")
        program = next((w for w in words if not w.startswith("-") and Path(w).name not in _LAUNCHERS), words[0])
        stem, entry = Path(program).name, {"command": words}
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-") or "upstream"
    return {"name": f"{name}-{index}" if index else name, **entry}


def _settings(args: argparse.Namespace) -> Settings:
    if not args.upstream:
        return read_settings(args.config, only=("upstreams",))
    upstreams = [{**_named(i, target), "connect_timeout": args.timeout} for i, target in enumerate(args.upstream)]
    return parse_settings({"upstreams": upstreams}, source="--upstream")


def cmd_policy_suggest(args: argparse.Namespace) -> int:
    from gateway.policy import PolicyError, parse_policy
    from gateway.policy_suggest import explain, suggest
    from gateway.tool_report import fetch_tools

    output = Path(args.output) if args.output else None
    if output is not None and output.exists() and not args.force:
        print(f"error: {output} exists; give --force to overwrite it", file=sys.stderr)
        return 2
    try:
        settings = _settings(args)
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not settings.upstreams:
        print(f"error: {settings.source}: upstreams: no upstream is configured (or give --upstream)", file=sys.stderr)
        return 2
    catalog = asyncio.run(fetch_tools(settings, within=args.timeout if args.upstream else None))
    if all(entry.error is not None for entry in catalog):
        for entry in catalog:
            print(f"error: upstream {entry.upstream}: not reached ({entry.error})", file=sys.stderr)
        return 1
    document, suggestions = suggest(catalog)
    try:
        parse_policy(document, "<suggested>")  # what is written must be what `policy check` accepts
    except PolicyError as exc:  # a tool name the format cannot hold
        print(f"error: the suggested policy does not validate: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    reasons = explain(suggestions, catalog)
    if output is None:
        sys.stdout.write(text)
        print(reasons, file=sys.stderr)
    else:
        output.write_text(text, encoding="utf-8")
        print(reasons)
        print(f"\nwrote {output}: {len(suggestions)} tool(s); check it with: countersign policy check {output}")
    return 1 if any(entry.error for entry in catalog) else 0
