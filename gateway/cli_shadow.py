"""`countersign policy shadow`: the calls the shadow policy would have decided differently, through the API.

Registered by `gateway.cli_policy.add_policy`; the answer is `GET /api/shadow` (`gateway.shadow_log`).
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from gateway.cli_common import add_api_options, command

if TYPE_CHECKING:
    import argparse

    from gateway.cli_common import Subparsers


def add_shadow(commands: Subparsers) -> None:
    shadow = command(
        commands,
        "shadow",
        "list the calls the shadow policy ([policy] shadow) would have decided differently, newest first",
        cmd_policy_shadow,
    )
    add_api_options(shadow)
    shadow.add_argument("--agent", metavar="NAME", help="only this agent's calls")
    shadow.add_argument("--tool", metavar="NAME", help="only calls of this tool")
    shadow.add_argument(
        "--decision", help="only where the shadow would: allow, deny, hidden, hold (also: other approvers) or limited"
    )
    shadow.add_argument("--since", metavar="TIME", help="only from this time on (ISO 8601, UTC unless it says)")
    shadow.add_argument("--until", metavar="TIME", help="only before this time")
    shadow.add_argument("--limit", type=int, default=50, help="at most this many (default 50, at most 1000)")
    shadow.add_argument("--json", action="store_true", help="print the API's JSON")


def cmd_policy_shadow(args: argparse.Namespace) -> int:
    from gateway.api_client import ApiClient, ApiError
    from gateway.cli_approvers import gateway_url

    token = args.token or os.environ.get("COUNTERSIGN_API_TOKEN")
    if not token:
        print("error: give an approver API token with --token or COUNTERSIGN_API_TOKEN", file=sys.stderr)
        return 2
    query = {
        "agent": args.agent,
        "tool": args.tool,
        "decision": args.decision,
        "since": args.since,
        "until": args.until,
        "limit": str(args.limit),
    }
    try:
        data = ApiClient(gateway_url(args), token).get("/api/shadow", query)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else as_text(data))
    return 0


def as_text(data: dict[str, Any]) -> str:
    standing = data.get("shadow")
    lines = [standing["message"] if standing else "no shadow policy has been configured ([policy] shadow)"]
    lines.extend(f"{t['kind']}: {t['message']}" for t in data.get("trouble", []))
    differences = data.get("differences", [])
    if not differences:
        lines.append("no differences")
        return "\n".join(lines)
    rows = [("#", "AT (UTC)", "AGENT", "TOOL", "LIVE", "SHADOW", "ARGUMENTS")]
    for d in differences:
        arguments = json.dumps(d["arguments"], separators=(",", ":"), ensure_ascii=False)
        at = d["at"][:19].replace("T", " ")
        live, shadow = _decision(d["live"]), _decision(d["shadow"])
        rows.append((str(d["seq"]), at, d["agent"] or "", d["tool"] or "", live, shadow, _cut(arguments, 60)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.append("")
    lines.extend("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    if data.get("next_before"):
        lines.append(f"(more: the API's before={data['next_before']} gives the next page)")
    return "\n".join(lines)


def _decision(side: dict[str, Any]) -> str:
    decision = str(side.get("decision", "?"))
    if side.get("approvers") is not None and decision == "hold":
        return f"hold:{','.join(side['approvers']) or 'anyone'}/{side.get('quorum')}"
    return decision


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
