"""PolicyLayer's short forms of a tool entry, and what a condition on who calls may test.

PolicyLayer's pages write a tool's rule as `"action": "allow" | "deny"` (with `"reason"`, the
message a denied agent gets) and a `"rate_limit": {"max": 10, "window": 60}` block: at most `max`
calls within `window` seconds, counted per agent session. They load as the long forms mean them:
a deny is an unconditional `deny_if` rule, a rate limit a `limits` quota with `scope: session`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from gateway.policy_model import ApprovalSettings, Limit, Rule, ToolPolicy, is_number, json_type

SHORT_FORM_KEYS: Final = ("action", "reason", "rate_limit")
_RATE_LIMIT_KEYS: Final = ("max", "window")
# No quota window is longer than a day (the shared quotas keep a day of slots).
_LONGEST_WINDOW: Final = 86_400.0

# An `approval` key and the ApprovalSettings field it sets (a require_approval rule may override them).
APPROVAL_FIELDS: Final[Mapping[str, str]] = {
    "timeout": "timeout_seconds",
    "approvers": "approvers",
    "quorum": "quorum",
    "channels": "channels",
    "slack_channel": "slack_channel",
    "reject_reason": "reject_reason_required",
    "max_hold": "max_hold_seconds",
    "pickup_window": "pickup_seconds",
    "run_unattended": "run_unattended",
    "on_cancel": "keep_on_cancel",
    "context": "context",
    "summary": "summary",
    "agent_reason": "agent_reason",
    "grants": "grants",
    "editable": "editable",
    "escalate": "escalate",
    "remind_before": "remind_before_seconds",
}

_AGENT_OPS: Final[Mapping[str, tuple[str, ...]]] = {
    "agent.name": ("eq", "neq", "in", "not_in", "regex"),
    "agent.groups": ("contains",),
}

Fail = Callable[[str, str], Exception]


def short_forms(
    body: Mapping[str, Any], key: str, where: str, fail: Fail
) -> tuple[tuple[Rule, ...], tuple[Limit, ...]]:
    """The deny rule `action` makes (first among the entry's deny rules) and the quota `rate_limit` makes."""
    action = body.get("action")
    if action is not None and action not in ("allow", "deny"):
        raise fail(f"{where}.action", f'expected "allow" or "deny", not {action!r}')
    if "reason" in body:
        reason = body["reason"]
        if action != "deny":
            raise fail(f"{where}.reason", 'is the message of "action": "deny"; this entry does not deny')
        if not isinstance(reason, str) or not reason.strip():
            raise fail(f"{where}.reason", f"expected a non-empty string, not {reason!r}")
    denied: tuple[Rule, ...] = ()
    if action == "deny":
        message = body.get("reason") or f"denied by policy rule {where}.action"
        denied = (Rule((), message, f"{where}.action"),)
    limits: tuple[Limit, ...] = ()
    if "rate_limit" in body:
        limits = (rate_limit(body["rate_limit"], key, f"{where}.rate_limit", fail),)
    return denied, limits


def rate_limit(value: object, key: str, where: str, fail: Fail) -> Limit:
    if not isinstance(value, Mapping):
        raise fail(where, f'expected an object such as {{"max": 10, "window": 60}}, not {json_type(value)}')
    for name in value:
        if name not in _RATE_LIMIT_KEYS:
            raise fail(f"{where}.{name}", f"unknown key '{name}'; expected max and window (seconds)")
    for required in _RATE_LIMIT_KEYS:
        if required not in value:
            raise fail(f"{where}.{required}", "missing")
    maximum, window = value["max"], value["window"]
    if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 1:
        raise fail(f"{where}.max", f"expected a whole number >= 1, not {maximum!r}")
    if not is_number(window) or not 0 < window <= _LONGEST_WINDOW:
        raise fail(f"{where}.window", f"expected a number of seconds above 0 and at most 86400, not {window!r}")
    # One quota per entry: a glob's tools share it, as they share a `limits` counter.
    return Limit(f"rate_limit:{key}", None, maximum, "session", where, seconds=float(window))


def agent_condition_problem(path: str, op: object, value: object) -> str | None:
    """What is wrong with a condition on who calls, or None. Messages about the op start with "op"."""
    allowed = _AGENT_OPS[path]
    if op not in allowed:
        return f"op {op!r} cannot test {path}; use {' or '.join(allowed)}"
    values = value if op in ("in", "not_in") and isinstance(value, list) else [value]
    if not all(isinstance(item, str) and item for item in values):
        noun = "a group name" if path == "agent.groups" else "an agent name"
        return f"{path} is compared with {noun}: expected a non-empty string, not {value!r}"
    return None


def client_only_for_the_caller(tool: ToolPolicy, fail: Fail) -> None:
    """A rule's own approval may not combine the 'client' channel with named approvers either."""
    base = tool.approval or ApprovalSettings()
    for rule in tool.require_approval:
        channels = rule.approval.get("channels", base.channels)
        approvers = rule.approval.get("approvers", base.approvers)
        if "client" in channels and approvers:
            raise fail(
                f"{rule.where}.approval",
                "with the tool's approval block this rule asks the caller's own client ('client') and names "
                f"approvers ({', '.join(approvers)}): the two cannot be combined",
            )
