"""The policy's `editable`, `escalate` and `remind_before`: what loads, and what is refused, with the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from approvals.views import EscalationStep
from gateway.demo import DEMO_POLICY
from gateway.policy import PolicyError, parse_policy

WHERE = 'tools["ibkr_cancel_order"].approval'


def with_approval(**approval: Any) -> dict[str, Any]:
    policy = copy.deepcopy(DEMO_POLICY)
    policy["tools"]["ibkr_cancel_order"]["approval"].update(approval)
    return policy


def test_the_terms_load_onto_the_tools_approval() -> None:
    policy = parse_policy(
        with_approval(
            editable=["orderId"],
            escalate=[{"after": "10m", "approvers": ["group:risk"]}, {"after": "1h", "approvers": ["carol"]}],
            remind_before="5m",
        )
    )
    approval = policy.evaluate("ibkr_cancel_order", {"orderId": 1, "confirm": True}).approval
    assert approval is not None
    assert approval.editable == ("orderId",)
    assert approval.escalate == (EscalationStep(600.0, ("group:risk",)), EscalationStep(3600.0, ("carol",)))
    assert approval.remind_before_seconds == 300.0
    one = parse_policy(with_approval(escalate={"after": "1s", "approvers": ["group:ops"]}))
    assert one.tools["ibkr_cancel_order"].approval.escalate == (EscalationStep(1.0, ("group:ops",)),)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("approval", "path", "fragment"),
    [
        ({"editable": "orderId"}, f"{WHERE}.editable", "expected a list of argument paths"),
        ({"editable": ["args.orderId"]}, f"{WHERE}.editable[0]", "name the argument without 'args.'"),
        ({"editable": ["order..qty"]}, f"{WHERE}.editable[0]", "is not an argument path"),
        ({"editable": ["order", "order.qty"]}, f"{WHERE}.editable[1]", "overlaps 'order'"),
        ({"editable": ["orderId"], "quorum": 2}, f"{WHERE}.editable", "needs quorum 1"),
        ({"escalate": {"after": "10m"}}, f"{WHERE}.escalate.approvers", "non-empty list of approver names"),
        ({"escalate": {"approvers": ["x"]}}, f"{WHERE}.escalate.after", "required"),
        ({"escalate": {"after": "0s", "approvers": ["x"]}}, f"{WHERE}.escalate.after", "longer than zero"),
        ({"escalate": {"after": "1m", "approvers": ["x"], "notify": True}}, f"{WHERE}.escalate.notify", "unknown key"),
        (
            {"escalate": [{"after": "10m", "approvers": ["x"]}, {"after": "5m", "approvers": ["y"]}]},
            f"{WHERE}.escalate[1].after",
            "later than the one before",
        ),
        ({"escalate": [], "approvers": ["x"]}, f"{WHERE}.escalate", "expected a step"),
        ({"escalate": {"after": "1m", "approvers": ["x"]}, "approvers": []}, f"{WHERE}.escalate", "is empty"),
        ({"remind_before": "soon"}, f"{WHERE}.remind_before", "invalid duration"),
    ],
)
def test_a_term_that_cannot_work_is_refused_with_its_path(approval: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(with_approval(**approval))
    assert caught.value.path == path
    assert fragment in caught.value.message
