"""The policy's approval context, summary and agent reason: what loads, what is refused and where, what renders."""

from __future__ import annotations

import json
from typing import Any

import jmespath
import pytest

from gateway.demo import CANCEL_ORDER_SELECT, CANCEL_SUMMARY
from gateway.policy import PolicyError, parse_policy
from gateway.policy_context import ContextSpec, render_summary, resolve_arguments, select, with_reason


def held(approval: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "1",
        "default": "deny",
        "tools": {"remove": {"require_approval": [{"conditions": []}], "approval": approval}},
    }


def test_lookups_summary_and_agent_reason_load_into_the_tools_approval() -> None:
    policy = parse_policy(
        held(
            {
                "context": [{"name": "file", "tool": "stat", "arguments": {"path": "{{ args.path }}"}, "timeout": 2}],
                "summary": "Remove {{ args.path }}",
                "agent_reason": "optional",
            }
        )
    )
    approval = policy.tools["remove"].approval
    assert approval is not None
    assert approval.context == (ContextSpec("file", "stat", {"path": "{{ args.path }}"}, None, 2.0),)
    assert (approval.summary, approval.agent_reason) == ("Remove {{ args.path }}", "optional")
    assert policy.agent_reason("remove") == "optional" and policy.agent_reason("other") is None


@pytest.mark.parametrize(
    ("approval", "path", "words"),
    [
        ({"context": {"name": "x"}}, "approval.context", "expected a list of lookups"),
        ({"context": [{"name": "x", "tool": "t", "into": 1}]}, "approval.context[0].into", "unknown key"),
        ({"context": [{"tool": "t"}]}, "approval.context[0].name", "non-empty string"),
        ({"context": [{"name": "x", "tool": "t"}, {"name": "x", "tool": "u"}]}, "approval.context[1].name", "used by"),
        ({"context": [{"name": "x", "tool": "t", "select": "orders[?"}]}, "approval.context[0].select", "JMESPath"),
        (
            {"context": [{"name": "x", "tool": "t", "arguments": {"id": "order {{ args.id }}"}}]},
            "approval.context[0].arguments.id",
            "must be the whole string",
        ),
        ({"context": [{"name": "x", "tool": "t", "timeout": "2m"}]}, "approval.context[0].timeout", "at most 30s"),
        ({"summary": "Cancel {{ args.id "}, "approval.summary", "not a template"),
        ({"agent_reason": "always"}, "approval.agent_reason", '"optional" or "required"'),
    ],
)
def test_a_bad_lookup_summary_or_reason_setting_is_refused_naming_where(
    approval: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(held(approval))
    assert f'tools["remove"].{path}: ' in str(refused.value) and words in str(refused.value)


def test_a_reference_selects_the_held_calls_argument_with_its_type() -> None:
    arguments = {"id": "{{ args.orderId }}", "fixed": "plain", "nested": ["{{ args.legs[0] }}"]}
    assert resolve_arguments(arguments, {"orderId": 1001, "legs": [7]}) == {"id": 1001, "fixed": "plain", "nested": [7]}


def test_an_agents_argument_is_data_in_a_selection_never_expression() -> None:
    spec = ContextSpec("order", "orders", {}, CANCEL_ORDER_SELECT)
    orders = {"orders": [{"orderId": 1001, "action": "BUY", "contract": {"symbol": "AAPL"}}]}
    assert select(spec, orders, {"orderId": 1001})["instrument"] == "AAPL"
    # A crafted orderId that would close the literal and widen the filter stays one odd string: nothing matches.
    assert select(spec, orders, {"orderId": "1` || `true"}) is None


# Lists whose elements test every corner of an equality filter: JMESPath's `true` is not `1`, a missing field
# reads as null, an element that is not an object has no fields, a nested path, a number of either type.
ITEMS: list[Any] = [
    {"id": 1, "name": "one", "deep": {"id": 1}},
    {"id": True, "name": "true"},
    {"id": 1.0, "name": "float one"},
    {"id": "1", "name": "text one"},
    {"name": "no id"},
    {"id": None, "name": "null id"},
    {"id": [1], "name": "a list"},
    {"id": 0, "name": "zero"},
    {"id": False, "name": "false"},
    "a string",
    7,
    None,
    {"id": 2, "name": "two", "deep": {"id": 2}},
]


@pytest.mark.parametrize(
    "select_template",
    [
        "items[?id == {{ args.v }}]",
        "items[?{{ args.v }} == id]",
        "items[?deep.id == {{ args.v }}] | [0].name",
        "items[?id == {{ args.v }}].name",
        "items[?id != {{ args.v }}].name",
        "items[?id == {{ args.v }}] | [0].{n: name, d: deep}",
        "nothing[?id == {{ args.v }}]",
        "name[?id == {{ args.v }}]",
        "items[?id == `1`] | length(@)",
        # More than one reference; and one inside a raw string, which is text, not a literal of its own.
        "items[?id == {{ args.v }} || deep.id == {{ args.v }}].name",
        "items[?name == '{{ args.v }}'].name",
    ],
)
@pytest.mark.parametrize("value", [1, 1.0, True, False, 0, "1", None, [1], 2, 3])
def test_a_selection_picks_exactly_what_jmespath_picks(select_template: str, value: Any) -> None:
    found = {"items": ITEMS, "name": "not a list"}
    spec = ContextSpec("item", "items", {}, select_template)
    literal = "`" + json.dumps(value) + "`"
    expected = jmespath.search(select_template.replace("{{ args.v }}", literal), found)
    assert select(spec, found, {"v": value}) == expected
    assert type(select(spec, found, {"v": value})) is type(expected)
    # Another list of the same shape gets its own answer, not the first list's (positions are kept per list).
    other = {"items": [*ITEMS[::-1], {"id": value, "name": "last"}], "name": "not a list"}
    expected = jmespath.search(select_template.replace("{{ args.v }}", literal), other)
    assert select(spec, other, {"v": value}) == expected


def test_a_summary_that_cannot_render_falls_back_and_the_sandbox_holds() -> None:
    order = {"instrument": "AAPL", "side": "BUY", "quantity": 100.0, "type": "LMT", "limit": 185.0}
    assert render_summary(CANCEL_SUMMARY, {"orderId": 1001}, {"order": order}) == (
        "Cancel BUY 100 AAPL LMT 185.00, order 1001"
    )
    assert render_summary(CANCEL_SUMMARY, {"orderId": 1001}, {"order": None}) == "Cancel order 1001"
    assert render_summary("{{ context.order.contract.symbol }}", {}, {"order": None}) is None
    assert render_summary("{{ ''.__class__.__mro__[1].__subclasses__() }}", {}, {}) is None


def test_the_reason_argument_is_listed_and_required_only_when_the_policy_requires_it() -> None:
    schema = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
    required = with_reason(schema, "required")
    assert required["properties"]["countersign_reason"]["type"] == "string"
    assert required["required"] == ["path", "countersign_reason"]
    assert with_reason(schema, "optional")["required"] == ["path"]
    assert schema["required"] == ["path"], "the upstream's own schema is left as it was"


def test_policy_check_warns_about_a_lookup_whose_tool_the_policy_does_not_allow_outright() -> None:
    from gateway.policy_report import lint_policy

    document = held({"context": [{"name": "file", "tool": "stat", "arguments": {"path": "{{ args.path }}"}}]})
    [warning] = [w for w in lint_policy(parse_policy(document)) if ".context[" in w.path]
    assert warning.path == 'tools["remove"].approval.context[0].tool'
    assert "does not allow stat outright" in warning.message
    document["tools"]["stat"] = {}
    assert [w for w in lint_policy(parse_policy(document)) if ".context[" in w.path] == []
