"""Requests as tests need them: a held cancel of order 1001 by agent alpha, with overridable fields."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from approvals.views import NewRequest

HELD_CANCEL = NewRequest(
    upstream="paper",
    tool="ibkr_cancel_order",
    upstream_tool="ibkr_cancel_order",
    arguments={"orderId": 1001, "confirm": True},
    agent="alpha",
    rule='tools["ibkr_cancel_order"].require_approval[0]',
    reason="Cancelling a live order needs a human.",
    timeout_seconds=900,
    approvers=("group:traders",),
)


def held_cancel(**changes: Any) -> NewRequest:
    return replace(HELD_CANCEL, **changes)
