"""Runs that finish by themselves: a queue, two worker processes, one of them killed.

``Client.enqueue`` stores runs as PENDING; a ``Worker`` serving the workflow by name claims
them, runs them under a lease it keeps renewing, and records what happened. Here a first
worker process is killed (SIGKILL) in the middle of a payment; a second worker notices that
the lease of that run has expired, takes the run over and resumes it from its log: the
states that finished are not run again, the payment that was in flight is. Afterwards the
run's record and step history say exactly that.

The same again on redb, whose file belongs to one process: the process is killed, started
again, and its worker takes the run over at once (no lease to wait out: leases live in the
process that holds the file); a Client in that process waits for the run to finish.

Run it with ``python examples/worker.py``; ``cano runs list --store <file>`` shows the same.
"""

from __future__ import annotations

import asyncio
import enum
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import cano


class Order(enum.Enum):
    RESERVE = enum.auto()
    PAY = enum.auto()
    SHIP = enum.auto()
    DONE = enum.auto()


def orders(journal: Path, *, die_in_payment: bool) -> cano.Workflow[Order]:
    """The workflow every worker serves, by its name ``"orders"``."""

    def note(text: str) -> None:
        with journal.open("a") as f:
            f.write(f"[pid {os.getpid()}] {cano.current_run().workflow_id}: {text}\n")

    async def reserve(res: cano.Resources[Any]) -> Order:
        note(f"reserved {cano.current_run().input['items']} items")
        return Order.PAY

    async def pay(res: cano.Resources[Any]) -> Order:
        note("charging the card...")
        if die_in_payment:
            os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
        note("charged")
        return Order.SHIP

    async def ship(res: cano.Resources[Any]) -> Order:
        note("shipped")
        return Order.DONE

    once = cano.TaskConfig.minimal()
    return (
        cano.Workflow[Order](cano.Resources.empty(), name="orders")
        .register(Order.RESERVE, cano.task(name="reserve", config=once)(reserve))
        .register(Order.PAY, cano.task(name="pay", config=once)(pay))
        .register(Order.SHIP, cano.task(name="ship", config=once)(ship))
        .add_exit_state(Order.DONE)
    )


def open_store(path: str | Path) -> Any:
    """SQLite for ``.db`` files (shared by processes), redb for ``.redb`` (one process)."""
    if str(path).endswith(".redb"):
        return cano.RedbCheckpointStore(path)
    return cano.SqliteCheckpointStore(path)


def serve(store_path: str, journal: str, die: bool) -> None:
    """A worker process: serves the store until it is stopped (or dies). On redb nobody else
    can open the file meanwhile, so it stops by itself once order-7 has finished."""

    async def run() -> None:
        async with open_store(store_path) as store:
            worker = cano.Worker(
                store, [orders(Path(journal), die_in_payment=die)], lease=2, poll_interval=0.2
            )
            if not store_path.endswith(".redb"):
                await worker.run()
                return
            async with worker:
                await cano.Client(store).wait("order-7", timeout=60)

    asyncio.run(run())


async def enqueue(store_path: Path) -> None:
    async with open_store(store_path) as store:
        info = await cano.Client(store).enqueue(
            "orders", Order.RESERVE, workflow_id="order-7", input={"items": 3}
        )
        print(f"enqueued {info.workflow_id}: {info.status.name}")


async def record(store_path: Path) -> cano.RunInfo | None:
    async with open_store(store_path) as store:
        return await cano.Client(store).get("order-7")


async def wait_and_report(store_path: Path) -> cano.RunInfo:
    async with open_store(store_path) as store:
        client = cano.Client(store)
        info = await client.wait("order-7", timeout=60)
        print(f"\nrecord: {info.status.name}, final state {info.final_state}", end="")
        print(f", {info.attempts} attempts")
        print("steps:")
        for step in await client.steps("order-7"):
            took = (step.finished_at - step.started_at).total_seconds() if step.finished_at else 0
            print(f"  #{step.sequence} {step.state:<8} {took * 1000:8.1f} ms")
        return info


def main(tmp: Path, store_name: str) -> None:
    store_path, journal = tmp / store_name, tmp / f"{store_name}.journal.txt"
    redb = store_name.endswith(".redb")
    print(f"\n=== {'redb: one process per file' if redb else 'SQLite: shared by processes'}")
    asyncio.run(enqueue(store_path))
    worker = [sys.executable, __file__, "--serve", str(store_path), str(journal)]

    print("worker 1 starts, and dies while charging the card")
    first = subprocess.run([*worker, "--die"], timeout=60, check=False)
    print(f"worker 1 exited with status {first.returncode} (negative: killed by a signal)")
    crashed = asyncio.run(record(store_path))
    assert crashed is not None
    print(f"the record says {crashed.status.name}, in state {crashed.state}, owner {crashed.owner}")

    if redb:
        print("the process starts again; its worker takes the run over at once")
        subprocess.run(worker, timeout=60, check=True)
        info = asyncio.run(wait_and_report(store_path))
    else:
        print("worker 2 starts; once worker 1's lease expires it takes the run over")
        second = subprocess.Popen(worker)
        try:
            info = asyncio.run(wait_and_report(store_path))
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=60)
    print("\nwhat each process did:")
    for line in journal.read_text().splitlines():
        print(f"  {line}")
    assert info.status is cano.RunStatus.COMPLETED and info.attempts == 2
    assert journal.read_text().count("reserved") == 1, "a finished state never runs twice"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], sys.argv[3], die="--die" in sys.argv)
    else:
        with tempfile.TemporaryDirectory() as directory:
            main(Path(directory), "runs.db")
            main(Path(directory), "runs.redb")
