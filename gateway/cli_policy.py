"""`countersign policy check|explain` and `countersign tools`: what a policy file says, and does to each tool.

Registered in `gateway.cli.COMMANDS`; heavy imports are deferred, as there, so the CLI starts quickly.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from gateway.cli_common import CONFIG_HELP, command, read_settings
from gateway.cli_shadow import add_shadow
from gateway.cli_suggest import add_suggest
from gateway.policy import Policy, PolicyError

if TYPE_CHECKING:
    import argparse

    from gateway.cli_common import Subparsers


# ---- policy


def add_policy(sub: Subparsers) -> None:
    policy = sub.add_parser("policy", help="check or explain a policy file", description="Check or explain a policy.")
    commands = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    check = command(commands, "check", "validate a policy file; exit 1 on errors", cmd_policy_check)
    check.add_argument(
        "file", metavar="FILE", nargs="?", help="the policy document (JSON); with --config, the configured one"
    )
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    check.add_argument(
        "--tools",
        metavar="FILE",
        help="a JSON file with the upstream's tools/list result, to check rules against the input schemas",
    )
    check.add_argument(
        "--config",
        metavar="CONFIG",
        help="also check against this configuration: its approvers and agents, and its upstreams' tools (connects)",
    )
    explain = command(
        commands, "explain", "show the decision for one call and the rule that made it", cmd_policy_explain
    )
    explain.add_argument("file", metavar="FILE", help="the policy document (JSON)")
    explain.add_argument("tool", metavar="TOOL", help="the tool name, as agents see it")
    explain.add_argument(
        "arguments", metavar="ARGS-JSON", nargs="?", default="{}", help="the call's arguments as a JSON object"
    )
    explain.add_argument(
        "--tools",
        metavar="FILE",
        help="a JSON file with the upstream's tools/list result, to evaluate with the schema's defaults",
    )
    add_suggest(commands)
    add_shadow(commands)
    explain.add_argument("--agent", metavar="NAME", help="the calling agent's name, for conditions on agent.name")
    explain.add_argument(
        "--group",
        metavar="GROUP",
        action="append",
        default=[],
        help="a group of the calling agent, for conditions on agent.groups (repeatable)",
    )


def _tool_schemas(path: str | None) -> dict[str, dict[str, Any]] | int | None:
    """The input schemas in a --tools file, None without one, or exit code 2 for a file that cannot be read."""
    from gateway.policy_report import load_tool_schemas

    if path is None:
        return None
    try:
        return load_tool_schemas(path)
    except (OSError, ValueError) as exc:
        print(f"error: --tools {path}: {exc}", file=sys.stderr)
        return 2


def _policy_and_schemas(args: argparse.Namespace) -> tuple[Policy, dict[str, dict[str, Any]] | None] | int:
    """The policy FILE and the --tools schemas, or the exit code after saying what was wrong."""
    from gateway.policy import load_policy

    schemas = _tool_schemas(args.tools)
    if isinstance(schemas, int):
        return schemas
    try:
        return load_policy(args.file), schemas
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.policy_report import lint_policy

    settings = None
    if args.config is not None:
        # Names and groups of people and agents, and the upstreams to connect to; approvers' secrets are not needed.
        settings = read_settings(
            args.config,
            only=("policy", "upstreams", "agents", "agent_jwt", "approvers"),
            ignore=("approvers.api_token", "approvers.password_hash"),
        )
        args.file = args.file or str(settings.policy_path)
    elif args.file is None:
        print("error: name the policy FILE, or give --config to check the configured one", file=sys.stderr)
        return 2
    loaded = _policy_and_schemas(args)
    if isinstance(loaded, int):
        return loaded
    policy, schemas = loaded
    world = []
    if settings is not None:
        from gateway.policy_world import agent_warnings, approver_warnings, tool_warnings
        from gateway.tool_report import fetch_tools

        catalog = asyncio.run(fetch_tools(settings)) if settings.upstreams else []
        if schemas is None and catalog:
            schemas = {tool.name: tool.input_schema for entry in catalog for tool in entry.tools}
        world = [
            *tool_warnings(policy, catalog, settings),
            *approver_warnings(policy, settings),
            *agent_warnings(policy, settings),
        ]
    warnings = [*lint_policy(policy, schemas), *world]
    for warning in warnings:
        print(f"warning: {args.file}: {warning.path}: {warning.message}", file=sys.stderr)
    entries = len(policy.tools)
    summary = (
        f'default "{policy.default}", {entries} tool {"entry" if entries == 1 else "entries"}, '
        f"{len(policy.hide)} hidden"
    )
    print(f"{args.file}: valid ({summary}){', with warnings' if warnings else ''}")
    return 1 if warnings and args.strict else 0


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from gateway.policy_report import explain

    loaded = _policy_and_schemas(args)
    if isinstance(loaded, int):
        return loaded
    policy, schemas = loaded
    try:
        arguments = json.loads(args.arguments)
    except ValueError as exc:
        print(f"error: ARGS-JSON is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(arguments, dict):
        print("error: ARGS-JSON must be a JSON object, e.g. '{\"orderId\": 1001}'", file=sys.stderr)
        return 2
    from gateway.identity import AgentIdentity

    agent = AgentIdentity(args.agent, tuple(args.group)) if args.agent or args.group else None
    print(explain(policy, args.tool, arguments, (schemas or {}).get(args.tool), agent=agent))
    return 0


# ---- tools


def add_tools(sub: Subparsers) -> None:
    tools = command(
        sub, "tools", "list the upstreams' tools, their annotations and what the policy does with each", cmd_tools
    )
    tools.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    tools.add_argument("--policy", metavar="FILE", help="judge by this policy file instead of the configured one")
    tools.add_argument("--json", action="store_true", help="print JSON for machines instead of a table")


def cmd_tools(args: argparse.Namespace) -> int:
    from gateway.policy import load_policy
    from gateway.tool_report import as_json, as_table, fetch_tools

    # Connecting needs the upstreams (and their header secrets) and the policy; nothing else.
    settings = read_settings(args.config, only=("policy", "upstreams"))
    policy = load_policy(args.policy or settings.policy_path)
    if not settings.upstreams:
        print(f"error: {settings.source}: upstreams: no upstream is configured", file=sys.stderr)
        return 2
    catalog = asyncio.run(fetch_tools(settings))
    print(json.dumps(as_json(policy, catalog), indent=2) if args.json else as_table(policy, catalog))
    return 1 if any(entry.error for entry in catalog) else 0
