"""The policy for an upstream's prompts and resources: hide, deny or allow them by name or URI pattern.

Reading is never held for approval: a prompt fetch or a resource read is allowed or refused at
once, and audited either way. Patterns are exact names (URIs) or globs (`*`, `?`, `[...]`), matched
against the name or URI the agent sees (with the upstream's prefix).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Final, Literal

ReadKind = Literal["prompts", "resources"]
ReadAction = Literal["allow", "deny", "hidden"]
READ_KEYS: Final = ("default", "allow", "deny", "hide")
_NOUN: Final = {"prompts": "prompt", "resources": "resource"}


@dataclass(frozen=True)
class ReadDecision:
    action: ReadAction
    rule: str
    message: str


@dataclass(frozen=True)
class ReadPolicy:
    """`hide` > `deny` > `allow` > `default` (which is the document's own `default` unless given)."""

    kind: ReadKind
    default: Literal["allow", "deny"]
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    hide: tuple[str, ...] = ()

    def is_hidden(self, name: str) -> bool:
        return _first(self.hide, name) is not None

    def decide(self, name: str) -> ReadDecision:
        noun = _NOUN[self.kind]
        shown = json.dumps(name, ensure_ascii=False)
        if (index := _first(self.hide, name)) is not None:
            return ReadDecision("hidden", f"{self.kind}.hide[{index}]", f"no {noun} {shown} is available")
        if (index := _first(self.deny, name)) is not None:
            return ReadDecision("deny", f"{self.kind}.deny[{index}]", f"{noun} {shown} is denied by the policy")
        if (index := _first(self.allow, name)) is not None:
            return ReadDecision("allow", f"{self.kind}.allow[{index}]", "")
        if self.default == "allow":
            return ReadDecision("allow", f"{self.kind}.default", "")
        message = f"{noun} {shown} is not allowed by the policy (default deny)"
        return ReadDecision("deny", f"{self.kind}.default", message)


def _first(patterns: tuple[str, ...], name: str) -> int | None:
    for index, pattern in enumerate(patterns):
        if pattern == name or (any(c in pattern for c in "*?[") and fnmatchcase(name, pattern)):
            return index
    return None
