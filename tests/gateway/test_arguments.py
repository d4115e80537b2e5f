"""Intake checks on a call's arguments: limits, finite numbers, the tool's input schema, declared defaults."""

from __future__ import annotations

import math
from typing import Any

import pytest

from gateway.arguments import (
    MAX_ARGUMENTS_BYTES,
    MAX_DEPTH,
    MAX_TOOL_NAME_CHARS,
    SchemaCache,
    check_call,
    json_path,
    with_defaults,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "orderId": {"type": "integer"},
        "dry_run": {"type": "boolean", "default": True},
        "legs": {"type": "array", "items": {"type": "object", "properties": {"qty": {"type": "number"}}}},
        "account": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
    },
    "required": ["orderId"],
}


def refusal(arguments: dict[str, Any], schema: dict[str, Any] | None = SCHEMA, tool: str = "t") -> str:
    problem = check_call(tool, arguments, schema, cache=SchemaCache())
    assert problem is not None, "expected the call to be refused"
    assert problem.text.startswith("[INVALID ARGUMENTS] ")
    return problem.text


def test_arguments_that_match_the_schema_pass() -> None:
    assert check_call("t", {"orderId": 1, "dry_run": False, "legs": [{"qty": 2.5}]}, SCHEMA) is None
    assert check_call("t", {"anything": [1, {"x": None}]}, None) is None


@pytest.mark.parametrize(
    ("arguments", "text"),
    [
        ({"orderId": 1, "dry_run": "false"}, '$.dry_run: expected boolean, got string "false"'),
        ({"orderId": 1, "dry_run": 0}, "$.dry_run: expected boolean, got integer 0"),
        ({"orderId": "1001"}, '$.orderId: expected integer, got string "1001"'),
        ({"orderId": 1, "legs": [{"qty": 1}, {"qty": "5"}]}, "$.legs[1].qty: expected number"),
        ({"dry_run": True}, "$: 'orderId' is a required property"),
    ],
)
def test_a_schema_violation_is_refused_naming_the_field_and_what_was_wrong(
    arguments: dict[str, Any], text: str
) -> None:
    assert text in refusal(arguments)


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers_are_refused_anywhere_even_without_a_schema(number: float) -> None:
    text = refusal({"order": {"legs": [1, {"lmtPrice": number}]}}, schema=None)

    assert "$.order.legs[1].lmtPrice: " in text
    assert "not a finite number" in text


def test_a_long_tool_name_is_refused_without_echoing_it() -> None:
    text = refusal({}, tool="x" * (MAX_TOOL_NAME_CHARS + 1))

    assert f"at most {MAX_TOOL_NAME_CHARS}" in text
    assert "xxxx" not in text
    assert check_call("x" * MAX_TOOL_NAME_CHARS, {}, None) is None


def test_arguments_larger_than_the_limit_are_refused() -> None:
    assert check_call("t", {"note": "a" * (MAX_ARGUMENTS_BYTES - 20)}, None) is None
    text = refusal({"note": "a" * MAX_ARGUMENTS_BYTES}, schema=None)

    assert f"at most {MAX_ARGUMENTS_BYTES} bytes" in text


def test_arguments_nested_deeper_than_the_limit_are_refused() -> None:
    def nested(depth: int) -> dict[str, Any]:
        value: dict[str, Any] = {}
        for _ in range(depth - 1):
            value = {"a": value}
        return value

    assert check_call("t", nested(MAX_DEPTH), None) is None
    assert f"nested more than {MAX_DEPTH} levels" in refusal(nested(MAX_DEPTH + 1), schema=None)
    # Far beyond Python's recursion limit: the check itself must not recurse.
    assert "nested more than" in refusal(nested(50_000), schema=None)


def test_an_unusable_schema_refuses_the_call_instead_of_letting_it_through() -> None:
    broken = {"type": "object", "properties": {"x": {"type": "no-such-type"}}}
    dangling = {"type": "object", "properties": {"x": {"$ref": "https://example.invalid/schema.json"}}}

    assert "input schema cannot be used" in refusal({"x": 1}, schema=broken)
    assert "input schema could not be applied" in refusal({"x": 1}, schema=dangling)


