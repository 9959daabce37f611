"""Watching and operating runs in a browser: ``cano ui``, served by a worker.

A redb file belongs to one process, so the worker that holds it serves the page itself:
``Worker(store, flows, ui=8765)``. (For a SQLite file or PostgreSQL, run ``cano ui --store
… --app examples.ui:flows`` from any process instead.) This script enqueues three orders —
one ships, one fails, one waits for a person's approval — then does what a script would do
with the page's JSON API: lists the runs, reads a failed run's steps, and approves the
waiting order. With ``--serve`` it keeps the page open until Ctrl-C.

Needs the ui extra: ``pip install 'cano[ui]'``. Run it with ``python examples/ui.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import cano


class Order(enum.Enum):
    CHECK = enum.auto()
    APPROVAL = enum.auto()
    SHIPPED = enum.auto()
    REJECTED = enum.auto()


class Approval(cano.WaitTask[Order]):
    signal = "approval"

    async def on_signal(self, res: cano.Resources[Any], payload: Any) -> Order:
        return Order.SHIPPED if payload.get("approved") else Order.REJECTED


def orders() -> cano.Workflow[Order]:
    async def check() -> Order:
        order = cano.current_run().input
        if order["kg"] < 0:
            raise ValueError(f"order {order['id']} weighs {order['kg']} kg")
        return Order.APPROVAL if order["kg"] > 20 else Order.SHIPPED

    once = cano.TaskConfig.minimal()
    return (
        cano.Workflow[Order](cano.Resources.empty(), name="orders")
        .register(Order.CHECK, cano.task(name="check", config=once)(check))
        .register_wait(Order.APPROVAL, Approval(), to=[Order.SHIPPED, Order.REJECTED])
        .add_exit_states([Order.SHIPPED, Order.REJECTED])
    )


flows = [orders()]


def call(url: str, body: Any = None) -> Any:
    """The page's JSON API, as a script uses it (actions are POSTs of JSON)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


async def main(serve: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with cano.RedbCheckpointStore(Path(tmp) / "orders.redb") as store:
            client = cano.Client(store)
            port = 8765 if serve else 0  # 0: any free port
            async with cano.Worker(store, flows, poll_interval=0.1, ui=port) as worker:
                url = worker.ui_url
                assert url is not None
                print(f"cano ui at {url}")
                for number, kg in ((1, 3), (2, -1), (3, 40)):
                    order = {"id": number, "kg": kg}
                    await client.enqueue(
                        "orders", Order.CHECK, workflow_id=f"order-{number}", input=order
                    )
                for run_id in ("order-1", "order-2"):
                    await client.wait(run_id, timeout=10)
                for _ in range(200):  # order-3 parks in APPROVAL: WAITING, no slot held
                    info = await client.get("order-3")
                    if info is not None and info.status is cano.RunStatus.WAITING:
                        break
                    await asyncio.sleep(0.05)

                runs = await asyncio.to_thread(call, url + "api/runs")
                for run in runs:
                    error = f"  {run['error_type']}: {run['error']}" if run["error"] else ""
                    print(f"  {run['workflow_id']}  {run['status']:<9} {run['state']}{error}")
                steps = await asyncio.to_thread(call, url + "api/runs/order-2/steps")
                print("  order-2 steps:", [step["state"] for step in steps])

                approval = {"name": "approval", "payload": {"approved": True}}
                await asyncio.to_thread(call, url + "api/runs/order-3/signal", approval)
                done = await client.wait("order-3", timeout=10)
                print(f"  order-3 approved from the API: {done.status.name} in {done.final_state}")
                assert done.final_state == "SHIPPED"

                if serve:
                    print(f"open {url} (Ctrl-C stops)")
                    await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(serve="--serve" in sys.argv))
