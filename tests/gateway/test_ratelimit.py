"""Sliding-window reservations: all-or-nothing, scoped, shared by counter name, given back on release.

Every behaviour is checked against both stores: this process's memory (a gateway on SQLite) and
PostgreSQL, where every replica counts the same slots.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

import anyio
import pytest

from approvals.db import Database
from gateway.policy import Limit
from gateway.ratelimit import MemoryQuotas, RateLimiter, Refusal, Reservation
from gateway.shared_quotas import SharedQuotas
from tests.conftest import _PG_PROBLEM, _create_pg_database, _drop_pg_database, pg_url, skip_unless_present


class FakeClock:
    def __init__(self, now: float = 5_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def per(
    counter: str,
    max: int,
    window: Literal["second", "minute", "hour", "day"] = "minute",
    scope: Literal["grant", "session", "global"] = "grant",
) -> Limit:
    return Limit(counter, window, max, scope, f"tools[{counter!r}].limits[0]")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
async def limiter(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield RateLimiter(clock=clock)
        return
    skip_unless_present("postgres", _PG_PROBLEM)
    name = await _create_pg_database()
    db = Database(pg_url(name))
    try:
        await db.create_schema()
        yield RateLimiter(store=SharedQuotas(db, clock=clock))
    finally:
        await db.dispose()
        await _drop_pg_database(name)


@pytest.fixture
def memory(clock: FakeClock) -> RateLimiter:
    """The in-memory store alone, for what only it has (its buckets)."""
    return RateLimiter(store=MemoryQuotas(clock))


def buckets(limiter: RateLimiter) -> int:
    assert isinstance(limiter.store, MemoryQuotas)
    return limiter.store.bucket_count


async def reserve(
    limiter: RateLimiter, *limits: Limit, grant: str = "bot", session: str = "s1"
) -> Reservation | Refusal:
    return await limiter.reserve("tool", limits, grant=grant, session=session)


async def test_a_limit_admits_max_calls_in_its_window_and_refuses_the_next(limiter: RateLimiter) -> None:
    rate = per("rate", 3)

    granted = [await reserve(limiter, rate) for _ in range(3)]
    fourth = await reserve(limiter, rate)

    assert all(isinstance(r, Reservation) for r in granted)
    assert isinstance(fourth, Refusal)
    assert fourth.limit == rate
    assert await limiter.usage("rate", "bot") == 3


async def test_the_refusal_says_which_limit_and_when_to_try_again(limiter: RateLimiter, clock: FakeClock) -> None:
    rate = Limit("ibkr_preview_order_rate", "minute", 10, "grant", 'tools["ibkr_preview_order"].limits[0]')
    for _ in range(10):
        assert isinstance(await limiter.reserve("ibkr_preview_order", [rate], grant="bot", session="s"), Reservation)
    clock.now += 18

    refusal = await limiter.reserve("ibkr_preview_order", [rate], grant="bot", session="s")

    assert isinstance(refusal, Refusal)
    assert refusal.retry_after == pytest.approx(42.0)
    assert refusal.message == (
        "ibkr_preview_order: at most 10 calls per minute per agent (counter 'ibkr_preview_order_rate'); "
        "try again in 42s"
    )


async def test_the_window_slides_so_each_slot_frees_a_full_window_after_it_was_taken(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    rate = per("rate", 4)
    for _ in range(2):
        await reserve(limiter, rate)
    clock.now += 30
    for _ in range(2):
        await reserve(limiter, rate)
    clock.now += 29.5

    almost = await reserve(limiter, rate)
    clock.now += 0.5  # the first two slots are now exactly 60 s old
    third, fourth, fifth = [await reserve(limiter, rate) for _ in range(3)]

    assert isinstance(almost, Refusal)
    assert almost.retry_after == pytest.approx(0.5)
    assert almost.message.endswith("try again in 1s")
    assert isinstance(third, Reservation) and isinstance(fourth, Reservation)
    assert isinstance(fifth, Refusal)
    assert fifth.retry_after == pytest.approx(30.0)


@pytest.mark.parametrize(("window", "seconds"), [("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400)])
async def test_every_window_size_rolls_over_at_its_length(
    limiter: RateLimiter, clock: FakeClock, window: Literal["second", "minute", "hour", "day"], seconds: int
) -> None:
    once = per("once", 1, window=window)
    await reserve(limiter, once)

    clock.now += seconds - 0.001
    too_soon = await reserve(limiter, once)
    clock.now += 0.001
    on_time = await reserve(limiter, once)

    assert isinstance(too_soon, Refusal)
    assert isinstance(on_time, Reservation)


async def test_a_long_wait_is_written_as_a_duration(limiter: RateLimiter) -> None:
    await reserve(limiter, per("daily", 1, window="day"))

    refusal = await reserve(limiter, per("daily", 1, window="day"))

    assert isinstance(refusal, Refusal)
    assert refusal.message.endswith("per day per agent (counter 'daily'); try again in 1d")


async def test_releasing_a_reservation_gives_the_quota_back(limiter: RateLimiter) -> None:
    rate = per("rate", 2)
    first = await reserve(limiter, rate)
    await reserve(limiter, rate)
    assert isinstance(await reserve(limiter, rate), Refusal)
    assert isinstance(first, Reservation)

    await first.release()

    assert await limiter.usage("rate", "bot") == 1
    assert isinstance(await reserve(limiter, rate), Reservation)


async def test_releasing_twice_gives_back_only_once(limiter: RateLimiter) -> None:
    rate = per("rate", 5)
    reservations = [await reserve(limiter, rate) for _ in range(3)]
    first = reservations[0]
    assert isinstance(first, Reservation)

    await first.release()
    await first.release()

    assert await limiter.usage("rate", "bot") == 2


async def test_releasing_frees_the_callers_own_slot_not_an_older_one(limiter: RateLimiter, clock: FakeClock) -> None:
    rate = per("rate", 2)
    await reserve(limiter, rate)
    clock.now += 40
    second = await reserve(limiter, rate)
    assert isinstance(second, Reservation)

    await second.release()
    clock.now += 20  # the first slot expires now; had release removed it instead, the count would be wrong

    assert await limiter.usage("rate", "bot") == 0
    assert all([isinstance(await reserve(limiter, rate), Reservation) for _ in range(2)])


async def test_a_reservation_is_all_or_nothing(limiter: RateLimiter) -> None:
    roomy = per("roomy", 100)
    full = per("full", 1)
    await reserve(limiter, full)

    refused = await reserve(limiter, roomy, full)

    assert isinstance(refused, Refusal)
    assert refused.limit == full
    assert await limiter.usage("roomy", "bot") == 0
    assert await limiter.usage("full", "bot") == 1


async def test_with_several_limits_exhausted_the_refusal_reports_the_longest_wait(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    per_minute = per("minute", 1)
    per_hour = per("hour", 1, window="hour")
    await reserve(limiter, per_minute, per_hour)
    clock.now += 10

    refused = await reserve(limiter, per_minute, per_hour)

    assert isinstance(refused, Refusal)
    assert refused.limit == per_hour
    assert refused.retry_after == pytest.approx(3590.0)


async def test_grant_scope_counts_each_agent_separately(limiter: RateLimiter) -> None:
    rate = per("rate", 1, scope="grant")

    assert isinstance(await reserve(limiter, rate, grant="alice-bot", session="s1"), Reservation)
    assert isinstance(await reserve(limiter, rate, grant="bob-bot", session="s1"), Reservation)
    assert isinstance(await reserve(limiter, rate, grant="alice-bot", session="s2"), Refusal)


async def test_session_scope_counts_each_session_separately(limiter: RateLimiter) -> None:
    rate = per("rate", 1, scope="session")

    assert isinstance(await reserve(limiter, rate, grant="bot", session="s1"), Reservation)
    assert isinstance(await reserve(limiter, rate, grant="bot", session="s2"), Reservation)
    assert isinstance(await reserve(limiter, rate, grant="other", session="s1"), Refusal)
    assert await limiter.usage("rate", "s1") == 1


async def test_global_scope_is_one_bucket_for_everyone(limiter: RateLimiter) -> None:
    rate = per("rate", 2, scope="global")

    await reserve(limiter, rate, grant="a", session="s1")
    await reserve(limiter, rate, grant="b", session="s2")
    refused = await reserve(limiter, rate, grant="c", session="s3")

    assert isinstance(refused, Refusal)
    assert "across all agents" in refused.message
    assert await limiter.usage("rate", "global") == 2


async def test_the_same_counter_on_two_tools_shares_one_quota(limiter: RateLimiter) -> None:
    on_place = Limit("orders", "minute", 2, "grant", 'tools["ibkr_place_order"].limits[0]')
    on_modify = Limit("orders", "minute", 2, "grant", 'tools["ibkr_modify_order"].limits[0]')

    await limiter.reserve("ibkr_place_order", [on_place], grant="bot", session="s")
    await limiter.reserve("ibkr_modify_order", [on_modify], grant="bot", session="s")
    refused = await limiter.reserve("ibkr_place_order", [on_place], grant="bot", session="s")

    assert isinstance(refused, Refusal)
    assert await limiter.usage("orders", "bot") == 2


async def test_a_counter_shared_by_limits_with_different_windows_checks_each_against_its_own_window(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    burst = Limit("orders", "minute", 2, "grant", 'tools["a"].limits[0]')
    hourly = Limit("orders", "hour", 3, "grant", 'tools["b"].limits[0]')
    await reserve(limiter, hourly)
    await reserve(limiter, burst)
    assert isinstance(await reserve(limiter, burst), Refusal)
    clock.now += 60

    # The bucket keeps an hour of history for `hourly`, but `burst` only looks at the last minute.
    third = await reserve(limiter, burst)
    fourth = await reserve(limiter, hourly)

    assert isinstance(third, Reservation)
    assert isinstance(fourth, Refusal)
    assert fourth.limit == hourly
    assert fourth.retry_after == pytest.approx(3540.0)


async def test_a_longer_window_still_counts_slots_older_than_the_shorter_window(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    burst = Limit("orders", "minute", 5, "grant", 'tools["a"].limits[0]')
    hourly = Limit("orders", "hour", 3, "grant", 'tools["b"].limits[0]')
    await reserve(limiter, burst)
    await reserve(limiter, burst)
    clock.now += 90

    first = await reserve(limiter, hourly)
    second = await reserve(limiter, hourly)

    assert isinstance(first, Reservation)
    assert isinstance(second, Refusal)


async def test_a_long_history_with_slots_given_back_counts_each_window_from_its_own_newest_slots(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    # An hour's counter keeps every slot of the last hour; the minute's limit counts only the newest of them.
    minute = Limit("orders", "minute", 4, "grant", 'tools["a"].limits[0]')
    hourly = Limit("orders", "hour", 1000, "grant", 'tools["b"].limits[0]')
    taken: list[tuple[float, Reservation]] = []
    for _ in range(40):
        reservation = await reserve(limiter, hourly)
        assert isinstance(reservation, Reservation)
        taken.append((clock.now, reservation))
        clock.now += 5
    # Give back every third slot, some of them inside the last minute.
    for _, reservation in taken[::3]:
        await reservation.release()
    kept = [at for n, (at, _) in enumerate(taken) if n % 3]
    in_minute = [at for at in kept if clock.now - at < 60]
    assert len(in_minute) >= 4

    refused = await reserve(limiter, minute)

    assert isinstance(refused, Refusal)
    assert refused.limit == minute
    # Free once enough of the minute's slots have left: the 4th newest kept slot must leave the window.
    assert refused.retry_after == pytest.approx(in_minute[-4] + 60 - clock.now)
    clock.now = in_minute[-4] + 60
    assert isinstance(await reserve(limiter, minute), Reservation)


async def test_a_counter_named_twice_for_one_call_takes_one_slot(limiter: RateLimiter) -> None:
    from_all_tools = Limit("all", "minute", 2, "grant", "all_tools.limits[0]")
    from_the_tool = Limit("all", "minute", 2, "grant", 'tools["t"].limits[0]')

    first = await reserve(limiter, from_all_tools, from_the_tool)
    second = await reserve(limiter, from_all_tools, from_the_tool)

    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    assert await limiter.usage("all", "bot") == 2


async def test_a_call_without_limits_always_gets_an_empty_reservation(memory: RateLimiter) -> None:
    reservation = await reserve(memory)

    assert isinstance(reservation, Reservation)
    await reservation.release()
    assert buckets(memory) == 0


async def test_buckets_of_agents_that_went_quiet_are_dropped(memory: RateLimiter, clock: FakeClock) -> None:
    for n in range(50):
        await reserve(memory, per("rate", 5, scope="session"), session=f"session-{n}")
    assert buckets(memory) == 50

    clock.now += 61
    await reserve(memory, per("rate", 5, scope="session"), session="fresh")

    assert buckets(memory) == 1


async def test_a_released_reservation_leaves_no_empty_bucket_behind(memory: RateLimiter) -> None:
    reservation = await reserve(memory, per("a", 1), per("b", 1, scope="global"))
    assert isinstance(reservation, Reservation)
    assert buckets(memory) == 2

    await reservation.release()

    assert buckets(memory) == 0


async def test_a_bucket_never_holds_more_slots_than_its_limit_allows(limiter: RateLimiter, clock: FakeClock) -> None:
    rate = per("rate", 3)
    for _ in range(1000):
        await reserve(limiter, rate)
        clock.now += 0.5

    assert await limiter.usage("rate", "bot") <= 3


async def test_concurrent_reservations_never_exceed_the_limit(limiter: RateLimiter) -> None:
    rate = per("rate", 50)
    results: list[Reservation | Refusal] = []

    async def hammer() -> None:
        for _ in range(25):
            results.append(await reserve(limiter, rate))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(hammer)

    assert len(results) == 200
    assert sum(isinstance(r, Reservation) for r in results) == 50
    assert await limiter.usage("rate", "bot") == 50


async def test_a_burst_larger_than_one_transaction_takes_is_counted_exactly(limiter: RateLimiter) -> None:
    # On PostgreSQL reservations arriving together share transactions of up to 64: 200 at once need several.
    rate = per("rate", 150)
    results: list[Reservation | Refusal] = []

    async def one() -> None:
        results.append(await reserve(limiter, rate))

    async with anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(one)

    assert len(results) == 200
    assert sum(isinstance(r, Reservation) for r in results) == 150
    assert await limiter.usage("rate", "bot") == 150


async def test_parks_made_at_once_each_leave_the_slots_with_their_own_request(limiter: RateLimiter) -> None:
    rate = per("rate", 100)
    taken = [await reserve(limiter, rate) for _ in range(60)]
    reservations = [r for r in taken if isinstance(r, Reservation)]
    assert len(reservations) == 60

    async with anyio.create_task_group() as tg:
        for n, reservation in enumerate(reservations):
            tg.start_soon(reservation.park, f"request-{n}")
    # The requests with an even number ended unexecuted: exactly their slots come back.
    async with anyio.create_task_group() as tg:
        for n in range(0, 60, 2):
            tg.start_soon(limiter.release_parked, f"request-{n}")

    assert await limiter.usage("rate", "bot") == 30
    await limiter.release_parked("request-1")
    assert await limiter.usage("rate", "bot") == 29


@pytest.mark.postgres
async def test_bursts_on_two_replicas_at_once_are_counted_exactly_across_both() -> None:
    # Each replica's reservations share transactions; the two replicas' transactions take the same locks.
    skip_unless_present("postgres", _PG_PROBLEM)
    name = await _create_pg_database()
    first, second = Database(pg_url(name)), Database(pg_url(name))
    try:
        await first.create_schema()
        replicas = [RateLimiter(store=SharedQuotas(first)), RateLimiter(store=SharedQuotas(second))]
        limits = (per("all", 170), per("rate", 150, window="hour"))
        results: list[Reservation | Refusal] = []

        async def one(replica: RateLimiter) -> None:
            results.append(await reserve(replica, *limits))

        async with anyio.create_task_group() as tg:
            for n in range(400):
                tg.start_soon(one, replicas[n % 2])

        assert len(results) == 400
        assert sum(isinstance(r, Reservation) for r in results) == 150
        assert await replicas[0].usage("rate", "bot") == 150
        assert await replicas[1].usage("all", "bot") == 150
    finally:
        await first.dispose()
        await second.dispose()
        await _drop_pg_database(name)
