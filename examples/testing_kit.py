"""Testing a workflow with cano.testing: record the path, inject failures, check sagas.

Run it with ``python examples/testing_kit.py`` (or put the functions in a pytest file:
they are ordinary test functions).
"""

from __future__ import annotations

import asyncio
import enum

import cano
from cano.testing import (
    RecordingObserver,
    TestResources,
    assert_compensation_ran,
    panic_on_attempt,
)

# Fixed, zero-delay retries keep tests fast; production code would keep the default backoff.
FAST_RETRIES = cano.TaskConfig().with_fixed_retry(3, 0)


class Order(enum.Enum):
    RESERVE = enum.auto()
    CHARGE = enum.auto()
    SHIP = enum.auto()
    DONE = enum.auto()


class Reserve(cano.CompensatableTask[Order, str]):
    """Reserves stock; compensate() releases it and notes that in the shared store."""

    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig.minimal()

    async def run(self, res: cano.Resources) -> tuple[Order, str]:
        return Order.CHARGE, "reservation-1"

    async def compensate(self, res: cano.Resources, output: str) -> None:
        res.get("store", cano.MemoryStore).append("undone", f"release {output}")


def order_workflow(
    res: cano.Resources, charge: cano.Task[Order], ship: cano.Task[Order]
) -> cano.Workflow[Order]:
    return (
        cano.Workflow(res)
        .register_with_compensation(Order.RESERVE, Reserve())
        .register(Order.CHARGE, charge)
        .register(Order.SHIP, ship)
        .add_exit_state(Order.DONE)
    )


async def test_a_flaky_charge_is_retried() -> None:
    charge = panic_on_attempt(2, Order.SHIP).with_config(FAST_RETRIES)  # fails twice
    ship = panic_on_attempt(0, Order.DONE)  # never fails
    rec = RecordingObserver()
    wf = order_workflow(TestResources().with_store().build(), charge, ship).with_observer(rec)

    assert await wf.orchestrate(Order.RESERVE) is Order.DONE

    rec.assert_path([Order.RESERVE, Order.CHARGE, Order.SHIP, Order.DONE])
    rec.assert_completed_with(Order.DONE)
    assert charge.attempts == 3
    assert rec.events_named("on_retry") == [("PanicOnAttempt", 1), ("PanicOnAttempt", 2)]


async def test_a_failed_shipment_releases_the_stock() -> None:
    charge = panic_on_attempt(0, Order.SHIP)
    ship = panic_on_attempt(1, Order.DONE).with_config(cano.TaskConfig.minimal())
    res = TestResources().with_store().build()
    rec = RecordingObserver()
    wf = order_workflow(res, charge, ship).with_observer(rec)

    try:
        await wf.orchestrate(Order.RESERVE)
    except cano.TaskError as err:
        assert isinstance(err.__cause__, RuntimeError)  # what panic_on_attempt raises
    else:
        raise AssertionError("the run should have failed")

    rec.assert_path([Order.RESERVE, Order.CHARGE, Order.SHIP])
    undone = res.get("store", cano.MemoryStore).get("undone")
    assert_compensation_ran(undone, ["release reservation-1"])


async def main() -> None:
    for test in (test_a_flaky_charge_is_retried, test_a_failed_shipment_releases_the_stock):
        await test()
        print(f"ok  {test.__name__}")

    # What a failing assertion looks like:
    try:
        assert_compensation_ran(["release b", "release a"], ["release a", "release b"])
    except AssertionError as err:
        print(f"\nassert_compensation_ran reports:\n{err}")


if __name__ == "__main__":
    asyncio.run(main())
