"""Approving with edits: which argument paths an approver may change, and what a change did.

A path names one argument the way people read it: `quantity`, or `order.totalQuantity` inside an
object, with numeric segments indexing lists (`legs.0.ratio`). Only the paths the tool's policy
lists (`approval.editable`) may change; everything else in the call stays exactly as the agent sent
it. Pure functions: the service applies them inside the decision's transaction, the gateway before
it asks the policy about the edited call.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from approvals.errors import InvalidDecision

_ABSENT: Any = object()


@dataclass(frozen=True)
class ArgumentEdit:
    """One changed argument: its path, and its value before (None when it was absent) and after."""

    path: str
    before: Any
    after: Any
    was_absent: bool = False

    def as_json(self) -> dict[str, Any]:
        entry = {"path": self.path, "before": self.before, "after": self.after}
        if self.was_absent:
            entry["was_absent"] = True
        return entry

    def describe(self) -> str:
        before = "(absent)" if self.was_absent else _short(self.before)
        return f"{self.path} {before} → {_short(self.after)}"


def describe_edits(edits: Sequence[ArgumentEdit]) -> str:
    """``order.totalQuantity 500 → 50; order.lmtPrice 185 → 180`` — the words every channel and the agent read."""
    return "; ".join(edit.describe() for edit in edits)


def edits_from_json(loaded: Any) -> tuple[ArgumentEdit, ...]:
    """The changes as stored (never fails: odd entries are skipped; they are shown, not acted on)."""
    found = []
    for entry in loaded if isinstance(loaded, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            absent = bool(entry.get("was_absent"))
            found.append(ArgumentEdit(entry["path"], entry.get("before"), entry.get("after"), absent))
    return tuple(found)


def path_problem(path: str) -> str | None:
    """Why `path` cannot name an argument (for the policy's `editable`), or None."""
    if not path or any(not segment for segment in path.split(".")):
        return f"{path!r} is not an argument path: use names joined by dots, such as 'order.totalQuantity'"
    if path.startswith("args."):
        return f"{path!r}: name the argument without 'args.' (write {path[len('args.') :]!r})"
    return None


def apply_edits(
    arguments: Mapping[str, Any], changes: Mapping[str, Any], editable: Sequence[str]
) -> tuple[dict[str, Any], tuple[ArgumentEdit, ...]]:
    """The arguments with `changes` made, and what changed; InvalidDecision names the first change refused.

    A change to a value it already has changes nothing and is left out; with nothing left the call is
    the agent's own.
    """
    if not changes:
        return dict(arguments), ()
    result = copy.deepcopy(dict(arguments))
    made: list[ArgumentEdit] = []
    for path, value in changes.items():
        if path not in editable:
            allowed = ", ".join(editable) if editable else "none"
            raise InvalidDecision(f"{path!r} may not be changed; this tool's policy lets approvers change: {allowed}")
        parent, last = _parent(result, path)
        before = _get(parent, last)
        if before is not _ABSENT and _same(before, value):
            continue
        _set(parent, last, value, path)
        made.append(ArgumentEdit(path, None if before is _ABSENT else before, value, before is _ABSENT))
    return result, tuple(made)


def _parent(arguments: dict[str, Any], path: str) -> tuple[Any, str]:
    """The object or list holding the path's last segment; it must exist (an approver edits, not builds)."""
    segments = path.split(".")
    current: Any = arguments
    for depth, segment in enumerate(segments[:-1]):
        value = _get(current, segment)
        if not isinstance(value, dict | list):
            where = ".".join(segments[: depth + 1])
            raise InvalidDecision(f"cannot change {path!r}: the call has no object or list at {where!r}")
        current = value
    return current, segments[-1]


def _get(container: Any, segment: str) -> Any:
    if isinstance(container, dict):
        return container.get(segment, _ABSENT)
    if isinstance(container, list) and segment.isascii() and segment.isdigit() and int(segment) < len(container):
        return container[int(segment)]
    return _ABSENT


def _set(container: Any, segment: str, value: Any, path: str) -> None:
    if isinstance(container, dict):
        container[segment] = value
    elif isinstance(container, list) and segment.isascii() and segment.isdigit() and int(segment) < len(container):
        container[int(segment)] = value
    else:
        raise InvalidDecision(f"cannot change {path!r}: the list has no item {segment}")


def _same(left: Any, right: Any) -> bool:
    # JSON's view: 50 and 50.0 are one number, true is not 1.
    return json.dumps(left, sort_keys=True) == json.dumps(right, sort_keys=True) or (
        isinstance(left, int | float)
        and isinstance(right, int | float)
        and not isinstance(left, bool)
        and not isinstance(right, bool)
        and left == right
    )


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 80 else text[:79] + "…"
