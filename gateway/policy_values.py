"""How a condition compares an argument with its value: as JSON sees it, never raising on a mismatch."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

ORDERING: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


def comparable(op: str, actual: Any, expected: Any) -> bool:
    """Whether ``actual`` is of a JSON type ``op`` can compare with ``expected``.

    Only the value at the path is looked at, not what is nested inside it. A rule whose value is null
    asks about null, so anything else simply differs; an argument sent as null where the rule expects
    another type is a mismatch (an upstream may read null as its default).
    """
    if op in ("eq", "neq", "in", "not_in"):
        candidates = expected if op in ("in", "not_in") else (expected,)
        kinds = {_kind(candidate) for candidate in candidates}
        return _kind(actual) in kinds or kinds <= {"null"}
    if op in ORDERING:
        return (is_number(actual) and is_number(expected)) or (isinstance(actual, str) and isinstance(expected, str))
    if op == "regex":
        return isinstance(actual, str)
    if op == "contains":
        return isinstance(actual, list | tuple) or (isinstance(actual, str) and isinstance(expected, str))
    return True


def _kind(value: Any) -> str:
    # 1 and 1.0 are one kind (both JSON numbers); true is not a number.
    return "number" if is_number(value) else json_type(value)


def compare(op: str, actual: Any, expected: Any, pattern: re.Pattern[str] | None) -> bool:
    if op == "eq":
        return _json_equal(actual, expected)
    if op == "neq":
        return not _json_equal(actual, expected)
    if op == "in":
        return any(_json_equal(actual, candidate) for candidate in expected)
    if op == "not_in":
        return not any(_json_equal(actual, candidate) for candidate in expected)
    if op in ORDERING:
        # Callers check comparable() first; a number is never "greater" than a string, so never raise.
        return comparable(op, actual, expected) and bool(ORDERING[op](actual, expected))
    if op == "regex":
        return isinstance(actual, str) and pattern is not None and pattern.search(actual) is not None
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(expected, str) and expected in actual
        if isinstance(actual, list | tuple):
            return any(_json_equal(item, expected) for item in actual)
    return False


def _json_equal(left: Any, right: Any) -> bool:
    """Equality as JSON sees it: ``true`` is not ``1``, while ``1`` and ``1.0`` are the same number."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left is right
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(_json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return len(left) == len(right) and all(_json_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, list | tuple | Mapping) or isinstance(right, list | tuple | Mapping):
        return False
    return bool(left == right)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
