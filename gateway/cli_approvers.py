"""The approver's commands: `countersign approvals …` through the API, `slack check`, `hash-password`.

Registered in `gateway.cli.COMMANDS`; heavy imports are deferred, as there, so the CLI starts quickly.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli_common import CONFIG_HELP, add_api_options, command, config_path, read_settings
from gateway.config import ServerSettings

if TYPE_CHECKING:
    import argparse

    from gateway.cli_common import Subparsers


# ---- approvals (through the approver API, so decisions reach held calls at once)


def add_approvals(sub: Subparsers) -> None:
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
        action = command(actions, name, help_text, cmd_approvals)
        add_api_options(action)
        action.add_argument("--json", action="store_true", help="print the API's JSON")
        if name == "list":
            action.add_argument(
                "--status", default="pending", help="pending (default), approved, executed, rejected, ..., or all"
            )
            action.add_argument("--limit", type=int, default=50, help="at most this many requests (default 50)")
            action.add_argument("--agent", metavar="NAME", help="only this agent's requests")
        elif name == "reject":
            action.add_argument("id", metavar="ID", nargs="?", help="the request id (apr_…); or give --agent")
            action.add_argument(
                "--agent", metavar="NAME", help="instead of ID: reject every pending request of this agent, one by one"
            )
        else:
            action.add_argument("id", metavar="ID", help="the request id (apr_…)")
        if name in ("approve", "reject"):
            action.add_argument("--reason", help="why (required to reject when the policy says so)")
        if name == "approve":
            action.add_argument(
                "--grant-minutes",
                type=float,
                metavar="N",
                help="also allow the same call for N minutes (a standing approval; cut to the policy's maximum)",
            )
            action.add_argument(
                "--grant-uses", type=int, metavar="N", help="with --grant-minutes: at most N calls under the grant"
            )
            action.add_argument(
                "--set",
                metavar="PATH=VALUE",
                action="append",
                default=[],
                help="approve with this argument changed (only those the tool's policy lists as editable); repeatable",
            )


def gateway_url(args: argparse.Namespace) -> str:
    url: str | None = args.url or os.environ.get("COUNTERSIGN_URL")
    if url:
        return url
    if args.config or os.environ.get("COUNTERSIGN_CONFIG") or Path(config_path(None)).is_file():
        # Only the address is needed: not the database's, the agents' or the approvers' secrets.
        return read_settings(args.config, only=("server",), ignore=("server.database_url",)).server.base_url
    return ServerSettings().base_url


def cmd_approvals(args: argparse.Namespace) -> int:
    from gateway.api_client import ApiClient, ApiError, print_approval, print_decision, print_table

    url = gateway_url(args)
    token = args.token or os.environ.get("COUNTERSIGN_API_TOKEN")
    if not token:
        print("error: give an approver API token with --token or COUNTERSIGN_API_TOKEN", file=sys.stderr)
        return 2
    client = ApiClient(url, token)
    try:
        if args.action == "list":
            status = None if args.status == "all" else args.status
            data = client.get("/api/approvals", {"status": status, "limit": str(args.limit), "agent": args.agent})
            if args.json:
                print(json.dumps(data, indent=2))
            else:
                print_table(data["approvals"])
        elif args.action == "show":
            data = client.get(f"/api/approvals/{args.id}")
            print(json.dumps(data, indent=2) if args.json else print_approval(data))
        elif args.action == "reject" and (args.id is None) == (args.agent is None):
            print("error: give a request ID or --agent NAME (not both)", file=sys.stderr)
            return 2
        elif args.action == "reject" and args.agent is not None:
            data = client.post("/api/approvals/reject", {"agent": args.agent, "reason": args.reason})
            if args.json:
                print(json.dumps(data, indent=2))
            else:
                print(data["message"])
                for refused in data["refused"]:
                    print(f"  not rejected: {refused['id']}: {refused['detail']}")
            if data["refused"]:
                return 1
        else:
            body: dict[str, Any] = {"reason": args.reason} if args.reason else {}
            if args.action == "approve" and (args.grant_minutes is not None or args.grant_uses is not None):
                body["grant"] = {"minutes": args.grant_minutes, "uses": args.grant_uses}
            if args.action == "approve" and args.set:
                edits = dict(item.partition("=")[::2] for item in args.set)
                if any("=" not in item or not item.partition("=")[0] for item in args.set):
                    print("error: --set takes PATH=VALUE, such as --set order.totalQuantity=50", file=sys.stderr)
                    return 2
                body["edits"] = edits
            data = client.post(f"/api/approvals/{args.id}/{args.action}", body)
            print(json.dumps(data, indent=2) if args.json else print_decision(data))
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# ---- slack


def add_slack(sub: Subparsers) -> None:
    slack = sub.add_parser("slack", help="Slack set-up tools", description="Slack set-up tools.")
    commands = slack.add_subparsers(dest="slack_command", required=True, metavar="COMMAND")
    check = command(commands, "check", "verify the Slack token, channel access and configuration", cmd_slack_check)
    check.add_argument("--config", metavar="FILE", help=CONFIG_HELP)


def cmd_slack_check(args: argparse.Namespace) -> int:
    from gateway.slack.check import check, report

    # Slack's own secrets, the address Slack calls, the policy's channels and the approvers' Slack
    # identities; never the database, the upstreams' or agents' secrets or approvers' API tokens.
    settings = read_settings(
        args.config,
        only=("server", "policy", "slack", "approvers"),
        ignore=("server.database_url", "approvers.api_token", "approvers.password_hash"),
    )
    text, code = report(asyncio.run(check(settings)))
    print(text)
    return code


# ---- hash-password


def add_hash_password(sub: Subparsers) -> None:
    hash_password = command(
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
