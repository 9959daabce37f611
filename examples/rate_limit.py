"""Pacing calls to a quota-limited API: token bucket, fixed window, and both at once.

- ``RateLimiter(tokens, period, burst=...)``: a token bucket. It starts full (a burst goes
  through at once), then refills continuously at ``tokens / period``.
- ``WindowedRateLimiter(limit, window)``: at most ``limit`` per window (e.g. a daily quota).
- ``MultiRateLimiter``: several tiers charged together, all or nothing.

``try_acquire`` never waits (shed load); ``await acquire()`` sleeps exactly as long as the
limiter says (pace work). Limiters are thread-safe and shared by reference.
"""

from __future__ import annotations

import asyncio
import time

import cano


async def token_bucket() -> None:
    print("1. token bucket: 20 calls/s with bursts of up to 5 extra")
    limiter = cano.RateLimiter(20, 1.0, burst=5)
    admitted = sum(limiter.try_acquire() for _ in range(40))
    print(f"  try_acquire x40 at once: {admitted} admitted (the full bucket), the rest shed")
    print(f"  next token in {limiter.time_until() * 1000:.0f} ms")

    t0 = time.perf_counter()
    for _ in range(4):
        await limiter.acquire()  # waits for each refill instead of refusing
    print(f"  4 more with acquire(): paced over {(time.perf_counter() - t0) * 1000:.0f} ms")


async def fixed_window() -> None:
    print("2. fixed window: 3 calls per 200 ms window")
    window = cano.WindowedRateLimiter(3, 0.2)
    print(f"  a batch of cost 3: {window.try_acquire(3)}; one more: {window.try_acquire()}")
    print(f"  window resets in {window.time_until() * 1000:.0f} ms")
    await window.acquire()
    print(f"  acquired in the next window; used there: {window.used}/{window.limit}")


async def tiers() -> None:
    print("3. multi-tier: 10/s and 4 per second-long window; a call costs 1 on each")
    per_second = cano.RateLimiter.per_second(10)
    quota = cano.WindowedRateLimiter(4, 1.0)
    api = cano.MultiRateLimiter().with_tier("per_second", per_second, 1).with_tier("quota", quota)
    for i in range(6):
        try:
            api.try_acquire()
            print(f"  call {i}: admitted")
        except cano.RateLimitedError as err:
            # Nothing was charged: the per_second token taken before "quota" refused was
            # given back.
            print(f"  call {i}: refused by tier {err.tier!r}, retry after {err.retry_after:.2f} s")
    print(f"  per_second tokens left: {per_second.available:.0f} (refunds kept them)")

    try:
        await api.acquire(5)  # can never fit in a 4-per-window quota: refused at once
    except cano.ConfigurationError as err:
        print(f"  acquire(5): {err}")


async def main() -> None:
    await token_bucket()
    await fixed_window()
    await tiers()


if __name__ == "__main__":
    asyncio.run(main())
