"""The refusal budget with a clock the test moves, and the [agent_limits] settings as an operator writes them."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_settings
from gateway.fair_share import RefusalBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_agent_past_its_refusals_waits_until_the_oldest_leaves_the_window_and_others_are_untouched() -> None:
    clock = Clock()
    budget = RefusalBudget(3, 60.0, clock)
    for _ in range(3):
        assert budget.wait("alpha") is None
        budget.note("alpha")
        clock.now += 10
    assert budget.wait("alpha") == pytest.approx(30.0)
    assert budget.wait("bravo") is None
    assert budget.first_of_block("alpha", 30.0) is True
    assert budget.first_of_block("alpha", 29.0) is False, "one block is recorded once"

    clock.now += 30
    assert budget.wait("alpha") is None, "the first refusal left the window"
    budget.note("alpha")
    assert budget.wait("alpha") == pytest.approx(10.0)
    assert budget.first_of_block("alpha", 10.0) is True, "a new block is recorded again"


def test_agent_limits_are_read_from_the_configuration_and_bad_values_name_their_key() -> None:
    settings = parse_settings(
        {"agent_limits": {"max_pending_per_agent": 5, "refusal_window": "2m", "max_argument_bytes": 4096}}
    )
    assert (settings.agent_limits.max_pending_per_agent, settings.agent_limits.refusal_window) == (5, 120.0)
    assert settings.agent_limits.max_sessions_per_agent == 100

    for bad, key in (
        ({"max_pending_per_agent": 0}, "agent_limits.max_pending_per_agent"),
        ({"refusal_window": "0s"}, "agent_limits.refusal_window"),
        ({"max_argument_bytes": 10 * 1024 * 1024}, "agent_limits.max_argument_bytes"),
        ({"max_pendings": 5}, "agent_limits.max_pendings"),
    ):
        with pytest.raises(ConfigError) as caught:
            parse_settings({"agent_limits": bad})
        assert caught.value.path == key, caught.value
    with pytest.raises(ConfigError) as caught:
        parse_settings({"server": {"audit_unavailable": "allow"}})
    assert caught.value.path == "server.audit_unavailable"


def test_the_argument_size_limit_is_the_configured_one() -> None:
    from gateway.arguments import check_call

    arguments = {"note": "a" * 2000}
    assert check_call("t", arguments, None) is None
    refused = check_call("t", arguments, None, max_bytes=1024)
    assert refused is not None and refused.message.startswith("$: the arguments are 2011 bytes of JSON; at most 1024")
