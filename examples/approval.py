"""An order that waits for a person's approval, with a deadline.

The APPROVAL state is a ``WaitTask``: the run waits for the signal ``"approval"``. Under a
Worker, a waiting run is *parked* — WAITING in the store, holding no worker slot and no
lease — and wakes when the signal arrives or its deadline passes, whichever process sends
it and however many processes restart meanwhile. Here the approval is sent from the
command line (another process): ``cano runs signal order-7 approval --payload '{...}'``.
A second order is never approved, and its deadline takes it to REJECTED.

Run it with ``python examples/approval.py``.
"""

from __future__ import annotations

import asyncio
import enum
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import cano


class Order(enum.Enum):
    PLACE = enum.auto()
    APPROVAL = enum.auto()
    SHIP = enum.auto()
    SHIPPED = enum.auto()
    REJECTED = enum.auto()


class Approval(cano.WaitTask[Order]):
    """Waits for a manager: ``{"approved": bool, "by": name}``, for at most ``limit``."""

    signal = "approval"

    def __init__(self, limit: float) -> None:
        self.limit = limit

    def timeout(self) -> float:
        return self.limit  # recorded when the state is first entered: a restart keeps it

    async def on_signal(self, res: cano.Resources[Any], payload: Any) -> Order:
        print(f"  {cano.current_run().workflow_id}: answered by {payload['by']}")
        return Order.SHIP if payload["approved"] else Order.REJECTED

    async def on_timeout(self, res: cano.Resources[Any]) -> Order:
        print(f"  {cano.current_run().workflow_id}: nobody answered in time")
        return Order.REJECTED


def orders(limit: float) -> cano.Workflow[Order]:
    async def place() -> Order:
        return Order.APPROVAL

    async def ship() -> Order:
        return Order.SHIPPED

    once = cano.TaskConfig.minimal()
    return (
        cano.Workflow[Order](cano.Resources.empty(), name="orders")
        .register(Order.PLACE, cano.task(name="place", config=once)(place))
        .register_wait(Order.APPROVAL, Approval(limit), to=[Order.SHIP, Order.REJECTED])
        .register(Order.SHIP, cano.task(name="ship", config=once)(ship))
        .add_exit_state(Order.SHIPPED)
        .add_exit_state(Order.REJECTED)
    )


def cli(*args: str) -> str:
    """``cano …`` in another process, as a person at a terminal would run it."""
    done = subprocess.run(
        [sys.executable, "-m", "cano", *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


async def main(path: Path) -> None:
    async with cano.SqliteCheckpointStore(path) as store:
        client = cano.Client(store)
        await client.enqueue("orders", Order.PLACE, workflow_id="order-7")
        await client.enqueue("orders", Order.PLACE, workflow_id="order-8")
        async with cano.Worker(store, [orders(limit=2.0)], concurrency=1, poll_interval=0.2):
            for _ in range(600):  # until both wait (a few hundred ms)
                if len(await client.list(status=cano.RunStatus.WAITING)) == 2:
                    break
                await asyncio.sleep(0.05)
            info = await client.get("order-7")
            assert info is not None
            print(f"order-7 is {info.status.name} in {info.state} for {info.waiting_for!r};")
            print("  the worker (one slot) holds neither order while they wait")
            payload = json.dumps({"approved": True, "by": "ana"})
            print("$ cano runs signal order-7 approval --payload", repr(payload))
            print(" ", cli("runs", "signal", "order-7", "approval", "--payload", payload,
                           "--store", str(path)))  # fmt: skip
            seven = await client.wait("order-7", timeout=30)
            eight = await client.wait("order-8", timeout=30)
    print(f"order-7: {seven.status.name} in {seven.final_state}")
    print(f"order-8: {eight.status.name} in {eight.final_state} (its deadline passed)")
    assert (seven.final_state, eight.final_state) == ("SHIPPED", "REJECTED")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp) / "orders.db"))
