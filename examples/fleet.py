"""A fleet on PostgreSQL: a client enqueues orders, two worker processes serve them, and one
of the workers is killed (SIGKILL) halfway. The other one takes its runs over once their
leases expire and finishes them from their logs; every finished state ran once.

Needs a PostgreSQL server and ``pip install 'cano[postgres]'``::

    python examples/fleet.py postgresql://postgres@127.0.0.1:5432/postgres

(or set ``CANO_PG_DSN``). It works in a schema of its own and drops it at the end.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cano


class Order(enum.Enum):
    RESERVE = enum.auto()
    PAY = enum.auto()
    SHIP = enum.auto()
    DONE = enum.auto()


def orders(journal: Path) -> cano.Workflow[Order]:
    """What every worker serves, by the name ``"orders"``: each step notes what it did."""

    def step(name: str, nxt: Order) -> Any:
        async def run(res: cano.Resources[Any]) -> Order:
            await asyncio.sleep(0.05)  # the work
            with journal.open("a") as f:
                f.write(f"{os.getpid()} {cano.current_run().workflow_id} {name}\n")
            return nxt

        return cano.task(name=name, config=cano.TaskConfig.minimal())(run)

    return (
        cano.Workflow[Order](cano.Resources.empty(), name="orders")
        .register(Order.RESERVE, step("reserve", Order.PAY))
        .register(Order.PAY, step("pay", Order.SHIP))
        .register(Order.SHIP, step("ship", Order.DONE))
        .add_exit_state(Order.DONE)
    )


def store(dsn: str, schema: str) -> Any:
    from cano.stores.postgres import PostgresCheckpointStore

    return PostgresCheckpointStore(dsn, schema=schema)


def serve(dsn: str, schema: str, journal: str) -> None:
    """One worker process: serves until SIGTERM (or SIGKILL)."""

    async def run() -> None:
        async with store(dsn, schema) as s:
            # lease: how long a run stays owned without a renewal — after a crash, how long
            # until another worker takes it over. poll_interval: renewals and the polling
            # safety net (a NOTIFY wakes workers at once when a run is enqueued).
            worker = cano.Worker(s, [orders(Path(journal))], concurrency=4, lease=2)
            print("serving", flush=True)
            await worker.run()

    asyncio.run(run())


async def client(dsn: str, schema: str, ids: list[str]) -> None:
    async with store(dsn, schema) as s:
        c = cano.Client(s)
        for run_id in ids:
            await c.enqueue("orders", Order.RESERVE, workflow_id=run_id)
        if ids:
            print(f"enqueued {len(ids)} orders")


async def report(dsn: str, schema: str, ids: list[str]) -> list[cano.RunInfo]:
    async with store(dsn, schema) as s:
        c = cano.Client(s)
        return [await c.wait(run_id, timeout=120) for run_id in ids]


async def drop(dsn: str, schema: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main(dsn: str) -> None:
    schema = f"cano_example_{os.getpid()}"
    ids = [f"order-{i}" for i in range(12)]
    with tempfile.TemporaryDirectory() as tmp:
        journal = Path(tmp) / "journal.txt"
        command = [sys.executable, __file__, "--serve", dsn, schema, str(journal)]
        asyncio.run(client(dsn, schema, []))  # creates the schema before the workers start
        workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in "ab"]
        try:
            for w in workers:
                assert w.stdout is not None and w.stdout.readline() == "serving\n"
            asyncio.run(client(dsn, schema, ids))
            victim = str(workers[0].pid)
            while victim not in (journal.read_text() if journal.exists() else ""):
                time.sleep(0.01)  # until the first worker is busy with its runs
            workers[0].kill()  # SIGKILL: its runs are in flight
            workers[0].wait()
            print(f"worker {workers[0].pid} killed; worker {workers[1].pid} will take over")
            infos = asyncio.run(report(dsn, schema, ids))
        finally:
            for w in workers[1:]:
                w.send_signal(signal.SIGTERM)
                w.wait(timeout=60)
            asyncio.run(drop(dsn, schema))
        lines = journal.read_text().split("\n")[:-1]
    done = collections.Counter(tuple(line.split()[1:]) for line in lines)
    by_pid = collections.Counter(line.split()[0] for line in lines)
    print(f"steps done per process: {dict(by_pid)}")
    retried = sorted(f"{run} {step}" for (run, step), n in done.items() if n > 1)
    print(f"ran twice (in flight at the kill; keep such steps idempotent): {retried}")
    print({i.status.name for i in infos}, f"attempts: {sorted({i.attempts for i in infos})}")
    assert all(i.status is cano.RunStatus.COMPLETED for i in infos)
    assert len(retried) <= 4, "at most one step per run the killed worker held"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(*sys.argv[2:5])
    else:
        target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CANO_PG_DSN")
        if not target:
            print("usage: python examples/fleet.py postgresql://USER@HOST:PORT/DB")
            print("(or set CANO_PG_DSN); needs pip install 'cano[postgres]'")
        else:
            main(target)
