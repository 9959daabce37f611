"""Rate limiters: token bucket, fixed window, multi-tier, async acquire."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from datetime import timedelta
from typing import Any

import cano
import pytest
from cano import (
    ConfigurationError,
    MultiRateLimiter,
    RateLimitedError,
    RateLimiter,
    WindowedRateLimiter,
)

HOUR = 3600.0  # a refill period long enough that nothing refills during a test


def count_admitted(limiter: RateLimiter | WindowedRateLimiter, attempts: int) -> int:
    return sum(limiter.try_acquire() for _ in range(attempts))


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Records every asyncio.sleep the acquire loops make (they still really sleep)."""
    recorded: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float, *args: Any) -> Any:
        recorded.append(delay)
        return await real_sleep(delay, *args)

    monkeypatch.setattr(cano.resilience.asyncio, "sleep", recording_sleep)
    return recorded


# --- token bucket ---------------------------------------------------------------------------


def test_bucket_starts_full_with_burst() -> None:
    limiter = RateLimiter(3, HOUR, burst=2)
    assert (limiter.tokens, limiter.period, limiter.burst, limiter.capacity) == (3, HOUR, 2, 5)
    assert count_admitted(limiter, 10) == 5
    assert not limiter.try_acquire()


def test_per_second_and_duration_types() -> None:
    limiter = RateLimiter.per_second(4)
    assert (limiter.tokens, limiter.period, limiter.burst) == (4, 1.0, 0)
    assert RateLimiter(1, timedelta(minutes=1)).period == 60.0
    assert RateLimiter(1, 2).period == 2.0
    assert repr(limiter) == "RateLimiter(4, 1.0, burst=0)"


def test_bucket_refills_after_time_until() -> None:
    limiter = RateLimiter(1, 0.05)
    assert limiter.try_acquire()
    assert not limiter.try_acquire()
    wait = limiter.time_until()
    assert 0 < wait <= 0.05
    time.sleep(wait)
    assert limiter.try_acquire()


def test_bucket_refill_is_fractional() -> None:
    limiter = RateLimiter(2, HOUR)
    assert limiter.try_acquire(2)
    assert 0 <= limiter.available < 0.01
    # Two tokens take a whole period; one token half of it.
    assert limiter.time_until(2) == pytest.approx(HOUR, rel=1e-3)
    assert limiter.time_until(1) == pytest.approx(HOUR / 2, rel=1e-3)


def test_bucket_costs() -> None:
    limiter = RateLimiter(5, HOUR)
    assert limiter.try_acquire(0)
    assert limiter.time_until(0) == 0.0
    assert limiter.try_acquire(3)
    assert not limiter.try_acquire(3)  # only 2 left: nothing is taken
    assert limiter.try_acquire(2)
    assert not limiter.try_acquire(6)  # above the capacity: never
    assert limiter.time_until(6) == math.inf
    with pytest.raises(ConfigurationError, match=r"try_acquire\(cost\).*got -1"):
        limiter.try_acquire(-1)
    with pytest.raises(ConfigurationError):
        limiter.time_until(-1)


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        ((0, 1.0), {}, "tokens"),
        ((-1, 1.0), {}, "tokens"),
        ((1.5, 1.0), {}, "tokens"),
        ((1, 0), {}, "period"),
        ((1, -1.0), {}, "period"),
        ((1, float("nan")), {}, "period"),
        ((1, "1s"), {}, "period"),
        ((1, 1.0), {"burst": -1}, "burst"),
        ((2**64 - 1, 1.0), {"burst": 1}, "overflows"),
    ],
)
def test_invalid_buckets_raise_configuration_error(
    args: tuple[Any, ...], kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        RateLimiter(*args, **kwargs)


def test_per_second_zero_is_invalid() -> None:
    with pytest.raises(ConfigurationError):
        RateLimiter.per_second(0)


def test_bucket_shared_across_threads_never_overspends() -> None:
    limiter = RateLimiter(100, HOUR)
    admitted: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        n = count_admitted(limiter, 50)
        with lock:
            admitted.append(n)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 100


# --- fixed window ---------------------------------------------------------------------------


def test_window_limit_and_reset() -> None:
    w = WindowedRateLimiter(3, 0.05)
    assert (w.limit, w.window) == (3, 0.05)
    assert w.try_acquire(2)
    assert w.try_acquire()
    assert not w.try_acquire()
    assert (w.used, w.remaining) == (3, 0)
    wait = w.time_until()
    assert 0 < wait <= 0.05
    time.sleep(wait)
    assert w.try_acquire(3)
    assert w.time_until(4) == math.inf
    assert not w.try_acquire(4)


@pytest.mark.parametrize(
    ("limit", "window"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -1), (1, float("nan")), (1, None)]
)
def test_invalid_windows_raise_configuration_error(limit: Any, window: Any) -> None:
    with pytest.raises(ConfigurationError):
        WindowedRateLimiter(limit, window)


# --- multi-tier -----------------------------------------------------------------------------


def test_multi_charges_every_tier() -> None:
    fast = RateLimiter(10, HOUR)
    slow = WindowedRateLimiter(4, HOUR)
    multi = MultiRateLimiter().with_tier("fast", fast, 1).with_tier("slow", slow, 2)
    assert multi.try_acquire() is True
    assert 9 <= fast.available < 9.01
    assert slow.used == 2
    assert [(name, cost) for name, _, cost in multi.tiers] == [("fast", 1), ("slow", 2)]
    assert multi.tiers[0][1] is fast


