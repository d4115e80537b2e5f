"""The `countersign` command.

Each command is one `add_<command>` function that declares its arguments and one `cmd_<command>`
function that runs it; `build_parser` lists the adders. Commands that read the configuration all
find it the same way (`--config`, else `$COUNTERSIGN_CONFIG`, else `./countersign.toml`) and read
only the sections and secrets they use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli_db import add_db_commands, ready_to_serve
from gateway.config import ConfigError, ServerSettings, Settings, load_settings
from gateway.policy import PolicyError

CONFIG_HELP = "configuration file (default: $COUNTERSIGN_CONFIG, else ./countersign.toml)"

if TYPE_CHECKING:
    # What add_subparsers() returns; argparse names it only privately and it is generic only in stubs.
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def config_path(given: str | None) -> str:
    """The configuration file every command reads: --config, else $COUNTERSIGN_CONFIG, else ./countersign.toml."""
    return given or os.environ.get("COUNTERSIGN_CONFIG") or "countersign.toml"


def _settings(path: str | None, *, only: Collection[str] | None = None, ignore: Collection[str] = ()) -> Settings:
    return load_settings(config_path(path), only=only, ignore=ignore)


def _command(
    sub: _Subparsers, name: str, help_text: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
    parser.set_defaults(func=func)
    return parser


# ---- serve / demo / paper-broker / init


def add_serve(sub: _Subparsers) -> None:
    serve = _command(sub, "serve", "run the gateway: /mcp for agents, the approver API, /healthz", cmd_serve)
    serve.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    serve.add_argument("--host", help="address to listen on (overrides [server] host)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides [server] port)")
    serve.add_argument("--stdio", action="store_true", help="serve one MCP client on stdin/stdout")
    serve.add_argument("--agent", help="with --stdio: the configured agent this client is")
    serve.add_argument("--no-http", action="store_true", help="with --stdio: do not also serve the HTTP API")
    serve.add_argument(
        "--migrate", action="store_true", help="upgrade an older database schema first (under a lock: one replica)"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.serving import serve_http, serve_stdio

    settings = _settings(args.config)
    if args.host or args.port is not None:
        server = settings.server.model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port)) if v})
        settings = settings.model_copy(update={"server": server})
    if (code := ready_to_serve(settings.database_url, migrate=args.migrate, config=args.config)) != 0:
        return code
    if args.stdio:
        agent = _stdio_agent(settings, args.agent)
        return asyncio.run(serve_stdio(settings, agent, with_http=not args.no_http))
    return asyncio.run(serve_http(settings))


def _stdio_agent(settings: Settings, name: str | None) -> str:
    from approvals.approvers import token_digest

    token = os.environ.get("COUNTERSIGN_AGENT_TOKEN")
    if token:
        digest = token_digest(token)
        for agent in settings.agents:
            if agent.digest == digest:
                return agent.name
        raise ConfigError(settings.source, "agents", "COUNTERSIGN_AGENT_TOKEN matches no configured agent")
    if name:
        if any(a.name == name for a in settings.agents) or settings.server.dev_mode:
            return name
        raise ConfigError(settings.source, "agents", f"no agent named {name!r} is configured")
    if settings.server.dev_mode:
        return "dev"
    if len(settings.agents) == 1:
        return settings.agents[0].name
    raise ConfigError(
        settings.source, "agents", "say which agent this stdio client is: --agent NAME or COUNTERSIGN_AGENT_TOKEN"
    )


def add_demo(sub: _Subparsers) -> None:
    demo = _command(sub, "demo", "run the gateway in front of a paper broker with demo credentials", cmd_demo)
    demo.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    demo.add_argument(
        "--data-dir",
        default="countersign-demo",
        metavar="DIR",
        help="where the demo keeps its database and policy (default ./countersign-demo)",
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import banner, demo_settings
    from gateway.serving import serve_http

    settings = demo_settings(Path(args.data_dir), host=args.host, port=args.port)
    print(banner(settings), flush=True)
    # The demo's database is disposable and has no config to name in a message: upgrade it without asking.
    if (code := ready_to_serve(settings.database_url, migrate=True, config=None)) != 0:
        return code
    return asyncio.run(serve_http(settings))


def add_paper_broker(sub: _Subparsers) -> None:
    from gateway.paper_broker import DESCRIPTION, add_arguments

    paper = _command(sub, "paper-broker", "run the paper-broker MCP server (stdio, or --http PORT)", cmd_paper_broker)
    paper.description = DESCRIPTION
    add_arguments(paper)


def cmd_paper_broker(args: argparse.Namespace) -> int:
    from gateway.paper_broker import run

    return run(args)


def add_init(sub: _Subparsers) -> None:
    init = _command(sub, "init", "write a commented starter countersign.toml and policy.json", cmd_init)
    init.add_argument("--dir", default=".", help="folder to write the two files to (default: the current folder)")
    init.add_argument("--force", action="store_true", help="overwrite existing files")


def cmd_init(args: argparse.Namespace) -> int:
    from gateway.demo import command_name
    from gateway.starter import STARTER_POLICY_SUMMARY, new_api_token, starter_config, starter_policy

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    api_token = new_api_token()
    files = {folder / "countersign.toml": starter_config(api_token), folder / "policy.json": starter_policy()}
    existing = [str(p) for p in files if p.exists()]
    if existing and not args.force:
        print(f"countersign init: {', '.join(existing)} already exist; use --force to overwrite", file=sys.stderr)
        return 1
    for path, text in files.items():
        path.write_text(text)
        print(f"wrote {path}")
    print(f"approver alice's API token (shown once; the file keeps only its SHA-256): {api_token}")
    config = folder / "countersign.toml"
    print(f"{STARTER_POLICY_SUMMARY}: {command_name()} tools --config {config} shows what it does with each.")
    print(f"next: edit countersign.toml (upstreams, agents, approvers), then: {command_name()} serve --config {config}")
    return 0


# ---- policy


def add_policy(sub: _Subparsers) -> None:
    policy = sub.add_parser("policy", help="check or explain a policy file", description="Check or explain a policy.")
    commands = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    check = _command(commands, "check", "validate a policy file; exit 1 on errors", cmd_policy_check)
    check.add_argument("file", metavar="FILE", help="the policy document (JSON)")
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    check.add_argument(
        "--tools",
        metavar="FILE",
        help="a JSON file with the upstream's tools/list result, to check rules against the input schemas",
    )
    explain = _command(
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


def cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.policy import load_policy
    from gateway.policy_report import lint_policy

    schemas = _tool_schemas(args.tools)
    if isinstance(schemas, int):
        return schemas
    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    warnings = lint_policy(policy, schemas)
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
    from gateway.policy import load_policy
    from gateway.policy_report import explain

    schemas = _tool_schemas(args.tools)
    if isinstance(schemas, int):
        return schemas
    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        arguments = json.loads(args.arguments)
    except ValueError as exc:
        print(f"error: ARGS-JSON is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(arguments, dict):
        print("error: ARGS-JSON must be a JSON object, e.g. '{\"orderId\": 1001}'", file=sys.stderr)
        return 2
    print(explain(policy, args.tool, arguments, (schemas or {}).get(args.tool)))
    return 0


# ---- tools


def add_tools(sub: _Subparsers) -> None:
    tools = _command(
        sub, "tools", "list the upstreams' tools, their annotations and what the policy does with each", cmd_tools
    )
    tools.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    tools.add_argument("--policy", metavar="FILE", help="judge by this policy file instead of the configured one")
    tools.add_argument("--json", action="store_true", help="print JSON for machines instead of a table")


def cmd_tools(args: argparse.Namespace) -> int:
    from gateway.policy import load_policy
    from gateway.tool_report import as_json, as_table, fetch_tools

    # Connecting needs the upstreams (and their header secrets) and the policy; nothing else.
    settings = _settings(args.config, only=("policy", "upstreams"))
    policy = load_policy(args.policy or settings.policy_path)
    if not settings.upstreams:
        print(f"error: {settings.source}: upstreams: no upstream is configured", file=sys.stderr)
        return 2
    catalog = asyncio.run(fetch_tools(settings))
    print(json.dumps(as_json(policy, catalog), indent=2) if args.json else as_table(policy, catalog))
    return 1 if any(entry.error for entry in catalog) else 0


# ---- audit


def add_audit(sub: _Subparsers) -> None:
    audit = sub.add_parser("audit", help="audit log tools", description="Audit log tools.")
    commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = _command(
        commands,
        "verify",
        "verify the audit hash chain and print its head; report the first broken link",
        cmd_audit_verify,
    )
    verify.add_argument("--config", metavar="FILE", help=f"read [server] database_url from this {CONFIG_HELP}")
    verify.add_argument("--database-url", metavar="URL", help="the database to verify (instead of --config)")


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from approvals import audit
    from approvals.db import Database
    from approvals.errors import StoreUnavailable

    # Only [server] is read: verifying needs the database, not the gateway's other secrets.
    url = args.database_url or _settings(args.config, only=("server",)).database_url
    missing = _missing_sqlite_file(url)
    if missing is not None:
        # Opening it would create an empty database and report on that instead of the one meant.
        print(f"error: no database file at {missing}", file=sys.stderr)
        return 2

    async def run() -> audit.ChainReport | None:
        db = Database(url)
        try:
            async with db.read() as conn:
                if not await audit.exists(conn):
                    return None
                return await audit.verify(conn)
        finally:
            await db.dispose()

    try:
        report = asyncio.run(run())
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report is None:
        print("error: this database holds no audit log (no gateway has run against it)", file=sys.stderr)
        return 2
    print(report.describe())
    return 0 if report.ok else 1


def _missing_sqlite_file(url: str) -> Path | None:
    """The file an SQLite URL names when that file does not exist; None for other databases."""
    scheme, sep, rest = url.partition(":///")
    if not sep or not scheme.startswith("sqlite"):
        return None
    path = rest.split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    file = Path(path)
    return None if file.exists() else file


# ---- approvals (through the approver API, so decisions reach held calls at once)


def add_approvals(sub: _Subparsers) -> None:
    approvals = sub.add_parser(
        "approvals", help="list, show, approve or reject held calls", description="Held calls, through the API."
    )
    actions = approvals.add_subparsers(dest="action", required=True, metavar="COMMAND")
    for name, help_text in (
        ("list", "list requests (pending by default)"),
        ("show", "show one request with its arguments and timeline"),
        ("approve", "approve a request"),
        ("reject", "reject a request"),
    ):
        action = _command(actions, name, help_text, cmd_approvals)
        action.add_argument(
            "--url", help="gateway URL (default: $COUNTERSIGN_URL, else the configuration's public_url or host:port)"
        )
        action.add_argument("--token", help="approver API token (default: $COUNTERSIGN_API_TOKEN)")
        action.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
        action.add_argument("--json", action="store_true", help="print the API's JSON")
        if name == "list":
            action.add_argument(
                "--status", default="pending", help="pending (default), approved, executed, rejected, ..., or all"
            )
            action.add_argument("--limit", type=int, default=50, help="at most this many requests (default 50)")
        else:
            action.add_argument("id", metavar="ID", help="the request id (apr_…)")
        if name in ("approve", "reject"):
            action.add_argument("--reason", help="why (required to reject when the policy says so)")


def _gateway_url(args: argparse.Namespace) -> str:
    url: str | None = args.url or os.environ.get("COUNTERSIGN_URL")
    if url:
        return url
    if args.config or os.environ.get("COUNTERSIGN_CONFIG") or Path(config_path(None)).is_file():
        # Only the address is needed: not the database's, the agents' or the approvers' secrets.
        return _settings(args.config, only=("server",), ignore=("server.database_url",)).server.base_url
    return ServerSettings().base_url


def cmd_approvals(args: argparse.Namespace) -> int:
    from gateway.api_client import ApiClient, ApiError, print_approval, print_decision, print_table

    url = _gateway_url(args)
    token = args.token or os.environ.get("COUNTERSIGN_API_TOKEN")
    if not token:
        print("error: give an approver API token with --token or COUNTERSIGN_API_TOKEN", file=sys.stderr)
        return 2
    client = ApiClient(url, token)
    try:
        if args.action == "list":
            status = None if args.status == "all" else args.status
            data = client.get("/api/approvals", {"status": status, "limit": str(args.limit)})
            if args.json:
                print(json.dumps(data, indent=2))
            else:
                print_table(data["approvals"])
        elif args.action == "show":
            data = client.get(f"/api/approvals/{args.id}")
            print(json.dumps(data, indent=2) if args.json else print_approval(data))
        else:
            body: dict[str, Any] = {"reason": args.reason} if args.reason else {}
            data = client.post(f"/api/approvals/{args.id}/{args.action}", body)
            print(json.dumps(data, indent=2) if args.json else print_decision(data))
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# ---- slack


def add_slack(sub: _Subparsers) -> None:
    slack = sub.add_parser("slack", help="Slack set-up tools", description="Slack set-up tools.")
    commands = slack.add_subparsers(dest="slack_command", required=True, metavar="COMMAND")
    check = _command(commands, "check", "verify the Slack token, channel access and configuration", cmd_slack_check)
    check.add_argument("--config", metavar="FILE", help=CONFIG_HELP)


def cmd_slack_check(args: argparse.Namespace) -> int:
    from gateway.slack.check import check, report

    # Slack's own secrets, the address Slack calls, the policy's channels and the approvers' Slack
    # identities; never the database, the upstreams' or agents' secrets or approvers' API tokens.
    settings = _settings(
        args.config,
        only=("server", "policy", "slack", "approvers"),
        ignore=("server.database_url", "approvers.api_token", "approvers.password_hash"),
    )
    text, code = report(asyncio.run(check(settings)))
    print(text)
    return code


# ---- hash-password


def add_hash_password(sub: _Subparsers) -> None:
    hash_password = _command(
        sub, "hash-password", "print an argon2 hash for an approver's password_hash", cmd_hash_password
    )
    hash_password.add_argument("--password", help="the password (prompted for when omitted)")


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from argon2 import PasswordHasher

    password = args.password if args.password is not None else getpass.getpass("password: ")
    if not password:
        print("error: the password is empty", file=sys.stderr)
        return 2
    print(PasswordHasher().hash(password))
    return 0


COMMANDS: tuple[Callable[[_Subparsers], None], ...] = (  # the order of `countersign --help`
    add_serve,
    add_demo,
    add_paper_broker,
    add_init,
    add_policy,
    add_tools,
    add_audit,
    add_approvals,
    add_slack,
    add_db_commands,
    add_hash_password,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="countersign", description="Approval gateway for AI agents' MCP tool calls.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # One line per upstream HTTP request and per timeout job is noise at INFO in a busy gateway.
        for noisy in ("httpx2", "httpx", "apscheduler"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code: int = args.func(args)
    except (ConfigError, PolicyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
