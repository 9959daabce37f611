"""CircuitBreaker: trips, half-open probing, epochs, permits, decorators, threads."""

from __future__ import annotations

import asyncio
import enum
import functools
import gc
import inspect
import threading
import time
from datetime import timedelta
from typing import Any

import cano
import pytest
from cano import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitPermit,
    CircuitPolicy,
    CircuitState,
    ConfigurationError,
)

RESET = 0.05  # seconds; tests sleep a little longer than this to reach half-open


def breaker(threshold: int = 2, reset: float = RESET, probes: int = 1) -> CircuitBreaker:
    return CircuitBreaker(
        CircuitPolicy(failure_threshold=threshold, reset_timeout=reset, half_open_max_calls=probes)
    )


def fail(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        b.record_failure(b.try_acquire())


def wait_reset(b: CircuitBreaker) -> None:
    time.sleep(b.policy.reset_timeout * 1.2)


# --- policy ---------------------------------------------------------------------------------


def test_policy_defaults_and_attributes() -> None:
    p = CircuitPolicy()
    assert (p.failure_threshold, p.reset_timeout, p.half_open_max_calls) == (5, 30.0, 1)
    assert isinstance(p.reset_timeout, float)
    assert CircuitBreaker().policy == p
    custom = CircuitPolicy(3, timedelta(milliseconds=1500), 2)
    assert (custom.failure_threshold, custom.reset_timeout, custom.half_open_max_calls) == (
        3,
        1.5,
        2,
    )
    assert CircuitPolicy(reset_timeout=2) == CircuitPolicy(reset_timeout=2.0)
    assert hash(CircuitPolicy()) == hash(CircuitPolicy())
    assert "reset_timeout=1.5" in repr(custom)
    with pytest.raises(AttributeError):
        custom.failure_threshold = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"failure_threshold": -1},
        {"failure_threshold": 1.5},
        {"failure_threshold": True},
        {"half_open_max_calls": 0},
        {"half_open_max_calls": 2**31},
        {"half_open_max_calls": 2**64},
        {"reset_timeout": -1.0},
        {"reset_timeout": float("nan")},
        {"reset_timeout": "30s"},
    ],
)
def test_invalid_policies_raise_configuration_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        CircuitPolicy(**kwargs)
    assert next(iter(kwargs)) in str(info.value)


def test_largest_half_open_max_calls_is_accepted() -> None:
    assert CircuitPolicy(half_open_max_calls=2**31 - 1).half_open_max_calls == 2**31 - 1


# --- state machine --------------------------------------------------------------------------


def test_state_is_a_python_enum() -> None:
    assert issubclass(CircuitState, enum.Enum)
    assert [m.name for m in CircuitState] == ["CLOSED", "OPEN", "HALF_OPEN"]
    assert CircuitBreaker().state is CircuitState.CLOSED
    assert cano.resilience.CircuitState is CircuitState


def test_opens_after_threshold_consecutive_failures() -> None:
    b = breaker(threshold=3, reset=60)
    fail(b, 2)
    assert b.state is CircuitState.CLOSED
    assert b.consecutive_failures == 2
    fail(b, 1)
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError, match="circuit breaker open") as info:
        b.try_acquire()
    assert isinstance(info.value, cano.CanoError)
    assert "probe is allowed in" in str(info.value)


def test_success_resets_the_failure_count() -> None:
    b = breaker(threshold=2, reset=60)
    fail(b, 1)
    b.record_success(b.try_acquire())
    assert b.consecutive_failures == 0
    fail(b, 1)
    assert b.state is CircuitState.CLOSED


def test_half_open_after_reset_timeout_then_probe_success_closes() -> None:
    b = breaker(threshold=1)
    fail(b, 1)
    assert b.state is CircuitState.OPEN
    wait_reset(b)
    assert b.state is CircuitState.HALF_OPEN  # the lazy flip, seen by `state`
    probe = b.try_acquire()
    with pytest.raises(CircuitOpenError, match="half-open"):
        b.try_acquire()  # the single trial slot is taken
    b.record_success(probe)
    assert b.state is CircuitState.CLOSED
    b.record_success(b.try_acquire())


def test_probe_failure_reopens() -> None:
    b = breaker(threshold=1)
    fail(b, 1)
    wait_reset(b)
    b.record_failure(b.try_acquire())
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        b.try_acquire()


def test_several_probes_must_all_succeed() -> None:
    b = breaker(threshold=1, probes=2)
    fail(b, 1)
    wait_reset(b)
    first, second = b.try_acquire(), b.try_acquire()
    with pytest.raises(CircuitOpenError, match="2 trial slot"):
        b.try_acquire()
    b.record_success(first)
    assert b.state is CircuitState.HALF_OPEN
    b.record_success(second)
    assert b.state is CircuitState.CLOSED


def test_stale_epoch_outcomes_are_ignored() -> None:
    b = breaker(threshold=1)
    slow = b.try_acquire()  # issued while closed
    fail(b, 1)
    wait_reset(b)
    b.record_success(b.try_acquire())
    assert b.state is CircuitState.CLOSED
    # The slow call from the first closed session fails late: it cannot reopen the breaker.
    b.record_failure(slow)
    assert b.state is CircuitState.CLOSED
    assert b.consecutive_failures == 0


def test_stale_success_does_not_close_an_open_breaker() -> None:
    b = breaker(threshold=1, reset=60)
    slow = b.try_acquire()
    fail(b, 1)
    b.record_success(slow)
    assert b.state is CircuitState.OPEN


# --- permits --------------------------------------------------------------------------------


