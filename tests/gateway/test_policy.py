"""The policy document: validation with paths, evaluation and its precedence, lint, explain, durations."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from approvals.durations import format_duration, parse_duration
from gateway.demo import DEMO_POLICY
from gateway.policy import (
    ApprovalSettings,
    Condition,
    Limit,
    Policy,
    PolicyError,
    Rule,
    load_policy,
    parse_policy,
)
from gateway.policy_report import explain, lint_policy
from gateway.ratelimit import RateLimiter, Refusal, Reservation

SHARED_POLICIES = Path(__file__).resolve().parents[3] / "shared" / "policies"
DATA_POLICIES = Path(__file__).resolve().parents[1] / "data" / "policies"
CANCEL = "policylayer-ibkr-cancel-order.json"
PREVIEW = "policylayer-ibkr-preview-order.json"

# The example from DESIGN.md ("Policy document"), verbatim.
DESIGN_EXAMPLE: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "hide": ["ibkr_global_cancel"],
    "all_tools": {"limits": [{"counter": "all", "window": "minute", "max": 120, "scope": "grant"}]},
    "tools": {
        "ibkr_get_*": {},
        "ibkr_preview_order": {
            "limits": [{"counter": "ibkr_preview_order_rate", "window": "minute", "max": 10, "scope": "grant"}]
        },
        "ibkr_cancel_order": {
            "require_approval": [{"conditions": [], "reason": "Cancelling a live order needs a human."}],
            "approval": {"timeout": "15m", "approvers": ["group:traders"], "quorum": 1, "channels": ["slack", "web"]},
        },
        "ibkr_place_order": {
            "deny_if": [
                {
                    "conditions": [{"path": "args.order.totalQuantity", "op": "gt", "value": 1000}],
                    "on_deny": "Orders above 1000 shares are not allowed.",
                }
            ],
            "require_approval": [
                {
                    "conditions": [{"path": "args.dry_run", "op": "eq", "value": False}],
                    "reason": "Live orders need a human.",
                }
            ],
        },
    },
}


def make_policy(tools: dict[str, Any] | None = None, **top: Any) -> Policy:
    document: dict[str, Any] = {"version": "1", "default": "deny", **top}
    if tools is not None:
        document["tools"] = tools
    return parse_policy(document)


def deny_if(*conditions: dict[str, Any], on_deny: str = "no") -> dict[str, Any]:
    return {"conditions": list(conditions), "on_deny": on_deny}


def cond(path: str, op: str, value: Any) -> dict[str, Any]:
    return {"path": path, "op": op, "value": value}


def limit(counter: str, max: int = 10, window: str = "minute", scope: str = "grant") -> dict[str, Any]:
    return {"counter": counter, "window": window, "max": max, "scope": scope}


def policy_dirs() -> list[Any]:
    shared = pytest.param(
        SHARED_POLICIES,
        id="shared",
        marks=pytest.mark.skipif(
            not SHARED_POLICIES.is_dir(), reason=f"{SHARED_POLICIES} is absent (only present in the team workspace)"
        ),
    )
    return [shared, pytest.param(DATA_POLICIES, id="test-data")]


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- conditions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value", "holds_for", "fails_for"),
    [
        ("eq", 5, 5, 6),
        ("eq", "LMT", "LMT", "MKT"),
        ("eq", {"a": [1]}, {"a": [1.0]}, {"a": [2]}),
        ("neq", "LMT", "MKT", "LMT"),
        ("in", ["BUY", "SELL"], "SELL", "SHORT"),
        ("not_in", ["MKT"], "LMT", "MKT"),
        ("lt", 10, 9.5, 10),
        ("lte", 10, 10, 10.01),
        ("gt", 1000, 1001, 1000),
        ("gte", 1000, 1000, 999),
        ("lt", "m", "a", "z"),
        ("regex", "^[A-Z]{1,5}$", "AAPL", "aapl"),
        ("regex", "LMT", "STP LMT", "STP"),
        ("contains", "live", "a live order", "a paper order"),
        ("contains", "DU123", ["U999", "DU123"], ["U999"]),
    ],
)
def test_every_op_holds_for_a_matching_value_and_fails_for_another(
    op: str, value: Any, holds_for: Any, fails_for: Any
) -> None:
    condition = Condition("args.field", op, value)

    assert condition.holds({"field": holds_for}) is True
    assert condition.holds({"field": fails_for}) is False


@pytest.mark.parametrize(
    ("op", "value"),
    [
        ("eq", 1),
        ("in", [1]),
        ("lt", 1),
        ("lte", 1),
        ("gt", 1),
        ("gte", 1),
        ("regex", "."),
        ("contains", "x"),
    ],
)
def test_a_missing_field_fails_every_op_except_exists_neq_and_not_in(op: str, value: Any) -> None:
    condition = Condition("args.order.quantity", op, value)

    for mismatch in (False, True):
        assert condition.holds({}, mismatch=mismatch) is False
        assert condition.holds({"order": {}}, mismatch=mismatch) is False
        assert condition.holds({"order": "not an object"}, mismatch=mismatch) is False


@pytest.mark.parametrize(("op", "value"), [("neq", True), ("not_in", ["DU1000001"])])
def test_neq_and_not_in_hold_when_the_field_is_absent_because_an_absent_field_equals_nothing(
    op: str, value: Any
) -> None:
    condition = Condition("args.order.account", op, value)

    assert condition.holds({}) is True
    assert condition.holds({"order": {}}) is True
    assert condition.holds({"order": {"account": None}}, mismatch=True) is True


def test_exists_true_holds_only_for_a_present_non_null_field() -> None:
    exists = Condition("args.reason", "exists", True)

    assert exists.holds({"reason": "customer asked"}) is True
    assert exists.holds({"reason": ""}) is True
    assert exists.holds({"reason": None}) is False
    assert exists.holds({}) is False


def test_exists_false_holds_only_when_the_field_is_absent() -> None:
    absent = Condition("args.transmit", "exists", False)

    assert absent.holds({}) is True
    assert absent.holds({"transmit": False}) is False


@pytest.mark.parametrize(
    ("op", "value", "actual"),
    [
        ("gt", 10, "11"),
        ("lt", "b", 1),
        ("gte", 1, True),
        ("regex", "1", 1),
        ("contains", "a", 5),
        ("contains", "a", {"a": 1}),
        ("in", [1], [1, 2]),
    ],
)
def test_a_type_mismatch_fails_the_condition_instead_of_raising(op: str, value: Any, actual: Any) -> None:
    assert Condition("args.x", op, value).holds({"x": actual}) is False


@pytest.mark.parametrize(
    ("op", "value", "actual"),
    [
        ("gt", 1000, "5000"),
        ("gt", 1000, True),
        ("lte", 1000, None),
        ("lt", "m", 5),
        ("eq", False, "false"),
        ("eq", False, 0),
        ("eq", False, "no"),
        ("eq", False, None),
        ("neq", True, "true"),
        ("in", ["LMT", "STP"], 1),
        ("not_in", [1, 2], "1"),
        ("regex", "^A", ["AAPL"]),
        ("contains", "live", 5),
    ],
)
def test_a_type_mismatch_is_answered_by_the_rule_so_every_rule_fails_closed(op: str, value: Any, actual: Any) -> None:
    condition = Condition("args.x", op, value)
    rule = Rule((condition,), "m", "w")

    assert condition.holds({"x": actual}, mismatch=True) is True
    assert condition.holds({"x": actual}, mismatch=False) is False
    assert rule.matches({"x": actual}, mismatch=True) is True
    assert rule.matches({"x": actual}, mismatch=False) is False
    assert condition.mismatch({"x": actual}) is not None


@pytest.mark.parametrize(
    ("op", "value", "actual", "holds"),
    [
        ("eq", None, "DU1", False),
        ("eq", None, None, True),
        ("neq", None, 5, True),
        ("in", [None, "DU1"], None, True),
        ("in", ["DU1", 7], 7, True),
        ("in", ["DU1", 7], 8, False),
        ("eq", 1, 1.0, True),
        ("eq", {"a": 1}, {"a": "1"}, False),
        ("contains", "x", [1, 2], False),
    ],
)
def test_values_of_a_comparable_type_are_compared_and_never_count_as_a_mismatch(
    op: str, value: Any, actual: Any, holds: bool
) -> None:
    condition = Condition("args.x", op, value)

    assert condition.mismatch({"x": actual}) is None
    for mismatch in (False, True):
        assert condition.holds({"x": actual}, mismatch=mismatch) is holds


def test_a_string_quantity_is_denied_and_a_string_dry_run_is_held_by_the_old_design_example() -> None:
    policy = parse_policy(DESIGN_EXAMPLE)

    big = policy.evaluate("ibkr_place_order", {"order": {"totalQuantity": "5000"}, "dry_run": True})
    live = policy.evaluate("ibkr_place_order", {"order": {"totalQuantity": 5}, "dry_run": "false"})

    assert (big.action, big.rule) == ("deny", 'tools["ibkr_place_order"].deny_if[0]')
    assert big.message == (
        "Orders above 1000 shares are not allowed. (args.order.totalQuantity is a string, which 'gt' cannot "
        "compare with 1000: a value of the wrong type counts against the call)"
    )
    assert (live.action, live.rule) == ("hold", 'tools["ibkr_place_order"].require_approval[0]')
    assert "args.dry_run is a string" in live.message


def test_a_require_rule_is_not_met_by_a_value_of_the_wrong_type() -> None:
    policy = make_policy(
        {"trade": {"require": [{"conditions": [cond("args.qty", "lte", 1000)], "on_deny": "1000 at most"}]}}
    )

    assert policy.evaluate("trade", {"qty": 10}).action == "allow"
    refused = policy.evaluate("trade", {"qty": "10"})
    assert (refused.action, refused.rule) == ("deny", 'tools["trade"].require[0]')
    assert refused.message.startswith("1000 at most (args.qty is a string")
    assert policy.evaluate("trade", {}).action == "deny"


PLACE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "order": {"type": "object", "properties": {"tif": {"type": "string", "default": "DAY"}}},
        "dry_run": {"type": "boolean", "default": True},
        "confirm": {"type": "boolean", "default": False},
    },
    "required": ["order"],
}


def test_fields_left_out_are_evaluated_with_the_defaults_the_input_schema_declares() -> None:
    policy = make_policy(
        {
            "ibkr_place_order": {
                "deny_if": [deny_if(cond("args.order.tif", "eq", "DAY"), on_deny="no day orders")],
                "require_approval": [{"conditions": [cond("args.dry_run", "neq", True)], "reason": "live"}],
            }
        }
    )

    # Without the schema nothing says what dry_run will be, so `neq true` holds and the call is held.
    assert policy.evaluate("ibkr_place_order", {"order": {"tif": "GTC"}}).action == "hold"
    # With it, the upstream will run a dry run (its default), and the order defaults to a DAY order.
    assert policy.evaluate("ibkr_place_order", {"order": {"tif": "GTC"}}, PLACE_SCHEMA).action == "allow"
    assert policy.evaluate("ibkr_place_order", {"order": {}}, PLACE_SCHEMA).action == "deny"
    live = policy.evaluate("ibkr_place_order", {"order": {"tif": "GTC"}, "dry_run": False}, PLACE_SCHEMA)
    assert live.action == "hold"


def test_true_is_not_one_but_one_is_one_point_zero() -> None:
    assert Condition("args.x", "eq", True).holds({"x": 1}) is False
    assert Condition("args.x", "eq", 1).holds({"x": True}) is False
    assert Condition("args.x", "in", [1, 2]).holds({"x": True}) is False
    assert Condition("args.x", "eq", 1).holds({"x": 1.0}) is True


def test_a_path_reaches_into_nested_objects_and_list_indexes() -> None:
    args = {"order": {"legs": [{"qty": 5}, {"qty": 500}]}}

    assert Condition("args.order.legs.1.qty", "gt", 100).holds(args) is True
    assert Condition("args.order.legs.0.qty", "gt", 100).holds(args) is False
    assert Condition("args.order.legs.2.qty", "exists", True).holds(args) is False
    assert Condition("args.order.legs.x.qty", "exists", True).holds(args) is False


def test_a_rule_without_conditions_always_matches_and_otherwise_needs_all_of_them() -> None:
    big = Condition("args.qty", "gt", 100)
    live = Condition("args.dry_run", "eq", False)

    assert Rule((), "m", "w").matches({}) is True
    assert Rule((big, live), "m", "w").matches({"qty": 101, "dry_run": False}) is True
    assert Rule((big, live), "m", "w").matches({"qty": 101, "dry_run": True}) is False


# --- evaluation -------------------------------------------------------------------------------------------


def test_default_deny_refuses_unlisted_tools_with_a_readable_message() -> None:
    result = make_policy({"ibkr_get_positions": {}}).evaluate("ibkr_place_order", {})

    assert result.action == "deny"
    assert result.message == "tool 'ibkr_place_order' is not allowed by the policy (default deny)"
    assert result.rule == "default"
    assert result.tool_key is None
    assert result.limits == ()


def test_an_empty_object_allows_a_listed_tool_under_default_deny() -> None:
    result = make_policy({"ibkr_get_positions": {}}).evaluate("ibkr_get_positions", {"account": "DU1"})

    assert result.action == "allow"
    assert result.message == ""
    assert result.rule == 'tools["ibkr_get_positions"]'
    assert result.tool_key == "ibkr_get_positions"


def test_default_allow_lets_unlisted_tools_through() -> None:
    result = make_policy({}, default="allow").evaluate("anything", {})

    assert (result.action, result.rule, result.tool_key) == ("allow", "default", None)


def test_a_hidden_tool_is_refused_even_when_listed() -> None:
    policy = make_policy({"ibkr_global_cancel": {}}, hide=["ibkr_global_cancel"])

    result = policy.evaluate("ibkr_global_cancel", {})

    assert result.action == "hidden"
    assert result.message == "tool 'ibkr_global_cancel' is not available"
    assert result.rule == "hide"
    assert result.limits == ()
    assert policy.is_hidden("ibkr_global_cancel") is True
    assert policy.is_hidden("ibkr_cancel_order") is False


def test_hide_entries_may_be_globs_and_a_star_hides_everything() -> None:
    assert make_policy(hide=["ibkr_*_cancel"]).is_hidden("ibkr_global_cancel") is True
    everything = make_policy({"ibkr_get_positions": {}}, default="allow", hide=["*"])

    assert everything.is_hidden("whatever") is True
    assert everything.evaluate("ibkr_get_positions", {}).action == "hidden"


def test_deny_if_refuses_with_its_on_deny_message_when_its_conditions_hold() -> None:
    policy = parse_policy(DESIGN_EXAMPLE)

    big = policy.evaluate("ibkr_place_order", {"order": {"totalQuantity": 5000}, "dry_run": True})
    small = policy.evaluate("ibkr_place_order", {"order": {"totalQuantity": 10}, "dry_run": True})

    assert big.action == "deny"
    assert big.message == "Orders above 1000 shares are not allowed."
    assert big.rule == 'tools["ibkr_place_order"].deny_if[0]'
    assert big.limits == ()
    assert small.action == "allow"


def test_require_refuses_when_its_conditions_do_not_hold() -> None:
    policy = make_policy(
        {"create_refund": {"require": [{"conditions": [cond("args.reason", "exists", True)], "on_deny": "Say why."}]}}
    )

    refused = policy.evaluate("create_refund", {"amount": 10})
    allowed = policy.evaluate("create_refund", {"amount": 10, "reason": "damaged"})

    assert (refused.action, refused.message, refused.rule) == ("deny", "Say why.", 'tools["create_refund"].require[0]')
    assert allowed.action == "allow"


def test_a_rule_without_a_message_gets_one_that_names_the_rule() -> None:
    policy = make_policy({"t": {"deny_if": [{"conditions": []}]}})

    assert policy.evaluate("t", {}).message == 'denied by policy rule tools["t"].deny_if[0]'


PRECEDENCE_TOOL = {
    "trade": {
        "deny_if": [deny_if(cond("args.qty", "gt", 1000), on_deny="too big")],
        "require": [{"conditions": [cond("args.account", "exists", True)], "on_deny": "name the account"}],
        "limits": [limit("trades", max=3)],
        "require_approval": [{"conditions": [cond("args.live", "eq", True)], "reason": "live trade"}],
    }
}


@pytest.mark.parametrize(
    ("arguments", "action", "rule"),
    [
        ({"qty": 5000, "live": True}, "deny", 'tools["trade"].deny_if[0]'),
        ({"qty": 5, "live": True}, "deny", 'tools["trade"].require[0]'),
        ({"qty": 5, "account": "DU1", "live": True}, "hold", 'tools["trade"].require_approval[0]'),
        ({"qty": 5, "account": "DU1", "live": False}, "allow", 'tools["trade"]'),
    ],
    ids=["deny_if-beats-require", "require-beats-approval", "approval-holds", "otherwise-allowed"],
)
def test_precedence_is_deny_if_then_require_then_require_approval_then_allow(
    arguments: dict[str, Any], action: str, rule: str
) -> None:
    result = make_policy(PRECEDENCE_TOOL).evaluate("trade", arguments)

    assert (result.action, result.rule) == (action, rule)
    # Limits ride along with allow and hold (the gateway reserves them first), never with a denial.
    assert [lim.counter for lim in result.limits] == ([] if action == "deny" else ["trades"])


def test_hide_beats_deny_if() -> None:
    policy = make_policy({"t": {"deny_if": [deny_if(on_deny="denied")]}}, hide=["t"])

    assert policy.evaluate("t", {}).action == "hidden"


def test_all_tools_rules_apply_to_every_tool_before_the_tools_own() -> None:
    policy = make_policy(
        {"a": {"deny_if": [deny_if(on_deny="tool rule")], "limits": [limit("a_rate")]}, "b": {}},
        default="allow",
        all_tools={
            "deny_if": [deny_if(cond("args.halt", "eq", True), on_deny="trading halted")],
            "limits": [limit("all", max=120)],
        },
    )

    both_match = policy.evaluate("a", {"halt": True})
    unlisted = policy.evaluate("unlisted", {"halt": True})
    allowed = policy.evaluate("b", {})

    assert (both_match.message, both_match.rule) == ("trading halted", "all_tools.deny_if[0]")
    assert (unlisted.action, unlisted.message) == ("deny", "trading halted")
    assert allowed.action == "allow"
    assert [lim.counter for lim in allowed.limits] == ["all"]
    assert [lim.where for lim in policy.evaluate("a", {"halt": False}).limits] == []  # a is always denied
    limits_of_a = make_policy(
        {"a": {"limits": [limit("a_rate")]}}, all_tools={"limits": [limit("all", max=120)]}
    ).evaluate("a", {})
    assert [lim.where for lim in limits_of_a.limits] == ["all_tools.limits[0]", 'tools["a"].limits[0]']


def test_all_tools_require_and_require_approval_apply_to_every_tool() -> None:
    policy = make_policy(
        {"a": {}},
        all_tools={
            "require": [{"conditions": [cond("args.ticket", "exists", True)], "on_deny": "cite a ticket"}],
            "require_approval": [{"conditions": [cond("args.env", "eq", "prod")], "reason": "prod change"}],
            "approval": {"timeout": "5m"},
        },
    )

    assert policy.evaluate("a", {}).message == "cite a ticket"
    held = policy.evaluate("a", {"ticket": "T-1", "env": "prod"})
    assert (held.action, held.message, held.rule) == ("hold", "prod change", "all_tools.require_approval[0]")
    assert held.approval == ApprovalSettings(timeout_seconds=300.0)


def test_an_exact_tool_name_beats_a_glob() -> None:
    policy = make_policy({"ibkr_*": {"deny_if": [deny_if(on_deny="glob")]}, "ibkr_get_positions": {}})

    assert policy.evaluate("ibkr_get_positions", {}).action == "allow"
    assert policy.evaluate("ibkr_get_positions", {}).tool_key == "ibkr_get_positions"
    assert policy.evaluate("ibkr_get_orders", {}).message == "glob"
    assert policy.evaluate("ibkr_get_orders", {}).tool_key == "ibkr_*"


def test_the_longest_glob_wins_among_several_that_match() -> None:
    policy = make_policy({"ibkr_*": {}, "ibkr_get_*": {"limits": [limit("reads")]}, "*": {}})

    tool_policy = policy.tool_policy("ibkr_get_positions")

    assert tool_policy is not None and tool_policy.key == "ibkr_get_*"
    assert policy.tool_policy("ibkr_place_order") is not None
    assert policy.tool_policy("ibkr_place_order").key == "ibkr_*"  # type: ignore[union-attr]
    assert policy.tool_policy("slack_post").key == "*"  # type: ignore[union-attr]
    assert make_policy({"ibkr_*": {}}).tool_policy("other") is None


def test_glob_matching_is_case_sensitive() -> None:
    assert make_policy({"ibkr_*": {}}).evaluate("IBKR_get", {}).action == "deny"


def test_a_hold_carries_the_tools_approval_settings() -> None:
    policy = make_policy(
        {
            "ibkr_cancel_order": {
                "require_approval": [{"conditions": [], "reason": "needs a human"}],
                "approval": {
                    "timeout": "15m",
                    "approvers": ["alice", "group:traders"],
                    "quorum": 2,
                    "channels": ["slack"],
                    "slack_channel": "#trading-approvals",
                    "reject_reason": "required",
                },
            }
        }
    )

    held = policy.evaluate("ibkr_cancel_order", {"orderId": 7})

    assert (held.action, held.message) == ("hold", "needs a human")
    assert held.approval == ApprovalSettings(
        timeout_seconds=900.0,
        approvers=("alice", "group:traders"),
        quorum=2,
        channels=("slack",),
        slack_channel="#trading-approvals",
        reject_reason_required=True,
    )


def test_a_hold_without_an_approval_block_uses_the_defaults() -> None:
    held = make_policy({"t": {"require_approval": [{"conditions": [], "reason": "r"}]}}).evaluate("t", {})

    assert held.approval == ApprovalSettings()
    assert held.approval.timeout_seconds == 900.0
    assert held.approval.channels == ("web", "slack")


def test_the_design_example_behaves_as_described() -> None:
    policy = parse_policy(DESIGN_EXAMPLE)

    assert policy.evaluate("ibkr_global_cancel", {}).action == "hidden"
    reads = policy.evaluate("ibkr_get_positions", {})
    assert (reads.action, reads.tool_key, [lim.counter for lim in reads.limits]) == ("allow", "ibkr_get_*", ["all"])
    preview = policy.evaluate("ibkr_preview_order", {})
    assert [lim.counter for lim in preview.limits] == ["all", "ibkr_preview_order_rate"]
    cancel = policy.evaluate("ibkr_cancel_order", {"orderId": 1})
    assert (cancel.action, cancel.message) == ("hold", "Cancelling a live order needs a human.")
    assert cancel.approval is not None and cancel.approval.approvers == ("group:traders",)
    assert cancel.approval.channels == ("slack", "web")
    live = policy.evaluate("ibkr_place_order", {"order": {"totalQuantity": 10}, "dry_run": False})
    assert (live.action, live.message) == ("hold", "Live orders need a human.")
    assert live.approval == ApprovalSettings()
    assert policy.evaluate("ibkr_place_order", {"order": {"totalQuantity": 10}}).action == "allow"
    assert policy.evaluate("ibkr_modify_order", {}).action == "deny"
    # Both of its place-order rules are skipped by a call that leaves the field out; docs/policy.md now
    # shows the safe form (the demo policy).
    assert [w.path for w in lint_policy(policy)] == [
        'tools["ibkr_place_order"].deny_if[0].conditions[0]',
        'tools["ibkr_place_order"].require_approval[0].conditions[0]',
    ]


# --- rules an agent can skip by leaving a field out --------------------------------------------------------


def test_the_demo_policy_has_no_rule_an_agent_can_skip_with_or_without_schemas() -> None:
    policy = parse_policy(DEMO_POLICY)

    assert lint_policy(policy) == []
    assert lint_policy(policy, {"ibkr_place_order": PLACE_SCHEMA}) == []


def test_a_deny_if_on_an_optional_field_is_flagged_at_its_condition_with_what_to_do() -> None:
    policy = make_policy({"trade": {"deny_if": [deny_if(cond("args.order.qty", "gt", 1000))]}})

    [warning] = lint_policy(policy)

    assert warning.path == 'tools["trade"].deny_if[0].conditions[0]'
    assert "an agent skips this deny_if rule by leaving out args.order.qty (a missing field fails 'gt')" in (
        warning.message
    )
    assert '"op": "exists"' in warning.message
    assert "--tools" in warning.message


@pytest.mark.parametrize(
    "schema",
    [
        {
            "type": "object",
            "properties": {"order": {"type": "object", "properties": {"qty": {}}, "required": ["qty"]}},
            "required": ["order"],
        },
        {
            "type": "object",
            "properties": {"order": {"type": "object", "properties": {"qty": {"default": 1}}}},
            "required": ["order"],
        },
    ],
    ids=["required", "default"],
)
def test_a_field_the_schema_requires_or_defaults_cannot_be_left_out(schema: dict[str, Any]) -> None:
    policy = make_policy({"trade": {"require_approval": [{"conditions": [cond("args.order.qty", "gt", 10)]}]}})

    assert [w.path for w in lint_policy(policy)] == ['tools["trade"].require_approval[0].conditions[0]']
    assert lint_policy(policy, {"trade": schema}) == []
    # A schema where the parent object is optional leaves the rule skippable.
    loose = {"type": "object", "properties": schema["properties"]}
    assert len(lint_policy(policy, {"trade": loose})) == 1


def test_a_require_rule_demanding_the_field_makes_deny_if_unskippable() -> None:
    policy = make_policy(
        {
            "trade": {
                "deny_if": [deny_if(cond("args.qty", "gt", 1000))],
                "require": [{"conditions": [cond("args.qty", "exists", True)]}],
            }
        }
    )

    assert lint_policy(policy) == []


def test_a_require_rule_on_neq_is_flagged_because_leaving_the_field_out_meets_it() -> None:
    policy = make_policy({"trade": {"require": [{"conditions": [cond("args.account", "neq", "U999")]}]}})

    [warning] = lint_policy(policy)

    assert warning.path == 'tools["trade"].require[0].conditions[0]'
    assert "an agent meets this require rule by leaving out args.account" in warning.message


def test_rules_whose_conditions_match_a_missing_field_are_not_flagged() -> None:
    policy = make_policy(
        {
            "trade": {
                "deny_if": [deny_if(cond("args.account", "not_in", ["DU1"]))],
                "require_approval": [{"conditions": [cond("args.dry_run", "neq", True)]}],
                "require": [{"conditions": [cond("args.ticket", "exists", True)]}],
            }
        }
    )

    assert lint_policy(policy) == []


# --- the PolicyLayer documents ----------------------------------------------------------------------------


@pytest.mark.parametrize("folder", policy_dirs())
def test_the_policylayer_cancel_document_denies_cancels_with_its_message_and_everything_else(folder: Path) -> None:
    policy = load_policy(folder / CANCEL)

    cancel = policy.evaluate("ibkr_cancel_order", {"orderId": 123, "confirm": True})
    other = policy.evaluate("ibkr_get_positions", {})

    assert (cancel.action, cancel.message) == ("deny", "Requires human approval.")
    assert cancel.rule == 'tools["ibkr_cancel_order"].deny_if[0]'
    assert (other.action, other.message) == (
        "deny",
        "tool 'ibkr_get_positions' is not allowed by the policy (default deny)",
    )
    assert policy.source == str(folder / CANCEL)


@pytest.mark.parametrize("folder", policy_dirs())
def test_the_policylayer_cancel_document_gets_a_lint_pointing_at_require_approval(folder: Path) -> None:
    warnings = lint_policy(load_policy(folder / CANCEL))

    assert [w.path for w in warnings] == ['tools["ibkr_cancel_order"].deny_if[0]']
    assert "require_approval" in warnings[0].message
    assert "Requires human approval." in warnings[0].message


@pytest.mark.parametrize("folder", policy_dirs())
def test_the_policylayer_preview_document_allows_previews_under_its_limit(folder: Path) -> None:
    policy = load_policy(folder / PREVIEW)

    preview = policy.evaluate("ibkr_preview_order", {"symbol": "AAPL"})

    assert preview.action == "allow"
    assert preview.limits == (
        Limit("ibkr_preview_order_rate", "minute", 10, "grant", 'tools["ibkr_preview_order"].limits[0]'),
    )
    assert policy.evaluate("ibkr_place_order", {}).action == "deny"
    assert lint_policy(policy) == []


@pytest.mark.parametrize("folder", policy_dirs())
async def test_the_eleventh_preview_in_a_minute_is_refused_until_the_window_rolls_over(folder: Path) -> None:
    policy = load_policy(folder / PREVIEW)
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    limits = policy.evaluate("ibkr_preview_order", {}).limits

    for _ in range(10):
        assert isinstance(await limiter.reserve("ibkr_preview_order", limits, grant="bot", session="s1"), Reservation)
        clock.now += 1
    eleventh = await limiter.reserve("ibkr_preview_order", limits, grant="bot", session="s1")
    other_agent = await limiter.reserve("ibkr_preview_order", limits, grant="other-bot", session="s2")
    clock.now += 50  # 60 s after the first preview
    after_window = await limiter.reserve("ibkr_preview_order", limits, grant="bot", session="s1")

    assert isinstance(eleventh, Refusal)
    assert eleventh.message == (
        "ibkr_preview_order: at most 10 calls per minute per agent (counter 'ibkr_preview_order_rate'); "
        "try again in 50s"
    )
    assert isinstance(other_agent, Reservation)
    assert isinstance(after_window, Reservation)


def test_the_test_data_copies_match_the_shared_documents() -> None:
    if not SHARED_POLICIES.is_dir():
        pytest.skip(f"{SHARED_POLICIES} is absent (only present in the team workspace)")
    for name in (CANCEL, PREVIEW):
        assert (DATA_POLICIES / name).read_bytes() == (SHARED_POLICIES / name).read_bytes()


# --- validation -------------------------------------------------------------------------------------------

PLACE = 'tools["ibkr_place_order"]'


def design_with(edit: Any) -> dict[str, Any]:
    document = copy.deepcopy(DESIGN_EXAMPLE)
    edit(document)
    return document


def place(document: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = document["tools"]["ibkr_place_order"]
    return tool


def first_condition(document: dict[str, Any]) -> dict[str, Any]:
    condition: dict[str, Any] = place(document)["deny_if"][0]["conditions"][0]
    return condition


def approval(document: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = document["tools"]["ibkr_cancel_order"]["approval"]
    return block


BAD_DOCUMENTS = [
    ("version-missing", lambda d: d.pop("version"), "version", "missing"),
    ("version-number", lambda d: d.update(version=1), "version", 'only "1"'),
    ("version-two", lambda d: d.update(version="2"), "version", "unsupported version '2'"),
    ("default-missing", lambda d: d.pop("default"), "default", "missing"),
    ("default-maybe", lambda d: d.update(default="maybe"), "default", 'expected "allow" or "deny"'),
    ("unknown-top-key", lambda d: d.update(name="x"), "name", "unknown key 'name'; expected one of version"),
    ("hide-string", lambda d: d.update(hide="x"), "hide", "expected a list, not a string"),
    ("hide-empty-entry", lambda d: d.update(hide=[""]), "hide[0]", "non-empty string"),
    ("tools-list", lambda d: d.update(tools=[]), "tools", "expected an object, not a list"),
    ("tool-not-object", lambda d: d["tools"].update(x=True), 'tools["x"]', "expected an object"),
    ("unknown-tool-key", lambda d: place(d).update(deny=[]), f"{PLACE}.deny", "unknown key 'deny'"),
    ("unknown-all-tools-key", lambda d: d["all_tools"].update(hide=[]), "all_tools.hide", "unknown key 'hide'"),
    (
        "unknown-op",
        lambda d: first_condition(d).update(op="greater"),
        f"{PLACE}.deny_if[0].conditions[0].op",
        "unknown op 'greater'; expected one of eq, neq, in, not_in, lt, lte, gt, gte, regex, contains, exists",
    ),
    (
        "path-without-args",
        lambda d: first_condition(d).update(path="order.totalQuantity"),
        f"{PLACE}.deny_if[0].conditions[0].path",
        "expected 'args.<field>'",
    ),
    (
        "path-empty-segment",
        lambda d: first_condition(d).update(path="args..x"),
        f"{PLACE}.deny_if[0].conditions[0].path",
        "args.",
    ),
    (
        "in-needs-a-list",
        lambda d: first_condition(d).update(op="in", value="AAPL"),
        f"{PLACE}.deny_if[0].conditions[0].value",
        "op 'in' needs a list of values, not a string",
    ),
    (
        "not-in-needs-a-list",
        lambda d: first_condition(d).update(op="not_in", value=3),
        f"{PLACE}.deny_if[0].conditions[0].value",
        "needs a list",
    ),
    (
        "regex-must-compile",
        lambda d: first_condition(d).update(op="regex", value="(unclosed"),
        f"{PLACE}.deny_if[0].conditions[0].value",
        "invalid regular expression '(unclosed'",
    ),
    (
        "gt-needs-a-number",
        lambda d: first_condition(d).update(value=True),
        f"{PLACE}.deny_if[0].conditions[0].value",
        "op 'gt' needs a number or a string, not a boolean",
    ),
    (
        "exists-needs-a-bool",
        lambda d: first_condition(d).update(op="exists", value="yes"),
        f"{PLACE}.deny_if[0].conditions[0].value",
        "true or false",
    ),
    (
        "value-missing",
        lambda d: first_condition(d).pop("value"),
        f"{PLACE}.deny_if[0].conditions[0].value",
        "missing; op 'gt'",
    ),
    (
        "unknown-condition-key",
        lambda d: first_condition(d).update(field="x"),
        f"{PLACE}.deny_if[0].conditions[0].field",
        "unknown key 'field'",
    ),
    (
        "conditions-object",
        lambda d: place(d)["deny_if"][0].update(conditions={}),
        f"{PLACE}.deny_if[0].conditions",
        "expected a list",
    ),
    (
        "on-deny-number",
        lambda d: place(d)["deny_if"][0].update(on_deny=3),
        f"{PLACE}.deny_if[0].on_deny",
        "non-empty string",
    ),
    (
        "reason-in-deny-if",
        lambda d: place(d)["deny_if"][0].update(reason="x"),
        f"{PLACE}.deny_if[0].reason",
        "unknown key 'reason'; expected one of conditions, on_deny",
    ),
    (
        "on-deny-in-require-approval",
        lambda d: place(d)["require_approval"][0].update(on_deny="x"),
        f"{PLACE}.require_approval[0].on_deny",
        "expected one of conditions, reason",
    ),
    (
        "window-week",
        lambda d: d["all_tools"]["limits"][0].update(window="week"),
        "all_tools.limits[0].window",
        "second, minute, hour, day",
    ),
    ("max-zero", lambda d: d["all_tools"]["limits"][0].update(max=0), "all_tools.limits[0].max", "whole number >= 1"),
    ("max-float", lambda d: d["all_tools"]["limits"][0].update(max=1.5), "all_tools.limits[0].max", "whole number"),
    (
        "scope-user",
        lambda d: d["all_tools"]["limits"][0].update(scope="user"),
        "all_tools.limits[0].scope",
        "grant, session, global",
    ),
    ("counter-missing", lambda d: d["all_tools"]["limits"][0].pop("counter"), "all_tools.limits[0].counter", "missing"),
    ("quorum-zero", lambda d: approval(d).update(quorum=0), 'tools["ibkr_cancel_order"].approval.quorum', ">= 1"),
    (
        "channel-email",
        lambda d: approval(d).update(channels=["email"]),
        'tools["ibkr_cancel_order"].approval.channels[0]',
        "unknown channel 'email'",
    ),
    (
        "no-channels",
        lambda d: approval(d).update(channels=[]),
        'tools["ibkr_cancel_order"].approval.channels',
        "at least one",
    ),
    (
        "timeout-soon",
        lambda d: approval(d).update(timeout="soon"),
        'tools["ibkr_cancel_order"].approval.timeout',
        "invalid duration 'soon'",
    ),
    (
        "timeout-zero",
        lambda d: approval(d).update(timeout=0),
        'tools["ibkr_cancel_order"].approval.timeout',
        "longer than zero",
    ),
    (
        "approver-twice",
        lambda d: approval(d).update(approvers=["a", "a"]),
        'tools["ibkr_cancel_order"].approval.approvers[1]',
        "more than once",
    ),
    (
        "group-without-name",
        lambda d: approval(d).update(approvers=["group:"]),
        'tools["ibkr_cancel_order"].approval.approvers[0]',
        "group name",
    ),
    (
        "reject-reason-maybe",
        lambda d: approval(d).update(reject_reason="maybe"),
        'tools["ibkr_cancel_order"].approval.reject_reason',
        '"required" or "optional"',
    ),
    (
        "unknown-approval-key",
        lambda d: approval(d).update(approver=["a"]),
        'tools["ibkr_cancel_order"].approval.approver',
        "unknown key",
    ),
]


@pytest.mark.parametrize(
    ("edit", "path", "fragment"), [case[1:] for case in BAD_DOCUMENTS], ids=[c[0] for c in BAD_DOCUMENTS]
)
def test_an_invalid_document_is_refused_with_the_path_of_the_bad_field(edit: Any, path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(design_with(edit), source="trading.json")

    assert caught.value.path == path
    assert fragment in caught.value.message
    assert caught.value.source == "trading.json"
    assert str(caught.value) == f"trading.json: {path}: {caught.value.message}"


def test_a_document_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(["version", "1"])

    assert (caught.value.source, caught.value.path) == ("<policy>", "$")
    assert "expected an object, not a list" in caught.value.message


def test_a_file_with_broken_json_reports_the_line_and_column(tmp_path: Path) -> None:
    broken = tmp_path / "policy.json"
    broken.write_text('{\n  "version": "1",\n  "default": "deny",,\n}\n', encoding="utf-8")

    with pytest.raises(PolicyError) as caught:
        load_policy(broken)

    assert caught.value.source == str(broken)
    assert "line 3, column 21" in caught.value.message


def test_a_file_with_a_duplicate_key_is_refused(tmp_path: Path) -> None:
    # Python's json would keep the second "tools" and silently drop the first one's rules.
    doubled = tmp_path / "policy.json"
    doubled.write_text('{"version": "1", "default": "deny", "tools": {}, "tools": {"x": {}}}', encoding="utf-8")

    with pytest.raises(PolicyError, match="'tools' appears twice"):
        load_policy(doubled)


def test_a_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the file"):
        load_policy(tmp_path / "absent.json")


def test_a_valid_file_loads_and_keeps_its_name_as_source(tmp_path: Path) -> None:
    path = tmp_path / "design.json"
    path.write_text(json.dumps(DESIGN_EXAMPLE), encoding="utf-8")

    policy = load_policy(path)

    assert policy.source == str(path)
    assert policy.default == "deny"
    assert policy.hide == ("ibkr_global_cancel",)
    assert list(policy.tools) == list(DESIGN_EXAMPLE["tools"])


# --- lint -------------------------------------------------------------------------------------------------


def paths(policy: Policy) -> list[str]:
    return [warning.path for warning in lint_policy(policy)]


def test_a_deny_if_that_asks_for_a_reviewer_suggests_require_approval() -> None:
    policy = make_policy(
        {
            "a": {"deny_if": [deny_if(on_deny="Needs review by the desk.")]},
            "b": {"deny_if": [deny_if(on_deny="Orders above 1000 shares are not allowed.")]},
        }
    )

    assert paths(policy) == ['tools["a"].deny_if[0]']


def test_require_approval_on_a_hidden_or_always_denied_tool_is_flagged() -> None:
    approval_rule = [{"conditions": [], "reason": "human"}]
    policy = make_policy(
        {
            "hidden": {"require_approval": approval_rule},
            "blocked": {"deny_if": [deny_if(on_deny="never")], "require_approval": approval_rule},
            "sometimes": {"deny_if": [deny_if(cond("args.x", "eq", 1))], "require_approval": approval_rule},
        },
        hide=["hidden"],
    )

    # "sometimes" is also flagged, at its condition, as skippable by leaving args.x out; not the subject here.
    warnings = [w for w in lint_policy(policy) if w.path.endswith(".require_approval")]

    assert [w.path for w in warnings] == ['tools["hidden"].require_approval', 'tools["blocked"].require_approval']
    assert "hidden" in warnings[0].message
    assert "unconditional deny_if" in warnings[1].message


def test_a_glob_key_that_also_matches_a_hidden_tool_is_flagged() -> None:
    policy = make_policy({"ibkr_*": {}, "slack_*": {}}, hide=["ibkr_global_cancel"])

    warnings = lint_policy(policy)

    assert [w.path for w in warnings] == ['tools["ibkr_*"]']
    assert "ibkr_global_cancel" in warnings[0].message


def test_a_quorum_larger_than_the_named_approvers_is_flagged_unless_groups_are_used() -> None:
    rule = [{"conditions": [], "reason": "r"}]
    policy = make_policy(
        {
            "named": {"require_approval": rule, "approval": {"approvers": ["alice", "bob"], "quorum": 3}},
            "grouped": {"require_approval": rule, "approval": {"approvers": ["alice", "group:desk"], "quorum": 3}},
            "anyone": {"require_approval": rule, "approval": {"quorum": 3}},
            "enough": {"require_approval": rule, "approval": {"approvers": ["alice", "bob"], "quorum": 2}},
        }
    )

    assert paths(policy) == ['tools["named"].approval.quorum']


def test_a_counter_reused_with_a_different_max_or_window_is_flagged() -> None:
    policy = make_policy(
        {
            "a": {"limits": [limit("orders", max=10)]},
            "b": {"limits": [limit("orders", max=10)]},
            "c": {"limits": [limit("orders", max=5)]},
            "d": {"limits": [limit("orders", max=10, window="hour")]},
        }
    )

    warnings = lint_policy(policy)

    assert [w.path for w in warnings] == ['tools["c"].limits[0]', 'tools["d"].limits[0]']
    assert 'tools["a"].limits[0]' in warnings[0].message


def test_default_allow_without_any_rules_is_flagged() -> None:
    assert paths(make_policy(default="allow")) == ["default"]
    assert paths(make_policy({"x": {}}, default="allow")) == ["default"]
    assert paths(make_policy(default="allow", hide=["x"])) == []
    assert paths(make_policy(default="allow", all_tools={"limits": [limit("all")]})) == []
    assert paths(make_policy()) == []


# --- explain ----------------------------------------------------------------------------------------------


def test_explain_a_hold_shows_the_rule_limits_and_approval_settings() -> None:
    text = explain(parse_policy(DESIGN_EXAMPLE), "ibkr_cancel_order", {"orderId": 1})

    assert text.splitlines() == [
        "decision: hold",
        'tool: ibkr_cancel_order (matches tools["ibkr_cancel_order"])',
        'rule: tools["ibkr_cancel_order"].require_approval[0]',
        "reason: Cancelling a live order needs a human.",
        "limits:",
        "  - at most 120 calls per minute per agent (counter 'all', all_tools.limits[0])",
        "approval:",
        "  timeout: 15m",
        "  approvers: group:traders",
        "  quorum: 1",
        "  channels: slack, web",
        "  reject reason: optional",
        "  max hold: the agent's max_hold, else the server's default_max_hold",
        "  pick-up window: 10m",
        "  after approval: runs when the agent is there",
        "  agent cancel: withdraws the request",
    ]


@pytest.mark.parametrize("folder", policy_dirs())
def test_explain_a_denial_shows_the_message_the_agent_reads(folder: Path) -> None:
    text = explain(load_policy(folder / CANCEL), "ibkr_cancel_order", {})

    assert text.splitlines() == [
        "decision: deny",
        'tool: ibkr_cancel_order (matches tools["ibkr_cancel_order"])',
        'rule: tools["ibkr_cancel_order"].deny_if[0]',
        "message: Requires human approval.",
    ]


def test_explain_names_the_default_for_unlisted_tools_and_lists_limits_of_allowed_calls() -> None:
    policy = parse_policy(DESIGN_EXAMPLE)

    unlisted = explain(policy, "ibkr_modify_order", {})
    preview = explain(policy, "ibkr_preview_order", {})

    assert "tool: ibkr_modify_order (not listed under tools)" in unlisted
    assert 'the policy\'s "default" is "deny"' in unlisted
    assert "message: tool 'ibkr_modify_order' is not allowed by the policy (default deny)" in unlisted
    assert preview.splitlines()[0] == "decision: allow"
    assert (
        "  - at most 10 calls per minute per agent (counter 'ibkr_preview_order_rate', "
        'tools["ibkr_preview_order"].limits[0])'
    ) in preview.splitlines()
    assert "approval:" not in preview
    assert "limits: none" in explain(make_policy({"x": {}}), "x", {})


# --- durations --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15m", 900.0),
        ("30s", 30.0),
        ("1h", 3600.0),
        ("2h30m", 9000.0),
        (" 2h 30m ", 9000.0),
        ("1d", 86400.0),
        ("1.5h", 5400.0),
        ("90", 90.0),
        (90, 90.0),
        (90.5, 90.5),
        (0, 0.0),
    ],
)
def test_a_duration_is_read_from_text_or_a_number_of_seconds(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "soon", "m", "15x", "15 minutes", "30m2h", "1m1m", "h1", "1h-", "-5", -5, True, float("inf")]
)
def test_an_unreadable_duration_raises_a_value_error_that_shows_the_input(text: Any) -> None:
    with pytest.raises(ValueError, match="duration") as caught:
        parse_duration(text)

    assert repr(text) in str(caught.value)


def test_units_out_of_order_get_their_own_explanation() -> None:
    with pytest.raises(ValueError, match="largest to smallest"):
        parse_duration("30m2h")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(900, "15m"), (5400, "1h 30m"), (30, "30s"), (0, "0s"), (86400, "1d"), (90061, "1d 1h 1m 1s"), (2.5, "2.5s")],
)
def test_a_duration_is_written_the_way_it_is_read(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(("seconds", "text"), [(899.995, "15m"), (895.2, "14m 55s"), (59.96, "1m"), (0.04, "0s")])
def test_a_countdown_is_shown_in_whole_seconds_beside_minutes(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_negative_duration_cannot_be_formatted() -> None:
    with pytest.raises(ValueError, match="-1"):
        format_duration(-1)


def test_approval_settings_for_agents_that_cannot_wait_are_read_and_checked() -> None:
    policy = make_policy(
        {
            "t": {
                "require_approval": [{"conditions": [], "reason": "r"}],
                "approval": {"max_hold": "50s", "pickup_window": "2m", "run_unattended": True, "on_cancel": "keep"},
            }
        }
    )
    approval = policy.evaluate("t", {}).approval
    assert approval is not None
    assert (approval.max_hold_seconds, approval.pickup_seconds) == (50.0, 120.0)
    assert approval.run_unattended and approval.keep_on_cancel
    unbounded = make_policy(
        {"t": {"require_approval": [{"conditions": [], "reason": "r"}], "approval": {"max_hold": "none"}}}
    )
    held = unbounded.evaluate("t", {}).approval
    assert held is not None and held.max_hold_seconds == math.inf
    for key, value, path in (
        ("on_cancel", "drop", 'tools["t"].approval.on_cancel'),
        ("run_unattended", "yes", 'tools["t"].approval.run_unattended'),
        ("max_hold", "soon", 'tools["t"].approval.max_hold'),
        ("max_hold", 0, 'tools["t"].approval.max_hold'),
        ("max_hold", True, 'tools["t"].approval.max_hold'),
    ):
        with pytest.raises(PolicyError) as raised:
            make_policy({"t": {"require_approval": [], "approval": {key: value}}})
        assert raised.value.path == path
