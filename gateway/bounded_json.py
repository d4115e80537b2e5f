"""JSON from outside, parsed within bounds: a body too large or nested too deep is a clear error, not a crash.

Python's parser recurses once per level of nesting, so `[[[[…]]]]` a hundred thousand deep raises
RecursionError, which escapes every `except ValueError` and becomes a 500. Measuring the depth
first, in one flat pass, turns it into an ordinary `JsonTooComplex` the caller answers with 400.
"""

from __future__ import annotations

import json
from typing import Any

# Deeper than any request body or Slack payload this gateway reads, far below the recursion limit.
MAX_DEPTH = 64


class JsonTooComplex(ValueError):
    pass


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text`, ignoring brackets inside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def loads(raw: str | bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads`, but raising JsonTooComplex (a ValueError) for a text too long or too deep."""
    if len(raw) > max_bytes:
        raise JsonTooComplex(f"the JSON is larger than {max_bytes} bytes")
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    if nesting_depth(text) > max_depth:
        raise JsonTooComplex(f"the JSON is nested more than {max_depth} levels deep")
    return json.loads(text)
