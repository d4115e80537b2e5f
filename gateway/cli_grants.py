"""`countersign grants list|show|revoke`: standing approvals, through the approver API.

Registered in `gateway.cli.COMMANDS`; it shares the approvals commands' way of finding the gateway.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from gateway.cli_approvers import gateway_url
from gateway.cli_common import add_api_options, command

if TYPE_CHECKING:
    import argparse

    from gateway.cli_common import Subparsers


def add_grants(sub: Subparsers) -> None:
    grants = sub.add_parser(
        "grants",
        help="list, show or revoke standing approvals",
        description="Standing approvals (approve and allow the same call for a while), through the API.",
    )
    actions = grants.add_subparsers(dest="action", required=True, metavar="COMMAND")
    for name, help_text in (
        ("list", "list standing approvals (live ones by default)"),
        ("show", "show one standing approval"),
        ("revoke", "revoke a standing approval: the next matching call is held again"),
    ):
        action = command(actions, name, help_text, cmd_grants)
        add_api_options(action)
        action.add_argument("--json", action="store_true", help="print the API's JSON")
        if name == "list":
            action.add_argument(
                "--state", default="live", help="live (default), revoked, used up, expired, a comma list, or all"
            )
            action.add_argument("--agent", metavar="NAME", help="only this agent's grants")
            action.add_argument("--tool", metavar="NAME", help="only grants for this tool")
        else:
            action.add_argument("id", metavar="ID", help="the grant id (grt_…)")


def print_grants(grants: list[dict[str, Any]]) -> str:
    if not grants:
        return "no standing approvals"
    rows = [("ID", "STATE", "TOOL", "AGENT", "USED", "UNTIL (UTC)", "BY")]
    for g in grants:
        until = g["expires_at"][:19].replace("T", " ")
        rows.append((g["id"], g["state"], g["tool"], g["agent"], f"{g['uses']}/{g['max_uses']}", until, g["approver"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def print_grant(g: dict[str, Any]) -> str:
    key = "all arguments" if g["key"] is None else ", ".join(g["key"])
    lines = [
        f"{g['id']}  {g['state'].upper()}",
        f"  now        {g['summary']}",
        f"  granted    by {g['approver']} via {g['channel']} with request {g['request_id']}",
        f"  matches    {g['tool']} by {g['agent']}, same {key}",
        f"  uses       {g['uses']} of {g['max_uses']}",
        f"  created    {g['created_at']}",
        f"  expires    {g['expires_at']}",
    ]
    if g.get("revoked_at"):
        lines.append(f"  revoked    {g['revoked_at']} by {g['revoked_by']}")
    lines.append("  arguments")
    lines.extend("    " + line for line in json.dumps(g["arguments"], indent=2, sort_keys=True).splitlines())
    return "\n".join(lines)


def cmd_grants(args: argparse.Namespace) -> int:
    from gateway.api_client import ApiClient, ApiError

    token = args.token or os.environ.get("COUNTERSIGN_API_TOKEN")
    if not token:
        print("error: give an approver API token with --token or COUNTERSIGN_API_TOKEN", file=sys.stderr)
        return 2
    client = ApiClient(gateway_url(args), token)
    try:
        if args.action == "list":
            data = client.get("/api/grants", {"state": args.state, "agent": args.agent, "tool": args.tool})
            print(json.dumps(data, indent=2) if args.json else print_grants(data["grants"]))
        elif args.action == "show":
            data = client.get(f"/api/grants/{args.id}")
            print(json.dumps(data, indent=2) if args.json else print_grant(data))
        else:
            data = client.delete(f"/api/grants/{args.id}")
            print(json.dumps(data, indent=2) if args.json else data["message"])
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
