"""Reading JSON the database holds, whatever it holds: strictly for what runs, safely for what is shown.

Intake writes only finite JSON, but a row can hold anything an older version, a restore or someone with
access to the database left there: `NaN`, numbers too long to parse, nesting deeper than any parser
goes, strings with lone surrogates, text that is not JSON at all. `strict` says what is wrong with
such a value, so it is never carried out; `shown` turns any stored text into a value every channel can
serialise (JSON, HTML, CSV, Slack), marking what it had to change, so no page or endpoint fails on it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from approvals.errors import Unreadable

# How much of an unreadable text is shown, as it is stored.
SHOWN_CHARS = 2_000
_SURROGATE = re.compile("[\ud800-\udfff]")
# Where a parsed JSON string can get a surrogate from: the character itself, or a `\uD800`-`\uDFFF` escape
# (a pair of them decodes to one character, so finding one only means the values must be looked at).
_SURROGATE_SOURCE = re.compile(r"[\ud800-\udfff]|\\u[dD][89a-fA-F]")
_CONSTANTS = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def strict(text: str | None, what: str) -> Any:
    """The stored JSON value, exactly; Unreadable (naming `what` and the problem) unless it is finite JSON."""
    if text is None:
        raise Unreadable(f"{what} is missing")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise Unreadable(f"{what} is nested too deeply to read") from None
    except ValueError as exc:
        raise Unreadable(f"{what} is not valid JSON ({exc})") from None
    # No string in it can hold one when the text has neither: ASCII text (told at once) without an escape,
    # else the text searched for either; only then are the values walked.
    if (text.isascii() and "\\u" not in text) or _SURROGATE_SOURCE.search(text) is None:
        return value
    for item in _walk(value):
        if isinstance(item, str) and _has_surrogate(item):
            raise Unreadable(f"{what} holds a string with an unpaired surrogate, which is not text")
    return value


def shown(text: str | None) -> Any:
    """A JSON-safe value for the stored text: numbers that are not finite and unpaired surrogates become
    marked strings; text that cannot be parsed at all is shown as stored (cut to SHOWN_CHARS)."""
    if text is None:
        return None
    try:
        value = json.loads(text, parse_constant=lambda name: _NonFinite(_CONSTANTS[name]))
    except (RecursionError, ValueError):
        return _cut(_printable(text))
    return _safe(value)


class _NonFinite(str):
    """A `NaN`/`Infinity` literal, kept apart from strings the JSON really held."""


def _safe(value: Any) -> Any:
    """Copy `value` with every non-finite number and unpaired surrogate replaced by a marked string."""
    if isinstance(value, _NonFinite):
        return f"{value} (not a finite number)"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} (not a finite number)"
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, list):
        return [_safe(item) for item in value]
    if isinstance(value, dict):
        return {_printable(str(key)): _safe(item) for key, item in value.items()}
    return value


def _walk(value: Any) -> list[Any]:
    """Every value inside `value`, keys included, without recursion (json.loads already bounded the depth)."""
    found: list[Any] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        found.append(item)
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return found


def _has_surrogate(text: str) -> bool:
    # Searched in C: shown on every approver's page and API answer, over contexts that can run long.
    return _SURROGATE.search(text) is not None


def _printable(text: str) -> str:
    """Unpaired surrogates written as their escapes (\\ud800), so the text can be encoded and is visibly odd."""
    if not _has_surrogate(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _cut(text: str) -> str:
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}… ({len(text):,} characters in all)"
