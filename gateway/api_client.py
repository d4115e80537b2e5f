"""A small client of the approver API for the CLI (stdlib only, so the CLI starts fast)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

# Which approver tool is talking to the API; the API records decisions under this channel ("api" or "cli").
CHANNEL_HEADER = "Countersign-Channel"


class ApiError(Exception):
    pass


class ApiClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def get(self, path: str, query: dict[str, str | None] | None = None) -> Any:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        suffix = f"?{urllib.parse.urlencode(params)}" if params else ""
        return self._send(urllib.request.Request(self.base_url + path + suffix, method="GET"))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(), method="POST")
        request.add_header("Content-Type", "application/json")
        return self._send(request)

    def delete(self, path: str) -> Any:
        return self._send(urllib.request.Request(self.base_url + path, method="DELETE"))

    def _send(self, request: urllib.request.Request) -> Any:
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        # Decisions made here are recorded as made through the CLI, not the raw API.
        request.add_header(CHANNEL_HEADER, "cli")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("detail")
            except ValueError:
                detail = None
            raise ApiError(f"{exc.code} {exc.reason}: {detail or 'no detail'}") from None
        except urllib.error.URLError as exc:
            raise ApiError(f"cannot reach {self.base_url}: {exc.reason}") from None


def print_table(approvals: list[dict[str, Any]]) -> None:
    """One row per request, and under it the request's summary: where it stands, in the words every channel uses."""
    if not approvals:
        print("no requests")
        return
    rows = [("ID", "STATUS", "TOOL", "AGENT", "EXPIRES (UTC)", "ARGUMENTS")]
    summaries = [""]
    for a in approvals:
        summaries.append(a.get("summary") or "")
        arguments = json.dumps(a["arguments"], separators=(",", ":"))
        rows.append(
            (
                a["id"],
                a["status"],
                a["tool"],
                a["agent"],
                a["expires_at"][:19].replace("T", " "),
                arguments if len(arguments) <= 60 else arguments[:59] + "…",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row, summary in zip(rows, summaries, strict=True):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if summary:
            print(f"  {summary}")


def print_approval(a: dict[str, Any]) -> str:
    lines = [
        f"{a['id']}  {a['status'].upper()}",
        *([f"  now        {a['summary']}"] if a.get("summary") else []),
        *([f"  title      {a['title']}"] if a.get("title") else []),
        f"  tool       {a['tool']} (upstream {a['upstream']}: {a['upstream_tool']})",
        f"  agent      {a['agent']}{'' if a['agent_waiting'] else ' (not waiting)'}",
        f"  why held   {a['reason']}  [{a['rule']}]",
        *([f"  agent says {a['agent_reason']}"] if a.get("agent_reason") else []),
        f"  approvers  {', '.join(a['approvers']) or 'any approver'} (quorum {a['quorum']})",
        *([f"  may grant  {a['grant_offer']['describe']} (approve --grant-minutes N)"] if a.get("grant_offer") else []),
        f"  created    {a['created_at']}",
        f"  expires    {a['expires_at']}",
    ]
    if a.get("decided_by"):
        lines.append(
            f"  decided    {a['status']} by {a['decided_by']} via {a['decided_via']}"
            + (f": {a['decision_reason']}" if a.get("decision_reason") else "")
        )
    if a.get("facts"):
        lines.append("  context (looked up when the request was made)")
        lines.extend(f"    {fact['label']}: {fact['text']}" for fact in a["facts"])
    lines.extend(f"  {term}" for term in a.get("terms", []))
    lines.append("  arguments")
    lines.extend("    " + line for line in json.dumps(a["arguments"], indent=2, sort_keys=True).splitlines())
    if a.get("original_arguments") is not None:
        lines.append("  arguments as the agent sent them")
        lines.extend(
            "    " + line for line in json.dumps(a["original_arguments"], indent=2, sort_keys=True).splitlines()
        )
    if a.get("error"):
        lines.append(f"  error      {a['error']}")
    for event in a.get("events", []):
        lines.append(f"  {event['at'][:19].replace('T', ' ')}  {event['kind']:<20} {event['message']}")
    return "\n".join(lines)


def print_decision(outcome: dict[str, Any]) -> str:
    """What a decision did, then where the request stands now (an approved call may wait for its agent)."""
    summary = (outcome.get("approval") or {}).get("summary")
    return outcome["message"] if not summary else f"{outcome['message']}\n{summary}"
