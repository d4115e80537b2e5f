"""`countersign tools`: each upstream tool, its MCP annotations, and what the policy does with it.

A policy is easier to write from facts than from memory: the tool names exactly as agents will see
them (with any `prefix`), what the upstream declares about each (read-only? destructive?), and the
decision the policy would make before any arguments are known, with the rule that makes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import mcp_types as types

from gateway.config import Settings
from gateway.policy_model import Limit, Policy, Rule, tool_where
from gateway.results import STATUS_TOOL, WAIT_TOOL
from gateway.upstreams import UpstreamSet

Action = Literal["allow", "limited", "hold", "deny", "hide"]

# The four behaviour hints of the MCP spec, as they are named on the wire.
HINTS: tuple[tuple[str, str, str], ...] = (
    ("readOnlyHint", "read_only_hint", "RO"),
    ("destructiveHint", "destructive_hint", "DESTR"),
    ("idempotentHint", "idempotent_hint", "IDEMP"),
    ("openWorldHint", "open_world_hint", "OPEN"),
)
_RESERVED = (STATUS_TOOL, WAIT_TOOL)


@dataclass(frozen=True)
class Verdict:
    """What the policy does with a call to a tool whatever its arguments, and what depends on them."""

    action: Action
    rule: str
    depends: tuple[str, ...] = ()
    limits: tuple[str, ...] = ()


@dataclass(frozen=True)
class UpstreamTools:
    upstream: str
    tools: tuple[types.Tool, ...]
    error: str | None = None


def verdict(policy: Policy, tool: str) -> Verdict:
    """The decision `Policy.evaluate` makes for `tool` when no condition on the arguments matches.

    Rules with conditions are listed in `depends`, each with the outcome it leads to and its place
    in the document, so nothing the arguments can change is hidden behind the headline.
    """
    if tool in _RESERVED:
        return Verdict("hide", "reserved: the gateway's own tool of that name is offered instead")
    if policy.is_hidden(tool):
        return Verdict("hide", "hide")
    listed = policy.tool_policy(tool)
    if listed is None and policy.default == "deny":
        return Verdict("deny", "default")
    layers = (policy.all_tools, listed) if listed else (policy.all_tools,)
    depends: list[str] = []
    for layer in layers:
        for rule in layer.deny_if:
            if not rule.conditions:
                return Verdict("deny", rule.where, tuple(depends))
            depends.append(f"deny if {_conditions(rule)} ({rule.where})")
    for layer in layers:
        # A `require` rule without conditions always holds, so it never denies.
        depends.extend(f"deny unless {_conditions(r)} ({r.where})" for r in layer.require if r.conditions)
    limits = tuple(_limit(limit) for layer in layers for limit in layer.limits)
    for layer in layers:
        for rule in layer.require_approval:
            if not rule.conditions:
                return Verdict("hold", rule.where, tuple(depends), limits)
            depends.append(f"hold if {_conditions(rule)} ({rule.where})")
    where = tool_where(listed.key) if listed else "default"
    return Verdict("limited" if limits else "allow", where, tuple(depends), limits)


def _conditions(rule: Rule) -> str:
    return " and ".join(f"{c.path} {c.op} {json.dumps(c.value)}" for c in rule.conditions)


def _limit(limit: Limit) -> str:
    return f"{limit.describe()} ({limit.where})"


async def fetch_tools(settings: Settings, *, within: float | None = None) -> list[UpstreamTools]:
    """Connect to every configured upstream once and list its tools (names as agents see them).

    One attempt each: an upstream that refuses the connection or fails its first listing is reported
    with that error at once, rather than retried until the connect timeout runs out.
    """
    upstreams = UpstreamSet(settings.upstreams)
    bound = within if within is not None else max((u.connect_timeout for u in settings.upstreams), default=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(upstreams.run)
        await upstreams.wait_attempted(bound)
        found = []
        for upstream in upstreams.upstreams:
            if upstream.state != "ready":
                error = upstream.last_error or f"not connected within {bound:g} s"
                found.append(UpstreamTools(upstream.name, (), error))
                continue
            prefix = upstream.settings.prefix
            tools = tuple(t.model_copy(update={"name": prefix + t.name}) if prefix else t for t in upstream.tools)
            found.append(UpstreamTools(upstream.name, tools))
        tg.cancel_scope.cancel()
    return found


def as_json(policy: Policy, catalog: Sequence[UpstreamTools]) -> dict[str, Any]:
    return {
        "policy": policy.source,
        "upstreams": [
            {
                "name": entry.upstream,
                "error": entry.error,
                "tools": [_tool_json(policy, tool) for tool in entry.tools],
            }
            for entry in catalog
        ],
    }


def _tool_json(policy: Policy, tool: types.Tool) -> dict[str, Any]:
    decided = verdict(policy, tool.name)
    annotations = tool.annotations
    return {
        "name": tool.name,
        "title": tool.title or (annotations.title if annotations else None),
        "annotations": {
            wire: getattr(annotations, attribute)
            for wire, attribute, _ in HINTS
            if annotations is not None and getattr(annotations, attribute) is not None
        },
        "policy": {
            "action": decided.action,
            "rule": decided.rule,
            "depends_on_arguments": list(decided.depends),
            "limits": list(decided.limits),
        },
    }


def as_table(policy: Policy, catalog: Sequence[UpstreamTools]) -> str:
    rows = [("TOOL", "UPSTREAM", *(short for *_, short in HINTS), "POLICY", "RULE")]
    notes: dict[int, tuple[str, ...]] = {}
    for entry in catalog:
        for tool in entry.tools:
            decided = verdict(policy, tool.name)
            hints = tuple(_yes_no(tool.annotations, attribute) for _, attribute, _ in HINTS)
            notes[len(rows)] = (*decided.depends, *(f"limit: {limit}" for limit in decided.limits))
            rows.append((tool.name, entry.upstream, *hints, decided.action, decided.rule))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines: list[str] = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        lines.extend(f"    {note}" for note in notes.get(index, ()))
    lines.extend(_footer(policy, catalog))
    return "\n".join(lines)


def _yes_no(annotations: types.ToolAnnotations | None, attribute: str) -> str:
    value = None if annotations is None else getattr(annotations, attribute)
    return "-" if value is None else "yes" if value else "no"


def _footer(policy: Policy, catalog: Sequence[UpstreamTools]) -> Iterator[str]:
    yield ""
    yield "Hints as each server declares them (- = not declared): RO readOnlyHint, DESTR destructiveHint,"
    yield "IDEMP idempotentHint, OPEN openWorldHint. They are the server's claims, not guarantees."
    if policy.list_only_callable:
        yield (
            f"Policy {policy.source}: hide removes a tool from tools/list; with list_only_callable, so does a deny "
            "that no argument can change, for each agent it refuses (a deny on the arguments leaves it listed)."
        )
    else:
        yield (
            f"Policy {policy.source}: deny refuses the call but the tool is still listed to agents; "
            "hide also removes it from tools/list."
        )
    for entry in catalog:
        if entry.error is not None:
            yield f"upstream {entry.upstream}: not reached ({entry.error}); its tools are not listed"
