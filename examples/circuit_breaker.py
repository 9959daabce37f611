"""A circuit breaker in front of a flaky dependency: trip, fail fast, probe, recover.

The breaker counts consecutive failures. At ``failure_threshold`` it opens and rejects
calls at once with ``cano.CircuitOpenError`` (the dependency gets a rest and callers a fast
answer). After ``reset_timeout`` it lets one probe through: success closes it again, failure
reopens it. One breaker is shared by every caller of the same dependency, across tasks and
threads.
"""

from __future__ import annotations

import asyncio

import cano


class FlakyService:
    """Stands in for a remote API that is down for a while."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    def get(self, key: str) -> str:
        self.calls += 1
        if self.down:
            raise ConnectionError(f"service unavailable for {key!r}")
        return f"value of {key}"


service = FlakyService()

# Three consecutive failures open the breaker; after 100 ms it admits one probe.
breaker = cano.CircuitBreaker(cano.CircuitPolicy(failure_threshold=3, reset_timeout=0.1))


@breaker
def lookup(key: str) -> str:
    """A sync function guarded by the breaker (the decorator keeps name and signature)."""
    return service.get(key)


@breaker
async def lookup_async(key: str) -> str:
    """An async function guarded by the same breaker."""
    await asyncio.sleep(0)
    return service.get(key)


def try_lookup(key: str) -> None:
    try:
        print(f"  {lookup(key)}")
    except ConnectionError as err:
        print(f"  failed: {err}  (breaker {breaker.state.name})")
    except cano.CircuitOpenError as err:
        print(f"  rejected without calling the service: {err}")


async def main() -> None:
    print("1. the service is down: three failures trip the breaker")
    for key in ("a", "b", "c", "d"):
        try_lookup(key)
    print(f"   service was called {service.calls} times for 4 lookups")

    print("2. after reset_timeout the breaker is half-open; the probe succeeds and closes it")
    await asyncio.sleep(breaker.policy.reset_timeout)
    print(f"   state: {breaker.state.name}")
    service.down = False
    print(f"  {await lookup_async('e')}")
    print(f"   state: {breaker.state.name}")

    print("3. guarding a block by hand with a permit (an exception records a failure)")
    with breaker.try_acquire():
        print(f"  {service.get('f')}")
    permit = breaker.try_acquire()
    try:
        value = service.get("g")
    except ConnectionError:
        breaker.record_failure(permit)
        raise
    breaker.record_success(permit)
    print(f"  {value}; consecutive failures: {breaker.consecutive_failures}")


if __name__ == "__main__":
    asyncio.run(main())
