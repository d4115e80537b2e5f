"""What a tool's policy lets approvers do besides approve or reject as asked, parsed from its `approval` block.

- `editable`: the argument paths an approver may change before approving (`"order.totalQuantity"`),
- `escalate`: who else may decide, and after how long, when nobody has (`{"after": "10m", "approvers":
  ["group:risk"]}`, or a list of such steps, each later than the one before),
- `remind_before`: how long before expiry the approvers are reminded (overrides `[slack] reminder_before`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from approvals.durations import parse_duration
from approvals.edits import path_problem
from approvals.views import EscalationStep

Fail = Callable[[str, str], Exception]


def parse_editable(value: object, where: str, fail: Fail) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(path, str) for path in value):
        raise fail(where, f'expected a list of argument paths such as ["order.totalQuantity"], not {value!r}')
    for index, path in enumerate(value):
        problem = path_problem(path)
        if problem is not None:
            raise fail(f"{where}[{index}]", problem)
        if value.index(path) != index:
            raise fail(f"{where}[{index}]", f"{path!r} is listed twice")
        overlapping = next((p for p in value[:index] if path.startswith(p + ".") or p.startswith(path + ".")), None)
        if overlapping is not None:
            raise fail(f"{where}[{index}]", f"{path!r} overlaps {overlapping!r}: list one of them")
    return tuple(value)


def parse_escalate(value: object, where: str, fail: Fail) -> tuple[EscalationStep, ...]:
    entries = value if isinstance(value, list) else [value]
    if not entries:
        raise fail(where, 'expected a step such as {"after": "10m", "approvers": ["group:risk"]}, or a list of them')
    steps: list[EscalationStep] = []
    for index, entry in enumerate(entries):
        at = f"{where}[{index}]" if isinstance(value, list) else where
        if not isinstance(entry, Mapping):
            raise fail(at, f'expected {{"after": "10m", "approvers": ["group:risk"]}}, not {entry!r}')
        unknown = sorted(set(entry) - {"after", "approvers"})
        if unknown:
            raise fail(f"{at}.{unknown[0]}", 'unknown key; a step has "after" and "approvers"')
        if "after" not in entry:
            raise fail(f"{at}.after", 'required: how long nobody must have decided, such as "10m"')
        after = _duration(entry["after"], f"{at}.after", fail)
        if steps and after <= steps[-1].after_seconds:
            raise fail(f"{at}.after", "each step must come later than the one before it")
        steps.append(EscalationStep(after, _approvers(entry.get("approvers"), f"{at}.approvers", fail)))
    return tuple(steps)


def parse_remind_before(value: object, where: str, fail: Fail) -> float:
    return _duration(value, where, fail)


def check_terms(body: Mapping[str, Any], approvers: tuple[str, ...], quorum: int, where: str, fail: Fail) -> None:
    """What these settings cannot mean together, refused when the policy loads rather than when a call comes."""
    if "escalate" in body and not approvers:
        raise fail(
            f"{where}.escalate",
            "escalation adds approvers to a list, but approval.approvers is empty (every approver may already decide)",
        )
    if body.get("editable") and quorum > 1:
        raise fail(f"{where}.editable", "approving with changes needs quorum 1: every approver must approve one call")


def _approvers(value: object, where: str, fail: Fail) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(name, str) and name for name in value):
        raise fail(where, f'expected a non-empty list of approver names and "group:NAME" entries, not {value!r}')
    for index, name in enumerate(value):
        if name == "group:":
            raise fail(f"{where}[{index}]", "'group:' needs a group name after the colon")
    return tuple(dict.fromkeys(value))


def _duration(value: object, where: str, fail: Fail) -> float:
    try:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f'expected a duration such as "10m", not {value!r}')
        seconds = parse_duration(value)
    except ValueError as exc:
        raise fail(where, str(exc)) from None
    if seconds <= 0:
        raise fail(where, "must be longer than zero")
    return seconds
