"""Reports on a policy for its authors: warnings about likely mistakes, and why a call gets its decision."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from approvals.durations import format_duration
from gateway.policy import ApprovalSettings, Limit, Policy, is_glob, tool_where

_ASKS_FOR_A_HUMAN = re.compile(r"\b(approv\w*|human|review\w*|sign[- ]?off|four[- ]eyes)\b", re.IGNORECASE)


@dataclass(frozen=True)
class PolicyWarning:
    path: str
    message: str


def lint_policy(policy: Policy) -> list[PolicyWarning]:
    """Things that validate but probably do not do what the author meant."""
    layers = [("all_tools", policy.all_tools)] + [(tool_where(k), tp) for k, tp in policy.tools.items()]
    warnings: list[PolicyWarning] = []

    for _, layer in layers:
        for rule in layer.deny_if:
            if _ASKS_FOR_A_HUMAN.search(rule.message):
                warnings.append(
                    PolicyWarning(
                        rule.where,
                        f"deny_if refuses every matching call, yet its message ({rule.message!r}) asks for a "
                        "person; to have a human decide, move this rule to require_approval "
                        "(with a 'reason') so the call is held for approval instead of denied",
                    )
                )

    always_denied = any(not rule.conditions for rule in policy.all_tools.deny_if)
    for where, layer in layers[1:]:
        if not layer.require_approval:
            continue
        if policy.is_hidden(layer.key):
            why = "the tool is hidden, so calls are refused before approval is considered"
        elif always_denied or any(not rule.conditions for rule in layer.deny_if):
            why = "an unconditional deny_if refuses every call first"
        else:
            continue
        warnings.append(PolicyWarning(f"{where}.require_approval", f"these rules can never apply: {why}"))

    for key in policy.tools:
        if is_glob(key):
            for hidden in policy.hide:
                if not is_glob(hidden) and fnmatchcase(hidden, key):
                    warnings.append(
                        PolicyWarning(
                            tool_where(key),
                            f"the pattern also matches hidden tool '{hidden}'; hide wins, so that tool stays "
                            "unavailable",
                        )
                    )

    for where, layer in layers:
        approval = layer.approval
        if (
            approval is not None
            and approval.approvers
            and not any(name.startswith("group:") for name in approval.approvers)
            and approval.quorum > len(approval.approvers)
        ):
            warnings.append(
                PolicyWarning(
                    f"{where}.approval.quorum",
                    f"quorum {approval.quorum} needs more approvers than the {len(approval.approvers)} "
                    "listed, so held calls can only expire",
                )
            )

    first_use: dict[str, Limit] = {}
    for _, layer in layers:
        for limit in layer.limits:
            earlier = first_use.setdefault(limit.counter, limit)
            if (earlier.max, earlier.window, earlier.scope) != (limit.max, limit.window, limit.scope):
                warnings.append(
                    PolicyWarning(
                        limit.where,
                        f"counter '{limit.counter}' is also defined at {earlier.where} as "
                        f"{earlier.describe()}; both draw on one quota, so use the same max, window and "
                        "scope, or another name",
                    )
                )

    if policy.default == "allow" and not policy.hide and all(layer.is_empty for _, layer in layers):
        warnings.append(
            PolicyWarning("default", 'default is "allow" and there are no rules, so every tool call goes through')
        )
    return warnings


def explain(policy: Policy, tool: str, arguments: Mapping[str, Any]) -> str:
    """Plain text for `countersign policy explain`: decision, rule, applicable limits, approval settings."""
    result = policy.evaluate(tool, arguments)
    matched = f"matches {tool_where(result.tool_key)}" if result.tool_key else "not listed under tools"
    lines = [f"decision: {result.action}", f"tool: {tool} ({matched})", f"rule: {result.rule}"]
    if result.rule == "default":
        lines.append(f'  the policy\'s "default" is "{policy.default}"')
    if result.action in ("deny", "hidden"):
        lines.append(f"message: {result.message}")
    if result.action == "hold":
        lines.append(f"reason: {result.message}")
    if result.action in ("allow", "hold"):
        lines.append("limits:" if result.limits else "limits: none")
        lines.extend(f"  - {limit.describe()} (counter '{limit.counter}', {limit.where})" for limit in result.limits)
    if result.approval is not None:
        lines.extend(_describe_approval(result.approval))
    return "\n".join(lines)


def _describe_approval(approval: ApprovalSettings) -> Iterator[str]:
    yield "approval:"
    yield f"  timeout: {format_duration(approval.timeout_seconds)}"
    yield f"  approvers: {', '.join(approval.approvers) or 'any configured approver'}"
    yield f"  quorum: {approval.quorum}"
    yield f"  channels: {', '.join(approval.channels)}"
    if approval.slack_channel:
        yield f"  slack channel: {approval.slack_channel}"
    yield f"  reject reason: {'required' if approval.reject_reason_required else 'optional'}"
    if approval.max_hold_seconds is not None:
        yield f"  max hold: {format_duration(approval.max_hold_seconds)} (then the call returns a pending result)"
    yield f"  pick-up window: {format_duration(approval.pickup_seconds)}"
    yield f"  after approval: {'runs at once' if approval.run_unattended else 'runs when the agent is there'}"
    yield f"  agent cancel: {'keeps the request pending' if approval.keep_on_cancel else 'withdraws the request'}"
