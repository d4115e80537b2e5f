"""A policy checked against the world it runs in: the configured people and agents, and the upstreams' tools.

A policy that names an approver nobody is configured as, a group nobody is in, or a tool no upstream
offers still loads (the world may catch up), but it probably does not do what its author meant:
held calls only those approvers may decide can only expire, and a rule for a misspelt tool never
applies. `countersign policy check --config` reports all of these; a gateway that starts with or
reloads a policy naming unknown approvers says so in its log and its audit log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from fnmatch import fnmatchcase

from approvals.audit import Event
from gateway.config import Settings
from gateway.policy_model import Policy, ToolPolicy, is_glob, tool_where
from gateway.policy_report import PolicyWarning
from gateway.tool_report import UpstreamTools

log = logging.getLogger(__name__)

_GROUP = "group:"


def _layers(policy: Policy) -> list[tuple[str, ToolPolicy]]:
    return [("all_tools", policy.all_tools)] + [(tool_where(key), layer) for key, layer in policy.tools.items()]


def named_approvers(policy: Policy) -> Iterator[tuple[str, str]]:
    """Every approver entry of the document, with its path: approval blocks and require_approval rules' own."""
    for where, layer in _layers(policy):
        if layer.approval is not None:
            for index, name in enumerate(layer.approval.approvers):
                yield f"{where}.approval.approvers[{index}]", name
        for rule in layer.require_approval:
            for index, name in enumerate(rule.approval.get("approvers", ())):
                yield f"{rule.where}.approval.approvers[{index}]", name


def approver_warnings(policy: Policy, settings: Settings) -> list[PolicyWarning]:
    """Approvers and approver groups the policy names that the configuration does not have."""
    people = {approver.name for approver in settings.approvers}
    groups = {group for approver in settings.approvers for group in approver.groups}
    warnings = []
    for path, name in named_approvers(policy):
        if name.startswith(_GROUP) and name[len(_GROUP) :] not in groups:
            message = f"no configured approver is in group '{name[len(_GROUP) :]}'"
        elif not name.startswith(_GROUP) and name not in people:
            message = f"no approver named '{name}' is configured"
        else:
            continue
        warnings.append(PolicyWarning(path, f"{message}, so it can decide nothing (see [[approvers]])"))
    return warnings


def agent_warnings(policy: Policy, settings: Settings) -> list[PolicyWarning]:
    """Conditions on `agent.name` or `agent.groups` naming agents or groups no configured agent has.

    Agents with JWTs are known only from their tokens; with `[agent_jwt]` configured, nothing is said.
    """
    if settings.agent_jwt is not None:
        return []
    names = {agent.name for agent in settings.agents}
    groups = {group for agent in settings.agents for group in agent.groups}
    warnings = []
    for _, layer in _layers(policy):
        for rule in (*layer.deny_if, *layer.require, *layer.require_approval):
            for index, condition in enumerate(rule.conditions):
                if not condition.on_agent:
                    continue
                known, noun = (names, "agent named") if condition.path == "agent.name" else (groups, "agent in group")
                values = condition.value if isinstance(condition.value, tuple) else (condition.value,)
                if condition.op == "regex":
                    continue
                for value in values:
                    if value not in known:
                        warnings.append(
                            PolicyWarning(
                                f"{rule.where}.conditions[{index}]",
                                f"no configured {noun} '{value}' (see [[agents]]), so this condition never holds "
                                f"for {'it' if noun.endswith('named') else 'them'}",
                            )
                        )
    return warnings


def tool_warnings(policy: Policy, catalog: Sequence[UpstreamTools], settings: Settings) -> list[PolicyWarning]:
    """Tools the policy names that no reached upstream offers, and the upstreams that could not be reached."""
    unreached = [entry for entry in catalog if entry.error is not None]
    warnings = [
        PolicyWarning(
            f"upstreams[{entry.upstream}]",
            f"not reached ({entry.error}); the tools it offers are not checked against the policy",
        )
        for entry in unreached
    ]
    offered = {tool.name for entry in catalog for tool in entry.tools}
    prefixes = {upstream.name: upstream.prefix for upstream in settings.upstreams}
    own_names = {tool.name[len(prefixes.get(e.upstream, "")) :] for e in catalog for tool in e.tools}
    caveat = f" (not reached: {', '.join(e.upstream for e in unreached)})" if unreached else ""
    for key in policy.tools:
        if is_glob(key):
            if not any(fnmatchcase(name, key) for name in offered):
                warnings.append(PolicyWarning(tool_where(key), f"the pattern matches no upstream's tool{caveat}"))
        elif key not in offered:
            warnings.append(PolicyWarning(tool_where(key), f"no upstream offers a tool named '{key}'{caveat}"))
    for index, name in enumerate(policy.hide):
        if not is_glob(name) and name not in offered:
            warnings.append(PolicyWarning(f"hide[{index}]", f"no upstream offers a tool named '{name}'{caveat}"))
    for where, layer in _layers(policy):
        for index, spec in enumerate(layer.approval.context if layer.approval else ()):
            if spec.tool not in own_names:
                warnings.append(
                    PolicyWarning(
                        f"{where}.approval.context[{index}].tool",
                        f"no upstream offers a tool '{spec.tool}' to look up (its own name, without a prefix){caveat}",
                    )
                )
    return warnings


async def announce_unknown_approvers(
    policy: Policy, settings: Settings, record: Callable[[Event], Awaitable[None]], why: str
) -> list[PolicyWarning]:
    """Log and audit (`policy.unknown_approvers`) the approvers a policy in force names that are not configured."""
    warnings = approver_warnings(policy, settings)
    if not warnings:
        return warnings
    listed = "; ".join(f"{w.path}: {w.message}" for w in warnings)
    log.warning("policy %s (%s) names unknown approvers: %s", policy.source, why, listed)
    message = f"the policy in force ({why}) names approvers that are not configured: {listed}"
    detail = {
        "policy_version": policy.version,
        "unknown": [{"path": w.path, "message": w.message} for w in warnings],
    }
    await record(Event(kind="policy.unknown_approvers", outcome="warning", message=message, detail=detail))
    return warnings
