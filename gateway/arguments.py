"""A tool call's arguments as the gateway accepts them: bounded, finite, and valid for the tool's input schema.

Checked before the policy sees a call. The policy compares values; an upstream that coerces loosely (as
pydantic servers do) reads ``"false"`` as false and ``"5000"`` as 5000, so a value of a type the tool
does not declare could mean one thing to a rule and another to the upstream. Refusing it at intake
leaves the rules only values the tool itself accepts. Non-finite numbers are refused for the same
reason: JSON has no Infinity or NaN, so every later serialisation (the approver's view, the upstream,
the audit log) would have to invent one.

The limits protect everything downstream of intake (the database, the approvers' pages, the schema
validator) from one oversized call.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from jsonschema import exceptions as schema_errors
from jsonschema.protocols import Validator
from jsonschema.validators import Draft202012Validator, validator_for

from approvals.audit import Event, canonical_json
from gateway.arguments_fast import Quick, compile_quick
from gateway.errors import Tag

# The length MCP's tool-naming guidance allows (1 to 128 characters).
MAX_TOOL_NAME_CHARS: Final = 128
# The default of `[agent_limits] max_argument_bytes`.
MAX_ARGUMENTS_BYTES: Final = 256 * 1024
MAX_DEPTH: Final = 64

_PLAIN_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Keys and values echoed back are cut short: the text goes to the agent and into the audit log.
_ECHO_CHARS: Final = 40
_MESSAGE_CHARS: Final = 300
_JSON_TYPES: Final[Mapping[type, str]] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


@dataclass(frozen=True)
class InvalidArguments:
    """Why a call was refused at intake. ``field`` is a JSON path (``$.order.lmtPrice``) or None for the name."""

    field: str | None
    problem: str
    # Arguments over a limit or with non-finite numbers are not stored: storing them is the harm.
    storable: bool = False

    @property
    def message(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{where}{self.problem}; the call was not executed"

    @property
    def text(self) -> str:
        return Tag.INVALID_ARGUMENTS.text(self.message)

    def event(self, agent: str, tool: str, arguments: Mapping[str, Any]) -> Event:
        """The audit event for the refusal; the tool name is cut to the limit, as it came from the agent."""
        return Event(
            kind="call.invalid",
            outcome="denied",
            message=self.text,
            agent=agent,
            tool=_short(tool, MAX_TOOL_NAME_CHARS),
            arguments=canonical_json(arguments) if self.storable else None,
            detail={"field": self.field} if self.field else {},
        )


class SchemaCache:
    """One compiled validator per input schema, reused for every call to the tool.

    Keyed by the schema object the upstream catalog holds: the catalog keeps that object until it is
    rebuilt, and the cache keeps a reference too, so an id is never reused while its entry lives.
    Bounded, so catalogs rebuilt over a long run do not pile up validators. Beside each validator, the
    schema's quick "certainly valid" predicate where it has one (`gateway.arguments_fast`; `quick=False`
    leaves every verdict to the validator).
    """

    def __init__(self, max_entries: int = 1024, *, quick: bool = True) -> None:
        self.max_entries = max_entries
        self.quick = quick
        self._entries: OrderedDict[int, tuple[Mapping[str, Any], Validator | str, Quick | None]] = OrderedDict()
        self.compiled = 0

    def validator(self, schema: Mapping[str, Any]) -> Validator | str:
        """The validator for ``schema``, or why the schema cannot be used."""
        return self.compiled_for(schema)[0]

    def compiled_for(self, schema: Mapping[str, Any]) -> tuple[Validator | str, Quick | None]:
        """The validator (or why the schema cannot be used) and the quick predicate, if any."""
        key = id(schema)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is schema:
            self._entries.move_to_end(key)
            return entry[1], entry[2]
        built = _compile(schema)
        quick = compile_quick(schema) if self.quick and not isinstance(built, str) else None
        self.compiled += 1
        self._entries[key] = (schema, built, quick)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return built, quick


_SCHEMAS = SchemaCache()


def check_call(
    tool: str,
    arguments: Mapping[str, Any],
    input_schema: Mapping[str, Any] | None,
    *,
    cache: SchemaCache = _SCHEMAS,
    max_bytes: int = MAX_ARGUMENTS_BYTES,
) -> InvalidArguments | None:
    """Why this call must be refused before the policy sees it, or None when it may go on.

    Without a schema (an unknown or hidden tool, or a gateway tool) only the limits and finiteness apply.
    """
    if len(tool) > MAX_TOOL_NAME_CHARS:
        return InvalidArguments(
            None, f"the tool name is {len(tool)} characters long; at most {MAX_TOOL_NAME_CHARS} are accepted"
        )
    problem = _check_shape(arguments)
    if problem is not None:
        return problem
    size = len(json.dumps(arguments, ensure_ascii=False, separators=(",", ":")).encode())
    if size > max_bytes:
        return InvalidArguments("$", f"the arguments are {size} bytes of JSON; at most {max_bytes} bytes are accepted")
    if input_schema is None:
        return None
    validator, quick = cache.compiled_for(input_schema)
    if isinstance(validator, str):
        return InvalidArguments(None, f"the tool's input schema cannot be used to check arguments ({validator})")
    if quick is not None and quick(arguments):
        return None  # certainly valid; anything less certain gets the validator's verdict and message
    try:
        error = schema_errors.best_match(validator.iter_errors(arguments))
    except Exception as exc:
        # A schema that passed the meta-schema can still fail to apply (an unresolvable $ref, say):
        # with no verdict on the arguments, the call does not go on.
        return InvalidArguments(None, f"the tool's input schema could not be applied ({_short(str(exc))})")
    if error is None:
        return None
    return InvalidArguments(json_path(error.absolute_path), _describe(error), storable=True)


def with_defaults(arguments: Mapping[str, Any], input_schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """``arguments`` with every absent property that the schema gives a ``default`` filled in.

    What the policy evaluates: an upstream applies its declared defaults to fields left out, so a rule
    must see the same value the upstream will act on. Only ``properties`` written out in the schema are
    followed (no ``$ref`` or combinators); the forwarded arguments are never changed.
    """
    filled = dict(arguments)
    if input_schema is not None:
        _fill(filled, input_schema)
    return filled


def _fill(target: dict[str, Any], schema: Mapping[str, Any]) -> None:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return
    for name, sub in properties.items():
        if not isinstance(sub, Mapping):
            continue
        if name not in target:
            if "default" in sub:
                target[name] = copy.deepcopy(sub["default"])
        elif isinstance(target[name], dict):
            target[name] = dict(target[name])
            _fill(target[name], sub)


def json_path(segments: Iterable[str | int]) -> str:
    """``$.order.legs[0]["odd key"]``: where a value sits, readable by an agent or a person."""
    path = "$"
    for segment in segments:
        if isinstance(segment, int):
            path += f"[{segment}]"
        elif _PLAIN_KEY.fullmatch(segment) and len(segment) <= _ECHO_CHARS:
            path += f".{segment}"
        else:
            path += f"[{json.dumps(_short(segment, _ECHO_CHARS), ensure_ascii=False)}]"
    return path


def _check_shape(arguments: Mapping[str, Any]) -> InvalidArguments | None:
    # Iterative, so a hostile depth never meets Python's recursion limit; parents are kept to name a path.
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(arguments, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, Mapping | list):
            if depth > MAX_DEPTH:
                return InvalidArguments(
                    json_path(path), f"nested more than {MAX_DEPTH} levels deep; at most {MAX_DEPTH} are accepted"
                )
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            stack.extend((item, depth + 1, (*path, key)) for key, item in items)
        elif isinstance(value, float) and not math.isfinite(value):
            shown = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
            return InvalidArguments(
                json_path(path),
                f"{shown} is not a finite number (a number too large for a double, such as 1e400, overflows "
                "to Infinity); only finite JSON numbers are accepted",
            )
    return None


def _compile(schema: Mapping[str, Any]) -> Validator | str:
    cls: Any = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except schema_errors.SchemaError as exc:
        return _short(exc.message)
    validator: Validator = cls(schema)
    return validator


def _describe(error: schema_errors.ValidationError) -> str:
    if error.validator == "type":
        expected = error.validator_value
        wanted = " or ".join(expected) if isinstance(expected, list) else str(expected)
        return f"expected {wanted}, got {_json_type(error.instance)}"
    if error.validator == "required":
        return _short(error.message)
    if error.validator == "additionalProperties" and error.validator_value is False:
        return _short(error.message)
    # Other messages quote the offending value; it is cut short because it may be large.
    return _short(error.message, _MESSAGE_CHARS)


def _json_type(value: Any) -> str:
    """``string "false"``: the type, and the value when it is short enough to say (objects never are)."""
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    if kind in ("object", "null"):
        return kind
    return f"{kind} {_short(json.dumps(value, ensure_ascii=False), _ECHO_CHARS)}"


def _short(text: str, limit: int = _MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
