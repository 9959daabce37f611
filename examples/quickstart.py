"""Quick start: an order pipeline with retries, a router, resources and an observer.

Run it with ``python examples/quickstart.py``.
"""

from __future__ import annotations

import asyncio
import enum
import random

import cano


class Order(enum.Enum):
    RESERVE = enum.auto()
    CHARGE = enum.auto()
    ROUTE = enum.auto()
    SHIP = enum.auto()
    REVIEW = enum.auto()
    DONE = enum.auto()


class Reserve(cano.Task[Order]):
    """Reserves stock; touches only the shared in-memory store."""

    async def run(self, res: cano.Resources) -> Order:
        store = res.get("store", cano.MemoryStore)
        store.put("reserved", ["book", "lamp"])
        return Order.CHARGE


class Charge(cano.Task[Order]):
    """Charges the card; the payment API is flaky, so retry it quickly."""

    def __init__(self) -> None:
        self.calls = 0

    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig().with_fixed_retry(3, 0.01).with_attempt_timeout(1.0)

    async def run(self, res: cano.Resources) -> Order:
        self.calls += 1
        if self.calls < 3:  # the first two calls fail, like a flaky network
            raise ConnectionError("payment gateway timed out")
        res.get("store", cano.MemoryStore).put("charged", 42.0)
        return Order.ROUTE


class Route(cano.RouterTask[Order]):
    """Big orders get a human review; routers are never checkpointed."""

    async def route(self, res: cano.Resources) -> Order:
        amount = res.get("store", cano.MemoryStore).get("charged")
        return Order.REVIEW if amount > 100 else Order.SHIP


@cano.task(config=cano.TaskConfig.minimal())
async def ship(res: cano.Resources) -> Order:
    await asyncio.sleep(random.uniform(0, 0.01))  # a real carrier API call would go here
    res.get("store", cano.MemoryStore).append("shipped", "parcel-1")
    return Order.DONE


async def review() -> Order:
    return Order.SHIP


class Printer(cano.WorkflowObserver):
    """Prints what the engine does."""

    def on_state_enter(self, state: str) -> None:
        print(f"  enter {state}")

    def on_retry(self, task_id: str, attempt: int) -> None:
        print(f"  retry {task_id} after failed attempt {attempt}")


def build() -> cano.Workflow[Order]:
    resources: cano.Resources = cano.Resources().insert("store", cano.MemoryStore())
    return (
        cano.Workflow[Order](resources)
        .register(Order.RESERVE, Reserve(), to=[Order.CHARGE])
        .register(Order.CHARGE, Charge(), to=[Order.ROUTE])
        .register_router(Order.ROUTE, Route(), to=[Order.SHIP, Order.REVIEW])
        .register(Order.SHIP, ship, to=[Order.DONE])
        .register(Order.REVIEW, review, to=[Order.SHIP])
        .add_exit_state(Order.DONE)
        .with_observer(Printer())
        .with_total_timeout(10)
    )


async def main() -> None:
    workflow = build()
    workflow.validate()
    print("running the order workflow:")
    final = await workflow.orchestrate(Order.RESERVE)
    store = workflow.resources.get("store", cano.MemoryStore)
    print(f"finished in {final.name}; shipped {store.get('shipped')}")
    print("\nthe graph, as Mermaid:\n" + workflow.to_mermaid())


if __name__ == "__main__":
    asyncio.run(main())
