"""Reports on a policy for its authors: warnings about likely mistakes, and why a call gets its decision."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from approvals.durations import format_duration
from gateway.identity import GATEWAY_IDENTITY, AgentIdentity
from gateway.policy_model import HOLD_WHEN_ABSENT, ApprovalSettings, Limit, Policy, ToolPolicy, is_glob, tool_where

_ASKS_FOR_A_HUMAN = re.compile(r"\b(approv\w*|human|review\w*|sign[- ]?off|four[- ]eyes)\b", re.IGNORECASE)


@dataclass(frozen=True)
class PolicyWarning:
    path: str
    message: str


def lint_policy(policy: Policy, schemas: Mapping[str, Mapping[str, Any]] | None = None) -> list[PolicyWarning]:
    """Things that validate but probably do not do what the author meant.

    ``schemas`` maps tool names to their input schemas, when known: a field the schema requires or
    gives a default is always there, so a rule on it cannot be skipped by leaving it out.
    """
    layers = [("all_tools", policy.all_tools)] + [(tool_where(k), tp) for k, tp in policy.tools.items()]
    warnings: list[PolicyWarning] = []
    warnings.extend(_skippable_rules(policy, schemas))

    for _, layer in layers:
        for rule in layer.deny_if:
            if _ASKS_FOR_A_HUMAN.search(rule.message):
                # `"action": "deny"` loads as a deny_if rule at `....action`; name it as the author wrote it.
                short = rule.where.endswith(".action")
                refuses = '"action": "deny" refuses every call' if short else "deny_if refuses every matching call"
                warnings.append(
                    PolicyWarning(
                        rule.where,
                        f"{refuses}, yet its {'reason' if short else 'message'} ({rule.message!r}) asks for a person; "
                        "to have a human decide, write a require_approval rule (with a 'reason') so the call is "
                        "held for approval instead of denied",
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
            if (earlier.max, earlier.window_seconds, earlier.scope) != (limit.max, limit.window_seconds, limit.scope):
                warnings.append(
                    PolicyWarning(
                        limit.where,
                        f"counter '{limit.counter}' is also defined at {earlier.where} as "
                        f"{earlier.describe()}; both draw on one quota, so use the same max, window and "
                        "scope, or another name",
                    )
                )

    warnings.extend(_unreadable_lookups(policy, layers))

    if policy.default == "allow" and not policy.hide and all(layer.is_empty for _, layer in layers):
        warnings.append(
            PolicyWarning("default", 'default is "allow" and there are no rules, so every tool call goes through')
        )
    return warnings


def explain(
    policy: Policy,
    tool: str,
    arguments: Mapping[str, Any],
    input_schema: Mapping[str, Any] | None = None,
    *,
    agent: AgentIdentity | None = None,
) -> str:
    """Plain text for `countersign policy explain`: decision, rule, applicable limits, approval settings."""
    result = policy.evaluate(tool, arguments, input_schema, agent=agent)
    matched = f"matches {tool_where(result.tool_key)}" if result.tool_key else "not listed under tools"
    lines = [f"decision: {result.action}", f"tool: {tool} ({matched})", f"rule: {result.rule}"]
    if agent is not None:
        lines.append(f"agent: {agent.name or '(no name)'} (groups: {', '.join(agent.groups) or 'none'})")
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


def _unreadable_lookups(policy: Policy, layers: list[tuple[str, ToolPolicy]]) -> Iterator[PolicyWarning]:
    """A context lookup runs only when its tool is allowed outright; one this policy holds or denies never shows."""
    for where, layer in layers:
        for index, spec in enumerate(layer.approval.context if layer.approval else ()):
            evaluation = policy.evaluate(spec.tool, {}, agent=AgentIdentity(GATEWAY_IDENTITY))
            if evaluation.action != "allow":
                yield PolicyWarning(
                    f"{where}.approval.context[{index}].tool",
                    f"this policy does not allow {spec.tool} outright ({evaluation.action}: {evaluation.message}), "
                    "so the lookup will show as context unavailable; allow it (an upstream prefix included)",
                )


def _describe_approval(approval: ApprovalSettings) -> Iterator[str]:
    yield "approval:"
    yield f"  timeout: {format_duration(approval.timeout_seconds)}"
    yield f"  approvers: {', '.join(approval.approvers) or 'any configured approver'}"
    yield f"  quorum: {approval.quorum}"
    yield f"  channels: {', '.join(approval.channels)}"
    if approval.slack_channel:
        yield f"  slack channel: {approval.slack_channel}"
    yield f"  reject reason: {'required' if approval.reject_reason_required else 'optional'}"
    if approval.max_hold_seconds is None:
        yield "  max hold: the agent's max_hold, else the server's default_max_hold"
    elif math.isinf(approval.max_hold_seconds):
        yield "  max hold: none (the call is held until it is decided or expires)"
    else:
        yield f"  max hold: {format_duration(approval.max_hold_seconds)} (then the call returns a pending result)"
    yield f"  pick-up window: {format_duration(approval.pickup_seconds)}"
    yield f"  after approval: {'runs at once' if approval.run_unattended else 'runs when the agent is there'}"
    yield f"  agent cancel: {'keeps the request pending' if approval.keep_on_cancel else 'withdraws the request'}"


def _skippable_rules(policy: Policy, schemas: Mapping[str, Mapping[str, Any]] | None) -> Iterator[PolicyWarning]:
    """Rules an agent gets around by leaving an optional argument out.

    A missing field fails every op but ``neq``, ``not_in`` and ``exists``: a ``deny_if`` or
    ``require_approval`` built on such an op does not apply to a call without the field, and a
    ``require`` built on ``neq`` / ``not_in`` is met by one.
    """
    with_schema = " (a schema given with --tools says which fields are always sent)" if schemas is None else ""
    for layer in (policy.all_tools, *policy.tools.values()):
        schema = None
        if schemas is not None and layer is not policy.all_tools and not is_glob(layer.key):
            schema = schemas.get(layer.key)
        guaranteed = _required_by_rules(policy.all_tools, layer)

        def present(path: str, schema: Mapping[str, Any] | None = schema, guaranteed: set[str] = guaranteed) -> bool:
            return path in guaranteed or (schema is not None and _always_sent(schema, path))

        for kind, rules in (("deny_if", layer.deny_if), ("require_approval", layer.require_approval)):
            for rule in rules:
                for index, condition in enumerate(rule.conditions):
                    if condition.on_agent or condition.op in ("exists", *HOLD_WHEN_ABSENT) or present(condition.path):
                        continue
                    yield PolicyWarning(
                        f"{rule.where}.conditions[{index}]",
                        f"an agent skips this {kind} rule by leaving out {condition.path} (a missing field fails "
                        f"'{condition.op}'), and nothing makes the field required{with_schema}; add a require rule "
                        f'with {{"path": "{condition.path}", "op": "exists"}}, or phrase the condition so that '
                        "a missing field matches (neq, not_in)",
                    )
        for rule in layer.require:
            for index, condition in enumerate(rule.conditions):
                if condition.op in HOLD_WHEN_ABSENT and not condition.on_agent and not present(condition.path):
                    yield PolicyWarning(
                        f"{rule.where}.conditions[{index}]",
                        f"an agent meets this require rule by leaving out {condition.path} (a missing field is "
                        f"'{condition.op}' anything), and nothing makes the field required{with_schema}; add "
                        f'a condition {{"path": "{condition.path}", "op": "exists"}} to the rule',
                    )


def _required_by_rules(*layers: ToolPolicy) -> set[str]:
    """Paths a ``require`` rule of its own refuses calls without: such a field is always there."""
    return {
        rule.conditions[0].path
        for layer in layers
        for rule in layer.require
        if len(rule.conditions) == 1
        and rule.conditions[0].op not in HOLD_WHEN_ABSENT
        and not (rule.conditions[0].op == "exists" and rule.conditions[0].value is False)
    }


def _always_sent(schema: Mapping[str, Any], path: str) -> bool:
    """Whether the schema requires every object on ``path``, or gives its last field a default."""
    node: Any = schema
    segments = path.split(".")[1:]
    for position, segment in enumerate(segments):
        properties = node.get("properties") if isinstance(node, Mapping) else None
        sub = properties.get(segment) if isinstance(properties, Mapping) else None
        if not isinstance(sub, Mapping):
            return False
        last = position == len(segments) - 1
        if last and "default" in sub:
            return True
        required = node.get("required")
        if not (isinstance(required, list) and segment in required):
            return False
        node = sub
    return True


def load_tool_schemas(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Input schemas by tool name from a file holding a tools/list result (``{"tools": [...]}``) or its list.

    Raises ValueError saying what is wrong with the file.
    """
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    tools = document.get("tools") if isinstance(document, dict) else document
    if not isinstance(tools, list):
        raise ValueError('expected a tools/list result: {"tools": [{"name": ..., "inputSchema": {...}}, ...]}')
    schemas: dict[str, dict[str, Any]] = {}
    for index, tool in enumerate(tools):
        schema = tool.get("inputSchema", tool.get("input_schema")) if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not isinstance(schema, dict):
            raise ValueError(f"tools[{index}] needs a string 'name' and an object 'inputSchema'")
        schemas[tool["name"]] = schema
    return schemas
