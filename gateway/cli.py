"""The `countersign` command.

Each command is one `add_<command>` function that declares its arguments and one `cmd_<command>`
function that runs it; `build_parser` lists the adders. Commands that read the configuration all
find it the same way (`--config`, else `$COUNTERSIGN_CONFIG`, else `./countersign.toml`) and read
only the sections and secrets they use. This module holds the registry (`COMMANDS`) and the commands
that run a gateway; the others live in `gateway.cli_policy`, `gateway.cli_approvers` and `gateway.cli_db`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli_approvers import add_approvals, add_hash_password, add_slack
from gateway.cli_audit import ACCEPT_ROLLBACK_HELP, add_audit, audit_ready
from gateway.cli_common import CONFIG_HELP, command, read_settings
from gateway.cli_connect import add_connect
from gateway.cli_db import add_db_commands, ready_to_serve
from gateway.cli_grants import add_grants
from gateway.cli_policy import add_policy, add_tools
from gateway.config import ConfigError, Settings
from gateway.policy import PolicyError

if TYPE_CHECKING:
    from gateway.cli_common import Subparsers


# ---- serve / demo / paper-broker / init


def add_serve(sub: Subparsers) -> None:
    serve = command(sub, "serve", "run the gateway: /mcp for agents, the approver API, /healthz", cmd_serve)
    serve.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    serve.add_argument("--host", help="address to listen on (overrides [server] host)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides [server] port)")
    serve.add_argument("--stdio", action="store_true", help="serve one MCP client on stdin/stdout")
    serve.add_argument("--agent", help="with --stdio: the configured agent this client is")
    serve.add_argument("--no-http", action="store_true", help="with --stdio: do not also serve the HTTP API")
    serve.add_argument(
        "--migrate", action="store_true", help="upgrade an older database schema first (under a lock: one replica)"
    )
    serve.add_argument("--accept-audit-rollback", action="store_true", help=ACCEPT_ROLLBACK_HELP)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.serving import run, serve_http, serve_stdio

    settings = read_settings(args.config)
    if args.host or args.port is not None:
        server = settings.server.model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port)) if v})
        settings = settings.model_copy(update={"server": server})
    if (code := ready_to_serve(settings.database_url, migrate=args.migrate, config=args.config)) != 0:
        return code
    accept = args.accept_audit_rollback
    if (code := audit_ready(settings, accept_rollback=accept)) != 0:
        return code
    if args.stdio:
        agent = _stdio_agent(settings, args.agent)
        return run(serve_stdio(settings, agent, with_http=not args.no_http, accept_audit_rollback=accept))
    return run(serve_http(settings, accept_audit_rollback=accept))


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


def add_demo(sub: Subparsers) -> None:
    demo = command(sub, "demo", "run the gateway in front of a paper broker with demo credentials", cmd_demo)
    demo.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    demo.add_argument(
        "--data-dir",
        default="countersign-demo",
        metavar="DIR",
        help="where the demo keeps its database and policy (default ./countersign-demo)",
    )
    demo.add_argument("--accept-audit-rollback", action="store_true", help=ACCEPT_ROLLBACK_HELP)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import banner, demo_settings
    from gateway.serving import run, serve_http

    settings = demo_settings(Path(args.data_dir), host=args.host, port=args.port)
    print(banner(settings), flush=True)
    # The demo's database is disposable and has no config to name in a message: upgrade it without asking.
    if (code := ready_to_serve(settings.database_url, migrate=True, config=None)) != 0:
        return code
    accept = args.accept_audit_rollback
    if (code := audit_ready(settings, accept_rollback=accept)) != 0:
        return code
    return run(serve_http(settings, accept_audit_rollback=accept))


def add_paper_broker(sub: Subparsers) -> None:
    from gateway.paper_broker import DESCRIPTION, add_arguments

    paper = command(sub, "paper-broker", "run the paper-broker MCP server (stdio, or --http PORT)", cmd_paper_broker)
    paper.description = DESCRIPTION
    add_arguments(paper)


def cmd_paper_broker(args: argparse.Namespace) -> int:
    from gateway.paper_broker import run

    return run(args)


def add_init(sub: Subparsers) -> None:
    init = command(sub, "init", "write a commented starter countersign.toml and policy.json", cmd_init)
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


COMMANDS: tuple[Callable[[Subparsers], None], ...] = (  # the order of `countersign --help`
    add_serve,
    add_demo,
    add_paper_broker,
    add_init,
    add_policy,
    add_tools,
    add_connect,
    add_audit,
    add_approvals,
    add_grants,
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
