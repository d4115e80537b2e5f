"""`countersign demo`: the gateway in front of the paper broker, on SQLite, with fixed demo credentials."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from gateway.config import Settings, parse_settings

DEMO_AGENT_TOKEN = "demo-agent"
DEMO_APPROVER = "demo"
DEMO_APPROVER_TOKEN = "demo-approver"
DEMO_PASSWORD = "demo"
# argon2id hash of DEMO_PASSWORD; fixed so the demo needs no set-up step.
DEMO_PASSWORD_HASH = "$argon2id$v=19$m=65536,t=3,p=4$KQlf3m+ewqoR3vk0rxkuow$Lf5oYihNN9qnIBXOKfR7PnC6c1CmUkQxg5eWMgJ8o0o"

DEMO_SESSION_SECRET = "countersign-demo-only-session-secret-0123456789"

# The order a cancel names, picked from the open orders; `{{ args.orderId }}` is the held call's orderId.
CANCEL_ORDER_SELECT = (
    "orders[?orderId == {{ args.orderId }}] | [0].{instrument: contract.symbol, side: action, "
    "quantity: totalQuantity, type: orderType, limit: lmtPrice, stop: auxPrice, status: status, "
    "filled: filledQuantity, parent: parentId, oca: ocaGroup}"
)
CANCEL_SUMMARY = (
    "Cancel {% set o = context.order %}{% if o %}{{ o.side }} {{ o.quantity | int }} {{ o.instrument }} {{ o.type }}"
    "{% if o.limit %} {{ '%.2f' | format(o.limit) }}{% endif %}{% if o.stop %} stop {{ '%.2f' | format(o.stop) }}"
    "{% endif %}, {% endif %}order {{ args.orderId }}"
    "{% if o and o.filled %} ({{ o.filled | int }} already filled){% endif %}"
    "{% if o and o.type in ('STP', 'STP LMT', 'TRAIL') and (o.parent or o.oca) %} — a protective stop{% endif %}"
)

DEMO_POLICY: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "hide": ["ibkr_global_cancel"],
    "all_tools": {"limits": [{"counter": "all", "window": "minute", "max": 120, "scope": "grant"}]},
    "tools": {
        "ibkr_get_*": {},
        "ibkr_search_symbols": {},
        "ibkr_preview_order": {
            "limits": [{"counter": "ibkr_preview_order_rate", "window": "minute", "max": 10, "scope": "grant"}]
        },
        "ibkr_cancel_order": {
            "require_approval": [{"conditions": [], "reason": "Cancelling a live order needs a human."}],
            "approval": {
                "timeout": "15m",
                "approvers": ["group:traders"],
                "quorum": 1,
                "channels": ["web", "slack"],
                # The order the cancel names, as the broker lists it when the request is made (docs/policy.md).
                "context": [
                    {
                        "name": "order",
                        "tool": "ibkr_get_open_orders",
                        "arguments": {},
                        "select": CANCEL_ORDER_SELECT,
                        "timeout": "3s",
                    }
                ],
                "summary": CANCEL_SUMMARY,
            },
        },
        # Safe by construction (docs/policy.md, "Writing rules that cannot be skipped"): the quantity must
        # be present, so leaving it out cannot skip the deny_if, and a quantity that is not a number
        # (say "5000") makes the deny_if match. Anything but dry_run: true is held, so a live order
        # cannot pass by leaving dry_run out or spelling it "false".
        "ibkr_place_order": {
            "deny_if": [
                {
                    "conditions": [{"path": "args.order.totalQuantity", "op": "gt", "value": 1000}],
                    "on_deny": "Orders above 1000 shares are not allowed.",
                }
            ],
            "require": [
                {
                    "conditions": [{"path": "args.order.totalQuantity", "op": "exists", "value": True}],
                    "on_deny": "An order must state its order.totalQuantity.",
                }
            ],
            "require_approval": [
                {
                    "conditions": [{"path": "args.dry_run", "op": "neq", "value": True}],
                    "reason": "Live orders need a human.",
                }
            ],
        },
    },
}


def demo_settings(data_dir: Path, *, host: str = "127.0.0.1", port: int = 8080) -> Settings:
    data_dir.mkdir(parents=True, exist_ok=True)
    policy = data_dir / "policy.json"
    policy.write_text(json.dumps(DEMO_POLICY, indent=2) + "\n")
    return parse_settings(
        {
            "server": {
                "host": host,
                "port": port,
                "database_url": f"sqlite:///{(data_dir / 'countersign.db').resolve()}",
                "progress_interval": "5s",
            },
            "policy": {"file": str(policy.resolve())},
            "upstreams": [{"name": "paper", "command": [sys.executable, "-m", "gateway.paper_broker"]}],
            # Fixed so demo sign-ins survive a restart; a real deployment sets its own secret.
            "web": {"session_secret": DEMO_SESSION_SECRET},
            "agents": [{"name": "demo-agent", "token": DEMO_AGENT_TOKEN}],
            "approvers": [
                {
                    "name": DEMO_APPROVER,
                    "email": "demo@example.com",
                    "groups": ["traders"],
                    "api_token": DEMO_APPROVER_TOKEN,
                    "password_hash": DEMO_PASSWORD_HASH,
                }
            ],
        },
        source="<demo>",
        base_dir=str(data_dir.resolve()),
        environ={},
    )


def command_name() -> str:
    """How to run this same `countersign` from the current folder, for commands printed to copy.

    After `scripts/demo` the command lives in ./.venv/bin, which is not on PATH: a bare
    `countersign` there would fail, or run another installation.
    """
    script = Path(sys.executable).parent / "countersign"
    on_path = shutil.which("countersign")
    if on_path is not None and script.exists() and Path(on_path).resolve() == script.resolve():
        return "countersign"
    if script.exists():
        relative = os.path.relpath(script)
        return relative if not relative.startswith("..") else str(script)
    return f"{sys.executable} -m gateway.cli"


def banner(settings: Settings, command: str | None = None) -> str:
    base = settings.server.base_url
    command = command or command_name()
    return "\n".join(
        [
            "Countersign demo — the gateway in front of a paper broker (no real money).",
            f"  MCP endpoint     {base}/mcp          agent token:  {DEMO_AGENT_TOKEN}",
            f"  Approver API     {base}/api/approvals   API token: {DEMO_APPROVER_TOKEN}",
            f"  Web inbox        {base}/inbox        sign in: {DEMO_APPROVER} / {DEMO_PASSWORD}",
            f"  Health           {base}/healthz",
            f"  Policy           {settings.policy_path}",
            'Try: an agent calls ibkr_cancel_order {"orderId": 1001, "confirm": true}; it waits until you run',
            f"  {command} approvals list --url {base} --token {DEMO_APPROVER_TOKEN}",
            f"  {command} approvals approve <id> --url {base} --token {DEMO_APPROVER_TOKEN}",
        ]
    )
