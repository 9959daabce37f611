"""Circuit breakers and rate limiters: thread-safe, Rust-backed, usable with or without a workflow.

A :class:`CircuitBreaker` stops calling a dependency that keeps failing::

    breaker = cano.CircuitBreaker(cano.CircuitPolicy(failure_threshold=3, reset_timeout=10.0))

    @breaker                        # sync or async functions
    async def fetch(url: str) -> bytes: ...

    try:
        await fetch("https://example.com")
    except cano.CircuitOpenError:
        ...                         # the breaker is open: fail fast, serve a fallback

    with breaker.try_acquire():     # by hand: an exception in the block records a failure
        call_the_dependency()

Rate limiters pace calls to a dependency that is up but has a quota::

    limiter = cano.RateLimiter(10, 1.0, burst=5)      # token bucket: 10/s, bursts of 15
    daily = cano.WindowedRateLimiter(10_000, 86_400)  # fixed window
    both = cano.MultiRateLimiter().with_tier("rate", limiter, 1).with_tier("day", daily, 1)

    if limiter.try_acquire():       # never waits
        ...
    await both.acquire()            # waits as long as the slowest tier needs

All of them can be shared by many workflows, threads and event loops. Semantics (epochs,
half-open probing, lazy refill) follow the Rust crate ``cano``.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

from cano._core import (
    CircuitBreaker,
    CircuitPermit,
    CircuitPolicy,
    GuardedCall,
    MultiRateLimiter,
    RateLimiter,
    WindowedRateLimiter,
)
from cano.errors import ConfigurationError, RateLimitedError

__all__ = [
    "CircuitBreaker",
    "CircuitPermit",
    "CircuitPolicy",
    "CircuitState",
    "GuardedCall",
    "MultiRateLimiter",
    "RateLimiter",
    "WindowedRateLimiter",
]


class CircuitState(enum.Enum):
    """The state of a :class:`CircuitBreaker` (``breaker.state``).

    - ``CLOSED``: calls flow; consecutive failures are counted.
    - ``OPEN``: calls are rejected with :class:`cano.CircuitOpenError`.
    - ``HALF_OPEN``: the reset timeout has passed; a few probe calls decide whether the
      breaker closes (all probes succeeded) or opens again (one failed).
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def _is_async(fn: object) -> bool:
    """True for ``async def`` functions and for objects whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isroutine(fn) or isinstance(fn, type) or not callable(fn):
        return False
    return inspect.iscoroutinefunction(type(fn).__call__)


def _guard(breaker: CircuitBreaker, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``breaker(fn)``: a sync :class:`GuardedCall`, or an ``async def`` wrapper."""
    if not callable(fn):
        raise TypeError(f"CircuitBreaker can only decorate a callable, got {fn!r}")
    if not _is_async(fn):
        return functools.update_wrapper(GuardedCall(breaker, fn), fn)

    @functools.wraps(fn)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        # Acquired when the call starts, not when the coroutine is created; cancellation
        # and timeouts leave the block with an exception and so count as failures.
        with breaker.try_acquire():
            return await fn(*args, **kwargs)

    return guarded


async def _acquire(limiter: RateLimiter | WindowedRateLimiter, cost: int) -> None:
    """The body of ``limiter.acquire(cost)``: sleep exactly as long as the limiter says."""
    while not limiter.try_acquire(cost):
        wait = limiter.time_until(cost)
        if math.isinf(wait):  # the cost exceeds the capacity; checked before, kept safe
            raise ConfigurationError(f"{limiter!r} can never grant a cost of {cost}")
        # Another caller may take the tokens first; then we simply wait again.
        await asyncio.sleep(wait)


async def _acquire_multi(limiter: MultiRateLimiter, cost: int) -> None:
    """The body of ``multi.acquire(cost)``: sleep each refusing tier's ``retry_after``."""
    while True:
        try:
            limiter.try_acquire(cost)
        except RateLimitedError as refused:
            wait = refused.retry_after
            if wait is None or math.isinf(wait):
                raise ConfigurationError(
                    f"tier {refused.tier!r} can never grant a cost of {cost}"
                ) from refused
            await asyncio.sleep(wait)
        else:
            return
