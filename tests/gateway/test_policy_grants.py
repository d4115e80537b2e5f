"""`approval.grants` in a policy: what it offers approvers, and a clear error naming each bad field."""

from __future__ import annotations

from typing import Any

import pytest

from approvals.grant_terms import GrantAsk, GrantOffer, clamp, key_digest
from gateway.policy import PolicyError, parse_policy

WHERE = 'tools["cancel_order"].approval.grants'


def document(grants: Any, **approval: Any) -> dict[str, Any]:
    return {
        "version": "1",
        "default": "deny",
        "tools": {
            "cancel_order": {
                "require_approval": [{"conditions": []}],
                "approval": {"grants": grants, **approval},
            }
        },
    }


def test_a_grants_block_offers_its_ceiling_and_key_to_every_held_call_of_the_tool() -> None:
    policy = parse_policy(document({"max_duration": "2h", "max_uses": 50, "key": ["account", "symbol"]}))
    approval = policy.evaluate("cancel_order", {"account": "DU1"}).approval
    assert approval is not None
    assert approval.grants == GrantOffer(7200.0, 50, ("account", "symbol"))
    assert approval.grants.describe() == "up to 2h and 50 calls, for the same account, symbol"


def test_a_tool_without_grants_offers_none() -> None:
    plain = parse_policy({"version": "1", "default": "deny", "tools": {"t": {"require_approval": [{}]}}})
    approval = plain.evaluate("t", {}).approval
    assert approval is not None and approval.grants is None


@pytest.mark.parametrize(
    ("grants", "extra", "path", "fragment"),
    [
        ("15m", {}, WHERE, "expected an object such as"),
        ({"max_uses": 3}, {}, f"{WHERE}.max_duration", "missing; a standing approval needs a ceiling"),
        ({"max_duration": "15m"}, {}, f"{WHERE}.max_uses", "missing"),
        ({"max_duration": "15m", "max_uses": 3, "uses": 1}, {}, f"{WHERE}.uses", "unknown key 'uses'"),
        ({"max_duration": "soon", "max_uses": 3}, {}, f"{WHERE}.max_duration", "invalid duration 'soon'"),
        ({"max_duration": "30s", "max_uses": 3}, {}, f"{WHERE}.max_duration", "outside 1m to 1d"),
        ({"max_duration": "2d", "max_uses": 3}, {}, f"{WHERE}.max_duration", "outside 1m to 1d"),
        ({"max_duration": "15m", "max_uses": 0}, {}, f"{WHERE}.max_uses", "expected a whole number from 1 to"),
        ({"max_duration": "15m", "max_uses": True}, {}, f"{WHERE}.max_uses", "expected a whole number"),
        ({"max_duration": "15m", "max_uses": 3, "key": []}, {}, f"{WHERE}.key", "non-empty list of argument names"),
        ({"max_duration": "15m", "max_uses": 3, "key": "symbol"}, {}, f"{WHERE}.key", "non-empty list"),
        ({"max_duration": "15m", "max_uses": 3, "key": ["a", ""]}, {}, f"{WHERE}.key[1]", "expected an argument name"),
        ({"max_duration": "15m", "max_uses": 3, "key": ["a", "a"]}, {}, f"{WHERE}.key[1]", "listed more than once"),
        ({"max_duration": "15m", "max_uses": 3}, {"quorum": 2}, WHERE, "cannot stand in for a quorum of 2"),
    ],
)
def test_a_bad_grants_block_is_refused_naming_the_field(grants: Any, extra: Any, path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(document(grants, **extra), source="trading.json")
    assert caught.value.path == path
    assert fragment in caught.value.message, caught.value.message


def test_an_ask_is_cut_to_the_offer_and_says_so() -> None:
    offer = GrantOffer(900.0, 5)
    assert clamp(offer, GrantAsk()) == clamp(offer, GrantAsk(900, 5))
    terms = clamp(offer, GrantAsk(seconds=3600, uses=2))
    assert (terms.seconds, terms.uses, terms.clamped) == (900.0, 2, True)
    assert (
        terms.note(offer)
        == "the policy allows up to 15m and 5 calls, for the same arguments; the grant was shortened to that"
    )
    assert clamp(offer, GrantAsk(seconds=60)).clamped is False
    with pytest.raises(ValueError, match="longer than zero"):
        clamp(offer, GrantAsk(seconds=0))


def test_the_key_decides_which_calls_are_the_same() -> None:
    everything = key_digest("alpha", "t", {"a": 1, "b": 2}, None)
    assert everything == key_digest("alpha", "t", {"b": 2, "a": 1}, None)
    assert everything != key_digest("alpha", "t", {"a": 1, "b": 3}, None)
    assert everything != key_digest("bravo", "t", {"a": 1, "b": 2}, None)
    by_a = key_digest("alpha", "t", {"a": 1, "b": 2}, ("a",))
    assert by_a == key_digest("alpha", "t", {"a": 1, "b": 99}, ("a",))
    # A key over the same values but other names is another key; a missing key argument is not a wildcard.
    assert by_a != key_digest("alpha", "t", {"a": 1}, None)
    assert key_digest("alpha", "t", {"b": 2}, ("a",)) != by_a