def test_multi_is_all_or_nothing_with_refunds() -> None:
    fast = RateLimiter(10, HOUR)
    daily = WindowedRateLimiter(1, HOUR)
    multi = MultiRateLimiter().with_tier("fast", fast, 3).with_tier("daily", daily, 1)
    assert multi.try_acquire()
    with pytest.raises(RateLimitedError) as info:
        multi.try_acquire()
    err = info.value
    assert isinstance(err, cano.CanoError)
    assert err.tier == "daily"
    assert err.retry_after is not None
    assert 0.001 <= err.retry_after <= HOUR
    assert "daily" in str(err)
    # The 3 tokens charged to "fast" before "daily" refused were refunded.
    assert 7 <= fast.available < 7.01
    assert daily.used == 1


def test_multi_retry_after_is_at_least_one_millisecond() -> None:
    bucket = RateLimiter(1_000_000, 1.0)
    multi = MultiRateLimiter().with_tier("huge", bucket, 1_000_000)
    assert multi.try_acquire()
    with pytest.raises(RateLimitedError) as info:
        multi.try_acquire()
    assert info.value.retry_after is not None
    assert info.value.retry_after >= 0.001


def test_multi_with_tier_returns_a_new_limiter_sharing_the_tiers() -> None:
    shared = RateLimiter(2, HOUR)
    base = MultiRateLimiter()
    one = base.with_tier("a", shared, 1)
    two = one.with_tier("b", shared, 1)
    assert base.tiers == [] and len(one.tiers) == 1 and len(two.tiers) == 2
    assert base.try_acquire(1_000)  # no tiers: everything is admitted
    assert two.try_acquire()  # the same limiter in two tiers is charged twice
    with pytest.raises(RateLimitedError):
        one.try_acquire()


def test_multi_costs_and_time_until() -> None:
    bucket = RateLimiter(10, HOUR)
    multi = MultiRateLimiter().with_tier("inert", RateLimiter(1, HOUR), 0).with_tier("b", bucket)
    assert multi.try_acquire(4)  # 4 units x cost 1
    assert multi.time_until(6) == 0.0
    assert multi.time_until(7) > 0
    assert multi.time_until(11) == math.inf
    with pytest.raises(RateLimitedError) as info:
        multi.try_acquire(11)
    assert info.value.retry_after == math.inf


@pytest.mark.parametrize(
    ("limiter", "cost"), [(object(), 1), (None, 1), ("x", 1), ("ok", -1), ("ok", 1.5)]
)
def test_invalid_tiers_raise_configuration_error(limiter: Any, cost: Any) -> None:
    if limiter == "ok":
        limiter = RateLimiter(1, 1.0)
    with pytest.raises(ConfigurationError, match="tier"):
        MultiRateLimiter().with_tier("tier", limiter, cost)


# --- async acquire --------------------------------------------------------------------------


async def test_acquire_waits_for_the_refill(sleeps: list[float]) -> None:
    limiter = RateLimiter(1, 0.05)
    await limiter.acquire()  # full bucket: no wait
    assert sleeps == []
    wait = limiter.time_until()
    t0 = time.perf_counter()
    await limiter.acquire()
    elapsed = time.perf_counter() - t0
    assert sleeps and 0 < sleeps[0] <= wait
    assert elapsed > 0
    assert len(sleeps) <= 3  # slept for the refill, no busy loop
    assert not limiter.try_acquire()  # the refilled token was taken


async def test_window_acquire_waits_for_the_next_window(sleeps: list[float]) -> None:
    w = WindowedRateLimiter(2, 0.05)
    await w.acquire(2)
    await w.acquire()
    assert sleeps and len(sleeps) <= 3
    assert w.used == 1


async def test_multi_acquire_sleeps_the_blocking_tier(sleeps: list[float]) -> None:
    multi = (
        MultiRateLimiter()
        .with_tier("bucket", RateLimiter(10, HOUR), 1)
        .with_tier("window", WindowedRateLimiter(1, 0.05), 1)
    )
    await multi.acquire()
    await multi.acquire()
    assert sleeps and all(s >= 0.001 for s in sleeps)
    assert len(sleeps) <= 3


async def test_acquire_of_an_impossible_cost_fails_at_once() -> None:
    with pytest.raises(ConfigurationError, match="capacity"):
        RateLimiter(2, 1.0, burst=1).acquire(4)
    with pytest.raises(ConfigurationError, match="capacity"):
        WindowedRateLimiter(2, 1.0).acquire(3)
    multi = MultiRateLimiter().with_tier("small", RateLimiter(2, 1.0), 3)
    with pytest.raises(ConfigurationError, match="capacity"):
        multi.acquire()
    with pytest.raises(ConfigurationError):
        RateLimiter(2, 1.0).acquire(-1)


async def test_concurrent_acquirers_all_get_through() -> None:
    limiter = RateLimiter(2, 0.04)
    order: list[int] = []

    async def worker(i: int) -> None:
        await limiter.acquire()
        order.append(i)

    await asyncio.gather(*(worker(i) for i in range(5)))
    assert sorted(order) == list(range(5))


async def test_acquire_can_be_cancelled_while_waiting() -> None:
    limiter = RateLimiter(1, HOUR)
    assert limiter.try_acquire()
    task = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
