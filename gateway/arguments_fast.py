"""A quick "certainly valid" for the plain input schemas most tools declare, before the full validator.

Every call's arguments are checked against the tool's input schema (`gateway.arguments`). jsonschema's
validator walks each keyword through its generic machinery (an error iterator per keyword, a validator
evolved per property): tens of microseconds for a two-property object, more than a hundred for a nested
one, on every call that passes through and every call that is parked. Most tools' schemas use a handful
of keywords (`type`, `properties`, `required`, `additionalProperties`, `items`, `anyOf`, `enum` of
strings, bounds, `pattern`) with nothing but annotations around them.

`compile_quick` turns such a schema into one plain predicate: True means jsonschema would find no error
(each keyword below is read exactly as jsonschema's Draft 7, 2019-09 and 2020-12 read it: a keyword
that applies to one type lets every other type pass, as there; format is not asserted there either).
False means "not certain", never "invalid": the full validator then gives the verdict and the error
message, so a predicate stricter than jsonschema (an integer written as 1.0, an `anyOf` no branch of
which is certain) only costs time. A schema with any other keyword, or written for another draft, gets
no predicate at all.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

Quick = Callable[[Any], bool]

_DRAFTS: Final = frozenset(
    {
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema#",
        "http://json-schema.org/draft-07/schema",
    }
)
# Keywords that never make an instance invalid for jsonschema's validators as the gateway builds them.
_ANNOTATIONS: Final = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",
        "contentMediaType",
        "contentEncoding",
    }
)
_TYPES: Final[Mapping[str, Quick]] = {
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    # Certain only for a plain int: jsonschema also takes 1.0 as an integer, which the full check then allows.
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) is int or type(v) is float,
}


def _is_number(value: Any) -> bool:
    """jsonschema's "number": what a bound applies to (anything else passes the bound)."""
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


class _Unsupported(Exception):
    pass


def compile_quick(schema: Mapping[str, Any]) -> Quick | None:
    """The schema's certain-validity predicate, or None when the schema is not one this reads."""
    draft = schema.get("$schema")
    if draft is not None and draft not in _DRAFTS:
        return None
    try:
        return _build({k: v for k, v in schema.items() if k != "$schema"})
    except (_Unsupported, re.error, KeyError, TypeError, ValueError):
        return None


def _build(schema: Any) -> Quick:
    if schema is True:
        return lambda v: True
    if not isinstance(schema, dict):
        raise _Unsupported
    checks: list[Quick] = []
    for keyword, value in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        builder = _KEYWORDS.get(keyword)
        if builder is None:
            raise _Unsupported
        checks.append(builder(value, schema))
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    return lambda v: all(check(v) for check in checks)


def _type(value: Any, schema: dict[str, Any]) -> Quick:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise _Unsupported
    tests = [_TYPES[name] for name in names]  # an unknown name raises KeyError: no predicate
    return lambda v: any(test(v) for test in tests)


def _properties(value: Any, schema: dict[str, Any]) -> Quick:
    if not isinstance(value, dict):
        raise _Unsupported
    subs = [(name, _build(sub)) for name, sub in value.items()]

    def check(v: Any) -> bool:
        if not isinstance(v, dict):
            return True
        return all(sub(v[name]) for name, sub in subs if name in v)

    return check


def _required(value: Any, schema: dict[str, Any]) -> Quick:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise _Unsupported
    names = tuple(value)
    return lambda v: not isinstance(v, dict) or all(name in v for name in names)


def _additional(value: Any, schema: dict[str, Any]) -> Quick:
    if "patternProperties" in schema:
        raise _Unsupported
    declared = frozenset(schema.get("properties") or ())
    if value is True:
        return lambda v: True
    if value is False:
        return lambda v: not isinstance(v, dict) or all(key in declared for key in v)
    sub = _build(value)
    return lambda v: not isinstance(v, dict) or all(sub(item) for key, item in v.items() if key not in declared)


def _items(value: Any, schema: dict[str, Any]) -> Quick:
    if "prefixItems" in schema or isinstance(value, list):
        raise _Unsupported
    sub = _build(value)
    return lambda v: not isinstance(v, list) or all(sub(item) for item in v)


def _any_of(value: Any, schema: dict[str, Any]) -> Quick:
    if not isinstance(value, list) or not value:
        raise _Unsupported
    branches = [_build(branch) for branch in value]
    return lambda v: any(branch(v) for branch in branches)


def _enum(value: Any, schema: dict[str, Any]) -> Quick:
    # Strings only: jsonschema's equality of numbers and booleans (1 is not true) is left to it.
    if not isinstance(value, list) or not all(isinstance(each, str) for each in value):
        raise _Unsupported
    allowed = frozenset(value)
    return lambda v: type(v) is str and v in allowed


def _bound(compare: Callable[[Any, Any], bool]) -> Callable[[Any, dict[str, Any]], Quick]:
    def build(value: Any, schema: dict[str, Any]) -> Quick:
        if type(value) not in (int, float):
            raise _Unsupported
        return lambda v: not _is_number(v) or compare(v, value)

    return build


def _length(compare: Callable[[int, int], bool], kind: type[str | list[Any]]) -> Callable[[Any, dict[str, Any]], Quick]:
    def build(value: Any, schema: dict[str, Any]) -> Quick:
        if type(value) is not int:
            raise _Unsupported
        return lambda v: not isinstance(v, kind) or compare(len(v), value)

    return build


def _pattern(value: Any, schema: dict[str, Any]) -> Quick:
    if not isinstance(value, str):
        raise _Unsupported
    search = re.compile(value).search
    return lambda v: not isinstance(v, str) or search(v) is not None


_KEYWORDS: Final[Mapping[str, Callable[[Any, dict[str, Any]], Quick]]] = {
    "type": _type,
    "properties": _properties,
    "required": _required,
    "additionalProperties": _additional,
    "items": _items,
    "anyOf": _any_of,
    "enum": _enum,
    "minimum": _bound(lambda v, bound: v >= bound),
    "maximum": _bound(lambda v, bound: v <= bound),
    "exclusiveMinimum": _bound(lambda v, bound: v > bound),
    "exclusiveMaximum": _bound(lambda v, bound: v < bound),
    "minLength": _length(lambda n, bound: n >= bound, str),
    "maxLength": _length(lambda n, bound: n <= bound, str),
    "minItems": _length(lambda n, bound: n >= bound, list),
    "maxItems": _length(lambda n, bound: n <= bound, list),
    "pattern": _pattern,
}
