"""The Block Kit message, rendered from a request in each state, without any server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from approvals.approvers import ApproverDirectory
from approvals.audit import canonical_json
from approvals.db import Database
from approvals.service import ApprovalService, arguments_digest
from approvals.states import EndReason, Status
from approvals.views import DecisionView, RequestView
from gateway.slack.messages import (
    ACTION_APPROVE,
    ACTION_REJECT,
    Links,
    ModalContext,
    code_block,
    escape,
    reject_modal,
    request_message,
)
from tests.factories import HELD_CANCEL

LINKS = Links("https://countersign.example")
NOW = datetime(2030, 1, 2, 15, 4, 5, tzinfo=UTC)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ApprovalService]:
    db = Database(f"sqlite:///{tmp_path / 'messages.db'}")
    await db.create_schema()
    try:
        yield ApprovalService(db, ApproverDirectory([]), clock=lambda: NOW)
    finally:
        await db.dispose()


@pytest.fixture
async def held(service: ApprovalService) -> RequestView:
    """A request as the service creates it; tests derive other states from it with `replace`."""
    return await service.create(HELD_CANCEL)


def with_arguments(view: RequestView, arguments: dict[str, Any]) -> RequestView:
    arguments_json = canonical_json(arguments)
    return replace(view, arguments_json=arguments_json, arguments_sha256=arguments_digest(arguments_json))


def texts(view: RequestView, decisions: list[DecisionView] | None = None) -> str:
    blocks = request_message(view, decisions or [], LINKS).blocks
    out: list[str] = []
    for block in blocks:
        if "text" in block:
            out.append(block["text"]["text"])
        out.extend(f["text"] for f in block.get("fields", []))
        out.extend(e["text"] for e in block.get("elements", []) if e.get("type") == "mrkdwn")
    return "\n".join(out)


def buttons(view: RequestView) -> list[str]:
    blocks = request_message(view, [], LINKS).blocks
    return [e["action_id"] for b in blocks if b["type"] == "actions" for e in b["elements"]]


def test_escape_neutralises_every_mrkdwn_control_character() -> None:
    assert escape("<!here> & <@U1> <http://x|y>") == "&lt;!here&gt; &amp; &lt;@U1&gt; &lt;http://x|y&gt;"


def test_a_pending_request_shows_what_is_needed_to_decide_and_both_buttons(held: RequestView) -> None:
    text = texts(held)
    for expected in (
        "*Approval needed*",
        "`ibkr_cancel_order` on `paper`",
        "alpha",
        "Cancelling a live order needs a human.",
        "group:traders",
        '"orderId": 1001',
        f"<!date^{int((NOW + timedelta(minutes=15)).timestamp())}^",
        f"<https://countersign.example/approvals/{held.id}|{held.id}>",
        "<https://countersign.example/inbox|Open the inbox>",
    ):
        assert expected in text, expected
    assert buttons(held) == [ACTION_APPROVE, ACTION_REJECT]
    assert "Expired" not in text and "Approved by" not in text


def test_every_text_object_holding_untrusted_text_is_verbatim(held: RequestView) -> None:
    blocks = request_message(held, [], LINKS).blocks
    mrkdwn = [o for o in _walk(blocks) if isinstance(o, dict) and o.get("type") == "mrkdwn"]
    assert mrkdwn and all(o.get("verbatim") is True for o in mrkdwn)


def _walk(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [node, *(x for v in node.values() for x in _walk(v))]
    if isinstance(node, list):
        return [x for v in node for x in _walk(v)]
    return []


def test_long_arguments_are_cut_with_a_link_to_the_full_request(held: RequestView) -> None:
    view = with_arguments(held, {"orderId": 1001, "note": "<&>" * 5000})
    blocks = request_message(view, [], LINKS).blocks
    for block in blocks:
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= 3000
    text = texts(view)
    assert f"<https://countersign.example/approvals/{held.id}|see the full arguments>" in text
    assert len(blocks) <= 50


def test_backticks_in_arguments_cannot_close_the_code_block() -> None:
    block, truncated = code_block("a ``` b ` c", 100)
    assert not truncated
    assert block.startswith("```") and block.endswith("```")
    assert block[3:-3].count("```") == 0


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"status": Status.APPROVED, "decided_by": "alice", "decided_via": "slack"},
            "Approved by alice; forwarding it to paper for the waiting agent. _(decided via slack)_",
        ),
        (
            {
                "status": Status.REJECTED,
                "decided_by": "bob",
                "decided_via": "web",
                "decision_reason": "<!channel> no",
                "ended_because": EndReason.REJECTED,
            },
            "Rejected by bob: &lt;!channel&gt; no. The call was not executed. _(decided via web)_",
        ),
        (
            {"status": Status.REJECTED, "decided_by": "bob", "decided_via": "api", "ended_because": EndReason.REJECTED},
            "Rejected by bob; no reason given. The call was not executed.",
        ),
        (
            {"status": Status.EXPIRED, "ended_because": EndReason.TIMED_OUT},
            "Nobody decided within 15m; the call was not executed.",
        ),
        (
            {
                "status": Status.EXPIRED,
                "decided_by": "alice",
                "decided_via": "slack",
                "ended_because": EndReason.NOT_PICKED_UP,
            },
            "Approved by alice, but the agent did not come back for it within 10m; the call was not executed.",
        ),
        (
            {"status": Status.CANCELLED, "ended_because": EndReason.WITHDRAWN},
            "Withdrawn by the agent; the call was not executed.",
        ),
        (
            {
                "status": Status.EXECUTED,
                "decided_by": "alice",
                "decided_via": "slack",
                "result_json": json.dumps({"content": [{"type": "text", "text": "order 1001 <cancelled>"}]}),
                "ended_because": EndReason.EXECUTED,
            },
            "order 1001 &lt;cancelled&gt;",
        ),
        (
            {
                "status": Status.FAILED,
                "decided_by": "alice",
                "decided_via": "api",
                "error": "broker said <no>",
                "ended_because": EndReason.FAILED,
            },
            "broker said &lt;no&gt;",
        ),
    ],
)
def test_a_decided_request_says_what_happened_and_has_no_buttons(
    held: RequestView, changes: dict[str, Any], expected: str
) -> None:
    view = replace(held, **changes)
    assert expected in texts(view)
    assert buttons(view) == []
    assert "Approval needed" not in texts(view)


def test_a_quorum_shows_who_has_approved_so_far(held: RequestView) -> None:
    at = NOW + timedelta(minutes=1)
    view = replace(held, quorum=2)
    assert "*0 of 2 approvals*" in texts(view)
    text = texts(view, [DecisionView("alice", "slack", "approve", None, at)])
    assert "*1 of 2 approvals* (alice)" in text
    assert "2 of group:traders" in text


def test_the_reject_modal_carries_the_request_and_asks_for_a_reason_as_the_policy_says(held: RequestView) -> None:
    context = ModalContext(held.id, "C0APPROVALS", "1700000000.000001")
    optional = reject_modal(held, context)
    required = reject_modal(replace(held, reject_reason_required=True), context)
    assert ModalContext.load(optional["private_metadata"]) == context
    assert [b.get("optional") for b in optional["blocks"] if b["type"] == "input"] == [True]
    assert [b.get("optional") for b in required["blocks"] if b["type"] == "input"] == [False]
    assert len(optional["title"]["text"]) <= 24
