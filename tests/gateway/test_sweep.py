"""The periodic sweep: it expires what is overdue (a process that armed the deadline may have died) and
leaves alone what is not, reading only the requests that can be due.

The gateway runs with a clock the test moves; the loop timers run on real time and stay far off, so
only the sweep can end a request here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tests.gateway.fakes import MovableClock
from tests.harness import held_call, running_gateway
from tests.slack.stack import cancel_policy

POLICY = cancel_policy(timeout="60s", channels=["web"])


async def test_a_sweep_expires_the_overdue_request_only_and_its_agent_hears_so(
    tmp_path: Path, database_url: str
) -> None:
    clock = MovableClock(datetime.now(UTC))
    async with running_gateway(tmp_path, database_url, policy=POLICY, clock=clock) as h:
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (first, outcome):
            clock.advance(30)
            async with held_call(h, "ibkr_cancel_order", {"orderId": 1002, "confirm": True}) as (second, _):
                assert await h.gateway.timeouts.sweep() == 0  # nothing is past its deadline yet

                clock.advance(31)  # the first is 61 s old, the second 31 s
                assert await h.gateway.timeouts.sweep() == 1
                assert await h.gateway.timeouts.sweep() == 0  # a second sweep finds nothing more

                assert (await h.api().get(f"/api/approvals/{first['id']}")).json()["status"] == "expired"
                assert (await h.api().get(f"/api/approvals/{second['id']}")).json()["status"] == "pending"

                clock.advance(30)
                assert await h.gateway.timeouts.sweep() == 1
        assert outcome["result"].is_error
