"""Held tools' widened output schemas: every `$ref` resolves, for the SDKs' validators and by construction.

The upstream is an MCPServer whose tool returns a pydantic model with a nested model, so its output
schema has `$defs`; the policy holds that tool, so the gateway widens the schema to admit a pending
result. Both SDKs validate structured content against the listed schema.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from jsonschema import Draft7Validator, Draft202012Validator
from mcp import Client
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.results import PENDING_SCHEMA
from gateway.schemas import admit_alternative
from tests.conftest import skip_unless_present
from tests.gateway.quote_server import build_quote_app
from tests.gateway.test_typescript_client import _problem as node_problem
from tests.gateway.test_typescript_client import run_client
from tests.harness import AGENT_TOKEN, Harness, running_gateway, serve_asgi

HOLD_QUOTES = {
    "version": "1",
    "default": "deny",
    "tools": {
        "get_quote": {
            "require_approval": [{"conditions": [], "reason": "Quotes need a human in this test."}],
            "approval": {"approvers": ["group:traders"], "timeout": "5m"},
        }
    },
}
QUOTE = {"symbol": "ACME", "bid": {"amount": 99.5, "currency": "USD"}, "ask": {"amount": 100.5, "currency": "USD"}}


def references(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        if isinstance(schema.get("$ref"), str):
            yield schema["$ref"]
        for value in schema.values():
            yield from references(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from references(value)


def assert_every_reference_resolves(schema: dict[str, Any]) -> None:
    resolver = Registry().with_resource("urn:schema", Resource(schema, DRAFT202012)).resolver("urn:schema")
    for ref in references(schema):
        resolver.lookup(ref)  # raises when the pointer leads nowhere


# ---- the construction


def test_definitions_move_to_the_root_so_refs_resolve_and_both_shapes_validate() -> None:
    original = {
        "type": "object",
        "$defs": {"Price": {"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]}},
        "properties": {"bid": {"$ref": "#/$defs/Price"}},
        "required": ["bid"],
    }
    widened = admit_alternative(original, PENDING_SCHEMA)

    assert widened["$defs"] == original["$defs"]
    assert "$defs" not in widened["anyOf"][0]
    assert_every_reference_resolves(widened)
    validator = Draft202012Validator(widened, registry=Registry())
    assert validator.is_valid({"bid": {"amount": 1.5}})
    assert not validator.is_valid({"bid": {"amount": "cheap"}})
    assert validator.is_valid({"status": "pending", "approval_id": "apr_x", "expires_at": "2026-11-30T10:00:00Z"})
    assert original["$defs"] and "$ref" in original["properties"]["bid"], "the input is left as it was"


def test_clashing_definition_names_are_renamed_and_pointers_into_a_branch_root_follow_it() -> None:
    node = {
        "type": "object",
        "properties": {"next": {"$ref": "#"}, "tag": {"$ref": "#/$defs/Tag"}},
        "required": ["tag"],
    }
    original = {**node, "$defs": {"Tag": {"type": "string", "maxLength": 3}}}
    other = {
        "type": "object",
        "$defs": {"Tag": {"type": "integer"}},
        "properties": {"n": {"$ref": "#/$defs/Tag"}, "same": {"$ref": "#/properties/n"}},
        "required": ["n"],
        # Data, not a reference: left exactly as written.
        "default": {"$ref": "#/$defs/Tag"},
    }
    widened = admit_alternative(original, other)

    assert set(widened["$defs"]) == {"Tag", "Tag_2"}
    assert widened["anyOf"][0]["properties"]["next"] == {"$ref": "#/anyOf/0"}
    assert widened["anyOf"][1]["properties"]["n"] == {"$ref": "#/$defs/Tag_2"}
    assert widened["anyOf"][1]["properties"]["same"] == {"$ref": "#/anyOf/1/properties/n"}
    assert widened["anyOf"][1]["default"] == {"$ref": "#/$defs/Tag"}
    assert_every_reference_resolves(widened)
    validator = Draft202012Validator(widened, registry=Registry())
    assert validator.is_valid({"tag": "abc", "next": {"tag": "de"}})
    assert not validator.is_valid({"tag": "abc", "next": {"tag": "too long"}})
    assert validator.is_valid({"n": 3, "same": 4})
    assert not validator.is_valid({"n": 3, "same": "four"})


def test_a_draft_7_schema_keeps_its_dialect_and_definitions() -> None:
    original = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "definitions": {"Side": {"enum": ["BUY", "SELL"]}},
        "properties": {"side": {"$ref": "#/definitions/Side"}},
    }
    widened = admit_alternative(original, PENDING_SCHEMA)

    assert next(iter(widened)) == "$schema" and "$schema" not in widened["anyOf"][0]
    validator = Draft7Validator(widened)
    assert validator.is_valid({"side": "BUY"})
    assert not validator.is_valid({"side": "HOLD"})


def test_a_schema_with_its_own_id_is_embedded_unchanged() -> None:
    original = {
        "$id": "urn:example:order",
        "type": "object",
        "$defs": {"Id": {"type": "integer"}},
        "properties": {"id": {"$ref": "#/$defs/Id"}},
    }
    widened = admit_alternative(original, PENDING_SCHEMA)

    assert widened["anyOf"][0] == original
    validator = Draft202012Validator(widened, registry=Registry())
    assert validator.is_valid({"id": 4}) and not validator.is_valid({"id": "four"})


# ---- through the gateway, with both SDKs validating


@asynccontextmanager
async def gateway_holding_quotes(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[Harness, str]]:
    async with serve_asgi(build_quote_app()) as quotes_url:
        config = {
            "upstreams": [{"name": "quotes", "url": f"{quotes_url}/mcp"}],
            # A bounded hold: the first call comes back pending within a second.
            "agents": [{"name": "alpha", "token": AGENT_TOKEN, "max_hold": "1s"}],
        }
        async with running_gateway(tmp_path, sqlite_url, policy=HOLD_QUOTES, config=config) as h:
            yield h, quotes_url


async def upstream_tool(quotes_url: str, mode: str) -> types.Tool:
    async with Client(f"{quotes_url}/mcp", mode=mode) as client:
        [tool] = (await client.list_tools()).tools
        return tool


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_python_sdk_validates_a_pending_and_then_the_real_structured_result(
    tmp_path: Path, sqlite_url: str, mode: str
) -> None:
    async with gateway_holding_quotes(tmp_path, sqlite_url) as (h, quotes_url), h.agent(mode=mode) as agent:
        original = await upstream_tool(quotes_url, mode)
        [listed] = [t for t in (await agent.list_tools()).tools if t.name == "get_quote"]
        # Same client, same era: the input schema reaches the agent exactly as the upstream wrote it.
        assert json.dumps(listed.input_schema) == json.dumps(original.input_schema)
        assert original.output_schema is not None and "$defs" in original.output_schema
        assert listed.output_schema is not None
        assert_every_reference_resolves(listed.output_schema)

        pending = await agent.call_tool("get_quote", {"symbol": "ACME"})
        assert not pending.is_error
        assert pending.structured_content is not None and pending.structured_content["status"] == "pending"
        approval_id = pending.structured_content["approval_id"]

        response = await h.api().post(f"/api/approvals/{approval_id}/approve", json={})
        assert response.status_code == 200, response.text
        # Repeating the identical call picks up the approved request and runs it.
        result = await agent.call_tool("get_quote", {"symbol": "ACME"})
        assert not result.is_error
        assert result.structured_content == QUOTE


async def test_the_typescript_sdk_lists_and_validates_a_pending_and_then_the_real_structured_result(
    tmp_path: Path, sqlite_url: str
) -> None:
    skip_unless_present("node", node_problem())
    async with gateway_holding_quotes(tmp_path, sqlite_url) as (h, _):
        pending = await run_client(h, tool="get_quote", arguments={"symbol": "ACME"}, timeoutMs=10000, listFirst=True)
        assert "error" not in pending, pending
        assert "get_quote" in pending["tools"]
        assert pending["result"]["structuredContent"]["status"] == "pending"
        approval_id = pending["result"]["structuredContent"]["approval_id"]

        response = await h.api().post(f"/api/approvals/{approval_id}/approve", json={})
        assert response.status_code == 200, response.text
        done = await run_client(h, tool="get_quote", arguments={"symbol": "ACME"}, timeoutMs=10000, listFirst=True)
        assert "error" not in done, done
        assert done["result"].get("isError") in (None, False)
        assert done["result"]["structuredContent"] == QUOTE
