"""Output schemas widened to admit the gateway's own results, with every `$ref` still resolvable.

A held call may come back as `[APPROVAL PENDING]` instead of the tool's result, so the output
schema a client sees has to admit both: ``{"type": "object", "anyOf": [original, pending]}``.
Nesting a schema moves it away from the document root, and a `$ref` such as ``#/$defs/Order``
(what pydantic and most Python MCP servers emit) resolves against the root. So each branch's
`$defs` / `definitions` move up to the root, renamed where two branches use the same name, and
every other pointer into a branch's root gains the branch's new location (``#/anyOf/0/…``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote, unquote

# Keywords whose value is one schema, a list of schemas, or an object of named schemas. Walking only
# these never touches data such as `const`, `enum`, `default` or `examples`, which may hold a
# "$ref" key that is not a reference at all.
_ONE: Final = frozenset(
    {
        "additionalItems",
        "additionalProperties",
        "contains",
        "contentSchema",
        "else",
        "if",
        "items",
        "not",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_LIST: Final = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items"})
_NAMED: Final = frozenset(
    {"$defs", "definitions", "dependentSchemas", "dependencies", "patternProperties", "properties"}
)
_DEFINITIONS: Final = ("$defs", "definitions")


def admit_alternative(original: Mapping[str, Any], alternative: Mapping[str, Any]) -> dict[str, Any]:
    """An object schema that `original` or `alternative` satisfies; neither argument is changed."""
    root: dict[str, Any] = {"type": "object"}
    dialect = original.get("$schema", alternative.get("$schema"))
    if dialect is not None:
        # `$schema` belongs at the root of a document; a nested one is ignored or refused by validators.
        root = {"$schema": dialect, **root}
    hoisted: dict[str, dict[str, Any]] = {}
    branches = [_embed(schema, f"/anyOf/{index}", hoisted) for index, schema in enumerate((original, alternative))]
    root["anyOf"] = branches
    root.update({keyword: hoisted[keyword] for keyword in _DEFINITIONS if keyword in hoisted})
    return root


def _embed(schema: Mapping[str, Any], at: str, hoisted: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`schema` ready to sit at pointer `at`, its definitions moved into `hoisted` (renamed on a clash)."""
    branch = {k: copy.deepcopy(v) for k, v in schema.items() if k != "$schema"}
    if "$id" in branch:
        # A schema with its own `$id` is a resource of its own: its references resolve against that
        # id wherever it is placed, so it needs no change.
        return branch
    renames: dict[tuple[str, str], str] = {}
    moved: dict[str, dict[str, Any]] = {}
    for keyword in _DEFINITIONS:
        definitions = branch.pop(keyword, None)
        if not isinstance(definitions, dict):
            if definitions is not None:
                branch[keyword] = definitions
            continue
        taken = hoisted.setdefault(keyword, {})
        moved[keyword] = {}
        for name, definition in definitions.items():
            new_name = _free_name(name, taken, moved[keyword])
            renames[(keyword, name)] = new_name
            moved[keyword][new_name] = definition

    def rewrite(ref: str) -> str:
        return _rewrite(ref, at, renames)

    _walk_schema(branch, rewrite)
    for keyword, definitions in moved.items():
        for definition in definitions.values():
            _walk_schema(definition, rewrite)
        hoisted[keyword].update(definitions)
    return branch


def _free_name(name: str, *taken: Mapping[str, Any]) -> str:
    candidate, n = name, 1
    while any(candidate in names for names in taken):
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def _rewrite(ref: str, at: str, renames: Mapping[tuple[str, str], str]) -> str:
    """A reference into the branch's old root, pointed at where its target is now."""
    if not ref.startswith("#") or (len(ref) > 1 and ref[1] != "/"):
        # Another document, or an anchor (`#name`): neither depends on where the branch sits.
        return ref
    segments = ref[2:].split("/") if len(ref) > 1 else []
    if len(segments) >= 2:
        keyword, name = unquote(segments[0]), _unescape(unquote(segments[1]))
        if (keyword, name) in renames:
            rest = "".join(f"/{segment}" for segment in segments[2:])
            return f"#/{keyword}/{quote(_escape(renames[(keyword, name)]))}{rest}"
    return f"#{at}{ref[1:]}"


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _walk_schema(schema: Any, rewrite: Callable[[str], str]) -> None:
    """Rewrite, in place, every `$ref` of `schema` and its subschemas, stopping at nested resources."""
    if not isinstance(schema, dict) or "$id" in schema:
        return
    ref = schema.get("$ref")
    if isinstance(ref, str):
        schema["$ref"] = rewrite(ref)
    for keyword, value in schema.items():
        if keyword in _LIST and isinstance(value, Sequence) and not isinstance(value, str):
            for item in value:
                _walk_schema(item, rewrite)
        elif keyword in _ONE:
            _walk_schema(value, rewrite)
        elif keyword in _NAMED and isinstance(value, dict):
            for item in value.values():
                _walk_schema(item, rewrite)