def test_dropped_permit_counts_as_failure() -> None:
    b = breaker(threshold=2, reset=60)
    permit = b.try_acquire()
    del permit
    gc.collect()
    assert b.consecutive_failures == 1
    b.try_acquire()  # discarded at once
    assert b.state is CircuitState.OPEN


def test_recording_twice_is_a_no_op() -> None:
    b = breaker(threshold=2, reset=60)
    permit = b.try_acquire()
    assert not permit.recorded
    b.record_failure(permit)
    b.record_failure(permit)
    b.record_success(permit)
    assert permit.recorded
    assert b.consecutive_failures == 1
    del permit
    gc.collect()
    assert b.consecutive_failures == 1  # a recorded permit is not counted again when freed


def test_permit_from_another_breaker_is_refused() -> None:
    a, b = breaker(), breaker()
    permit = a.try_acquire()
    with pytest.raises(ConfigurationError, match="another CircuitBreaker"):
        b.record_success(permit)
    a.record_success(permit)


def test_permit_as_context_manager() -> None:
    b = breaker(threshold=2, reset=60)
    with b.try_acquire() as permit:
        assert isinstance(permit, CircuitPermit)
    assert permit.recorded
    assert b.consecutive_failures == 0
    with pytest.raises(KeyError), b.try_acquire():
        raise KeyError("boom")
    assert b.consecutive_failures == 1
    with pytest.raises(KeyError), b.try_acquire():
        raise KeyError("boom")
    assert b.state is CircuitState.OPEN


# --- decorator ------------------------------------------------------------------------------


def test_decorated_sync_function() -> None:
    b = breaker(threshold=2, reset=60)
    calls: list[tuple[int, int]] = []

    @b
    def add(x: int, *, y: int = 1) -> int:
        """Adds."""
        calls.append((x, y))
        if x < 0:
            raise ValueError(x)
        return x + y

    assert add(2, y=3) == 5
    assert add.__name__ == "add"
    assert add.__doc__ == "Adds."
    assert inspect.signature(add) == inspect.signature(add.__wrapped__)  # type: ignore[attr-defined]
    for _ in range(2):
        with pytest.raises(ValueError):
            add(-1)
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError, match=r"rejecting call to .*add"):
        add(1)
    assert len(calls) == 3  # the rejected call never reached the function


def test_decorated_sync_function_recovers_after_reset() -> None:
    b = breaker(threshold=1)
    flaky = {"fail": True}

    @b
    def call() -> str:
        if flaky["fail"]:
            raise RuntimeError("down")
        return "ok"

    with pytest.raises(RuntimeError):
        call()
    with pytest.raises(CircuitOpenError):
        call()
    flaky["fail"] = False
    wait_reset(b)
    assert call() == "ok"
    assert b.state is CircuitState.CLOSED


def test_decorated_method_binds_self() -> None:
    b = breaker()

    class Client:
        def __init__(self) -> None:
            self.n = 0

        @b
        def hit(self, k: int) -> int:
            self.n += k
            return self.n

    c = Client()
    assert c.hit(2) == 2
    assert c.hit(k=3) == 5
    assert Client.hit(c, 1) == 6


async def test_decorated_async_function() -> None:
    b = breaker(threshold=2, reset=60)
    started = 0

    @b
    async def fetch(x: int) -> int:
        nonlocal started
        started += 1
        await asyncio.sleep(0)
        if x < 0:
            raise ValueError(x)
        return x * 2

    assert inspect.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch"
    assert await fetch(4) == 8
    for _ in range(2):
        with pytest.raises(ValueError):
            await fetch(-1)
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        await fetch(1)
    assert started == 3


async def test_cancelled_async_call_counts_as_failure() -> None:
    b = breaker(threshold=1, reset=60)

    @b
    async def slow() -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state is CircuitState.OPEN


async def test_async_callable_object_and_partial() -> None:
    b = breaker()

    class Handler:
        async def __call__(self, x: int) -> int:
            return x + 1

    async def mul(a: int, b: int) -> int:
        return a * b

    guarded_obj = b(Handler())
    guarded_partial = b(functools.partial(mul, 3))
    assert inspect.iscoroutinefunction(guarded_obj)
    assert await guarded_obj(1) == 2
    assert await guarded_partial(4) == 12


def test_decorating_a_non_callable_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        CircuitBreaker()(42)  # type: ignore[type-var]


# --- threads --------------------------------------------------------------------------------


def test_shared_across_threads_counts_every_failure() -> None:
    b = breaker(threshold=2**32 - 1, reset=60)
    n_threads, per_thread = 8, 2_000
    barrier = threading.Barrier(n_threads)

    def hammer() -> None:
        barrier.wait()
        for _ in range(per_thread):
            b.record_failure(b.try_acquire())

    threads = [threading.Thread(target=hammer) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.consecutive_failures == n_threads * per_thread
    assert b.state is CircuitState.CLOSED


def test_threads_calling_a_decorated_function_trip_it_once() -> None:
    b = breaker(threshold=50, reset=60)
    n_threads = 6
    barrier = threading.Barrier(n_threads)
    outcomes: list[tuple[int, int]] = []
    lock = threading.Lock()

    @b
    def boom() -> None:
        raise OSError("down")

    def hammer() -> None:
        failed = rejected = 0
        barrier.wait()
        for _ in range(200):
            try:
                boom()
            except OSError:
                failed += 1
            except CircuitOpenError:
                rejected += 1
        with lock:
            outcomes.append((failed, rejected))

    threads = [threading.Thread(target=hammer) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = sum(f for f, _ in outcomes)
    rejected = sum(r for _, r in outcomes)
    assert failed + rejected == n_threads * 200
    # At least the threshold got through; a few more may have been in flight at the trip.
    assert 50 <= failed <= 50 + n_threads
    assert b.state is CircuitState.OPEN
