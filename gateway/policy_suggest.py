"""`countersign policy suggest`: a starter policy from what the upstreams say about their own tools.

The MCP annotations are the server's claims, read with the defaults the spec gives an absent hint
(`readOnlyHint` false, `destructiveHint` true, `idempotentHint` false, `openWorldHint` true), so a tool
that says nothing is treated as one that may destroy. From them:

- a tool that declares `readOnlyHint: true` is allowed;
- a tool that may modify and may destroy (declared, or by default) is held for approval;
- a tool that modifies but declares `destructiveHint: false` (it only adds) is neither: it is listed
  with an unconditional `deny_if` whose message says a human has to decide, so the file is valid,
  safe as it stands, and says in itself what is left to do.

The document's `default` is `"deny"`: a tool no upstream listed today is refused until someone adds it.
JSON has no comments, so why each tool got its entry is returned beside the document (and printed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import mcp_types as types

from gateway.results import STATUS_TOOL, WAIT_TOOL
from gateway.tool_report import UpstreamTools

Choice = Literal["allow", "hold", "decide"]

# The spec's values for a hint the server leaves out.
SPEC_DEFAULTS: dict[str, bool] = {
    "readOnlyHint": False,
    "destructiveHint": True,
    "idempotentHint": False,
    "openWorldHint": True,
}
_ATTRIBUTES = {
    "readOnlyHint": "read_only_hint",
    "destructiveHint": "destructive_hint",
    "idempotentHint": "idempotent_hint",
    "openWorldHint": "open_world_hint",
}
UNDECIDED = (
    "Not decided yet: this tool changes things but says it is not destructive (destructiveHint false). "
    "Replace this entry with {} to allow it, or with a require_approval rule to hold it."
)


@dataclass(frozen=True)
class Hint:
    name: str
    value: bool
    declared: bool

    def __str__(self) -> str:
        return f"{self.name} {str(self.value).lower()}{'' if self.declared else ' (not declared: the default)'}"


@dataclass(frozen=True)
class Suggestion:
    tool: str
    upstream: str
    choice: Choice
    why: str


def hints(tool: types.Tool) -> dict[str, Hint]:
    """The four hints, each as declared or as the spec's default for an absent one."""
    annotations = tool.annotations
    found = {}
    for name, attribute in _ATTRIBUTES.items():
        value = None if annotations is None else getattr(annotations, attribute)
        found[name] = Hint(name, SPEC_DEFAULTS[name] if value is None else bool(value), value is not None)
    return found


def suggest_one(tool: types.Tool, upstream: str) -> Suggestion:
    hint = hints(tool)
    read_only, destructive = hint["readOnlyHint"], hint["destructiveHint"]
    world = " It deals with the world outside the server (openWorldHint true)." if hint["openWorldHint"].value else ""
    if read_only.value:
        # The spec gives destructiveHint meaning only when readOnlyHint is false.
        return Suggestion(tool.name, upstream, "allow", f"{read_only}: it only reads, so it is allowed.{world}")
    if destructive.value:
        again = " Repeating it has no further effect (idempotentHint true)." if hint["idempotentHint"].value else ""
        why = f"{read_only}, {destructive}: it may change or destroy things, so it is held for approval.{again}{world}"
        return Suggestion(tool.name, upstream, "hold", why)
    why = (
        f"{read_only}, {destructive}: it changes things without destroying them, which only a human can weigh; "
        "it is refused until you decide."
    )
    return Suggestion(tool.name, upstream, "decide", why + world)


def suggest(catalog: Sequence[UpstreamTools]) -> tuple[dict[str, Any], list[Suggestion]]:
    """The starter document and, per tool, what it chose and why (tools in the order the upstreams list them)."""
    suggestions: list[Suggestion] = []
    seen: set[str] = set()
    for entry in catalog:
        for tool in entry.tools:
            if tool.name in (STATUS_TOOL, WAIT_TOOL) or tool.name in seen:
                # The gateway's own tools take these names; a second upstream's tool of a taken name is never routed.
                continue
            seen.add(tool.name)
            suggestions.append(suggest_one(tool, entry.upstream))
    tools: dict[str, Any] = {}
    for s in sorted(suggestions, key=lambda s: ("allow", "hold", "decide").index(s.choice)):
        tools[s.tool] = _entry(s)
    return {"version": "1", "default": "deny", "tools": tools}, suggestions


def _entry(suggestion: Suggestion) -> dict[str, Any]:
    if suggestion.choice == "allow":
        return {}
    if suggestion.choice == "hold":
        reason = f"{suggestion.tool} may change or destroy things (its server's annotations); a human approves it."
        return {"require_approval": [{"conditions": [], "reason": reason}]}
    return {"deny_if": [{"conditions": [], "on_deny": UNDECIDED}]}


def explain(suggestions: Sequence[Suggestion], catalog: Sequence[UpstreamTools]) -> str:
    """Why each tool got its entry, one line per tool, then what was not reached."""
    lines = [f"{s.choice:<6}  {s.tool} ({s.upstream}): {s.why}" for s in suggestions]
    lines.append("")
    lines.append(
        'default "deny": any tool not listed is refused. The hints are the servers\' own claims: check them, '
        "and tighten the entries (conditions, limits, approvers) before relying on this policy."
    )
    for entry in catalog:
        if entry.error is not None:
            lines.append(f"upstream {entry.upstream}: not reached ({entry.error}); its tools are not in the policy")
    return "\n".join(lines)