def test_a_validator_is_built_once_per_schema_and_reused() -> None:
    cache = SchemaCache()
    other = {**SCHEMA}

    for _ in range(5):
        assert check_call("t", {"orderId": 1}, SCHEMA, cache=cache) is None
    assert cache.compiled == 1
    assert check_call("t", {"orderId": 1}, other, cache=cache) is None
    assert cache.compiled == 2


def test_keys_that_are_not_plain_names_are_quoted_in_paths_and_cut_short() -> None:
    assert json_path(["order", "legs", 0, "odd key"]) == '$.order.legs[0]["odd key"]'
    assert len(json_path(["k" * 10_000])) < 60


def test_defaults_fill_absent_fields_without_touching_the_arguments() -> None:
    schema = {
        "type": "object",
        "properties": {
            "dry_run": {"type": "boolean", "default": True},
            "order": {"type": "object", "properties": {"tif": {"default": "DAY"}, "qty": {}}},
        },
    }
    arguments: dict[str, Any] = {"order": {"qty": 5}}

    assert with_defaults(arguments, schema) == {"dry_run": True, "order": {"qty": 5, "tif": "DAY"}}
    assert arguments == {"order": {"qty": 5}}
    assert with_defaults({"dry_run": False, "order": None}, schema) == {"dry_run": False, "order": None}
    assert with_defaults(arguments, None) == arguments


QUICK_SCHEMAS: list[dict[str, Any]] = [
    SCHEMA,
    {"type": "object", "properties": {"orderId": {"type": "integer"}, "confirm": {"type": "boolean"}}},
    {
        "type": "object",
        "properties": {
            "side": {"type": "string", "enum": ["BUY", "SELL"]},
            "qty": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
            "symbol": {"type": "string", "minLength": 1, "maxLength": 5, "pattern": "^[A-Z]+$"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["side", "qty"],
        "additionalProperties": False,
    },
    {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
    {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "required": ["a"]},
    {"type": "object", "properties": {"n": {"type": ["integer", "null"], "minimum": 2}}},
]
QUICK_ARGUMENTS: list[dict[str, Any]] = [
    {},
    {"orderId": 1},
    {"orderId": True},
    {"orderId": 1.0},
    {"orderId": 1.5, "confirm": 1},
    {"orderId": 1, "dry_run": "false", "legs": [{"qty": "2"}]},
    {"orderId": 1, "legs": [{"qty": 2}, {"qty": None}], "account": None},
    {"side": "BUY", "qty": 5},
    {"side": "HOLD", "qty": 5},
    {"side": "SELL", "qty": 0},
    {"side": "SELL", "qty": 1000.0, "symbol": "AAPL", "tags": ["a"], "note": None},
    {"side": "SELL", "qty": 1001, "symbol": "aapl"},
    {"side": "BUY", "qty": 1, "symbol": "TOOLONG"},
    {"side": "BUY", "qty": 1, "symbol": ""},
    {"side": "BUY", "qty": 1, "tags": []},
    {"side": "BUY", "qty": 1, "tags": ["a", "b", "c"]},
    {"side": "BUY", "qty": 1, "tags": [1]},
    {"side": "BUY", "qty": 1, "note": 3},
    {"side": "BUY", "qty": True},
    {"side": "BUY", "qty": 1, "extra": 1},
    {"a": 0, "b": 2},
    {"a": 1},
    {"n": None},
    {"n": 1},
    {"n": 3},
    {"n": False},
]


@pytest.mark.parametrize("schema", QUICK_SCHEMAS)
def test_the_quick_check_of_plain_schemas_gives_the_validators_verdict(schema: dict[str, Any]) -> None:
    # Plain schemas are first read by a quick "certainly valid" check: never a different answer or message.
    for arguments in QUICK_ARGUMENTS:
        quick = check_call("t", arguments, schema, cache=SchemaCache())
        full = check_call("t", arguments, schema, cache=SchemaCache(quick=False))
        assert quick == full, arguments
