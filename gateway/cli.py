"""The `countersign` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from gateway.cli_db import add_db_commands, ready_to_serve
from gateway.config import ConfigError, Settings, load_settings
from gateway.policy import PolicyError


def _settings(path: str | None, *, only: Collection[str] | None = None) -> Settings:
    config = path or os.environ.get("COUNTERSIGN_CONFIG") or "countersign.toml"
    return load_settings(config, only=only)


# ---- serve / demo


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


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import banner, demo_settings
    from gateway.serving import serve_http

    settings = demo_settings(Path(args.data_dir), host=args.host, port=args.port)
    print(banner(settings), flush=True)
    # The demo's database is disposable and has no config to name in a message: upgrade it without asking.
    if (code := ready_to_serve(settings.database_url, migrate=True, config=None)) != 0:
        return code
    return asyncio.run(serve_http(settings))


def cmd_paper_broker(args: argparse.Namespace) -> int:
    from gateway.paper_broker import main as paper_main

    return paper_main(args.rest)


def cmd_init(args: argparse.Namespace) -> int:
    from gateway.starter import new_api_token, starter_config, starter_policy

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
    print(
        "next: edit countersign.toml (upstreams, agents, approvers), then: countersign serve --config "
        f"{folder / 'countersign.toml'}"
    )
    return 0


# ---- policy


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
    from gateway.policy import PolicyError, load_policy
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
    print(f"{args.file}: valid ({policy!r}){', with warnings' if warnings else ''}")
    return 1 if warnings and args.strict else 0


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from gateway.policy import PolicyError, load_policy
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


# ---- audit


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from approvals import audit
    from approvals.db import Database
    from approvals.errors import StoreUnavailable

    # Only [server] is read: verifying needs the database, not the gateway's other secrets.
    url = args.database_url or _settings(args.config, only=("server",)).database_url

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


# ---- approvals (through the approver API, so decisions reach held calls at once)


def cmd_approvals(args: argparse.Namespace) -> int:
    from gateway.api_client import ApiClient, ApiError, print_approval, print_table

    url = args.url or os.environ.get("COUNTERSIGN_URL")
    if not url:
        url = (
            _settings(args.config, only=("server",)).server.base_url
            if (args.config or os.environ.get("COUNTERSIGN_CONFIG"))
            else ("http://127.0.0.1:8080")
        )
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
            print(json.dumps(data, indent=2) if args.json else data["message"])
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from argon2 import PasswordHasher

    password = args.password if args.password is not None else getpass.getpass("password: ")
    if not password:
        print("error: the password is empty", file=sys.stderr)
        return 2
    print(PasswordHasher().hash(password))
    return 0


# ---- slack


def cmd_slack_check(args: argparse.Namespace) -> int:
    from gateway.slack.check import check, report

    settings = _settings(args.config)
    text, code = report(asyncio.run(check(settings)))
    print(text)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="countersign", description="Approval gateway for AI agents' MCP tool calls.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="configuration file (default: $COUNTERSIGN_CONFIG or ./countersign.toml)")
    serve.add_argument("--host", help="override [server] host")
    serve.add_argument("--port", type=int, help="override [server] port")
    serve.add_argument("--stdio", action="store_true", help="serve one MCP client on stdin/stdout")
    serve.add_argument("--agent", help="with --stdio: the configured agent this client is")
    serve.add_argument("--no-http", action="store_true", help="with --stdio: do not also serve the HTTP API")
    serve.add_argument("--migrate", action="store_true", help="upgrade an older database schema first (one replica)")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="run the gateway in front of a paper broker with demo credentials")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--data-dir", default="countersign-demo", help="where the demo keeps its database and policy")
    demo.set_defaults(func=cmd_demo)

    paper = sub.add_parser(
        "paper-broker", help="run the paper-broker MCP server (stdio, or --http PORT)", add_help=False
    )
    paper.add_argument("rest", nargs=argparse.REMAINDER)
    paper.set_defaults(func=cmd_paper_broker)

    init = sub.add_parser("init", help="write a commented starter countersign.toml and policy.json")
    init.add_argument("--dir", default=".")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.set_defaults(func=cmd_init)

    policy = sub.add_parser("policy", help="check or explain a policy file").add_subparsers(
        dest="policy_command", required=True
    )
    check = policy.add_parser("check", help="validate a policy file; exit 1 on errors")
    check.add_argument("file")
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    tools_help = "a JSON file with the upstream's tools/list result, to check rules against the input schemas"
    check.add_argument("--tools", metavar="FILE", help=tools_help)
    check.set_defaults(func=cmd_policy_check)
    explain = policy.add_parser("explain", help="show the decision for one call and the rule that made it")
    explain.add_argument("file")
    explain.add_argument("tool")
    explain.add_argument("arguments", metavar="ARGS-JSON", nargs="?", default="{}")
    defaults_help = "a JSON file with the upstream's tools/list result, to evaluate with the schema's defaults"
    explain.add_argument("--tools", metavar="FILE", help=defaults_help)
    explain.set_defaults(func=cmd_policy_explain)

    audit = sub.add_parser("audit", help="audit log tools").add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="verify the audit hash chain; report the first broken link")
    verify.add_argument("--config")
    verify.add_argument("--database-url", help="database URL (instead of --config)")
    verify.set_defaults(func=cmd_audit_verify)

    approvals = sub.add_parser("approvals", help="list, show, approve or reject held calls")
    actions = approvals.add_subparsers(dest="action", required=True)
    for name, help_text in (
        ("list", "list requests"),
        ("show", "show one request"),
        ("approve", "approve a request"),
        ("reject", "reject a request"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("--url", help="gateway URL (default: $COUNTERSIGN_URL, the config's public_url)")
        action.add_argument("--token", help="approver API token (default: $COUNTERSIGN_API_TOKEN)")
        action.add_argument("--config")
        action.add_argument("--json", action="store_true", help="print the API's JSON")
        if name == "list":
            action.add_argument("--status", default="pending", help="pending (default), approved, ..., or all")
            action.add_argument("--limit", type=int, default=50)
        else:
            action.add_argument("id")
        if name in ("approve", "reject"):
            action.add_argument("--reason", help="why (required to reject when the policy says so)")
        action.set_defaults(func=cmd_approvals)

    slack = sub.add_parser("slack", help="Slack set-up tools").add_subparsers(dest="slack_command", required=True)
    slack_check = slack.add_parser("check", help="verify the Slack token, channel access and configuration")
    slack_check.add_argument("--config", help="configuration file (default: $COUNTERSIGN_CONFIG or ./countersign.toml)")
    slack_check.set_defaults(func=cmd_slack_check)

    add_db_commands(sub)

    hash_password = sub.add_parser("hash-password", help="print an argon2 hash for an approver's password_hash")
    hash_password.add_argument("--password", help="the password (prompted for when omitted)")
    hash_password.set_defaults(func=cmd_hash_password)
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
