"""Child process: a cano Worker serving the "orders" workflow from a store: a SQLite file, a
``.redb`` file, or ``postgresql://…#SCHEMA``.

Usage: ``child_worker.py STORE JOURNAL WORKER_ID [--hang STATE] [--lease S] [--poll S]
[--concurrency N] [--sleep S]``. Each state's task notes ``start``/``end`` in the journal;
with ``--hang STATE`` this process prints ``READY <id> STATE`` on entering that state and
then sleeps ``--sleep`` seconds (default: for ever) before finishing it. Serves until
SIGTERM (``Worker.run``), then prints ``RESULT stopped``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import sys
import time
from typing import Any

import cano
from child_common import Journal, open_store, ready, result
from child_states import ORDER, S


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("journal")
    parser.add_argument("worker_id")
    parser.add_argument("--hang", default="")
    parser.add_argument("--sleep", type=float, default=None)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--poll", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    journal = Journal(args.journal)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)

    def task(state: S, nxt: S) -> Any:
        async def run() -> S:
            run_id = cano.current_run().workflow_id
            journal.note("start", run_id, state.name, f"{time.time():.6f}")
            if state.name == args.hang:
                ready(f"{run_id} {state.name}")
                if args.sleep is None:
                    await asyncio.Event().wait()  # killed or frozen here
                await asyncio.sleep(args.sleep)
            journal.note("end", run_id, state.name, f"{time.time():.6f}")
            return nxt

        return cano.task(name=f"do_{state.name.lower()}", config=cano.TaskConfig.minimal())(run)

    wf = cano.Workflow[S](cano.Resources.empty(), name="orders")
    for state, nxt in itertools.pairwise(ORDER):
        wf.register(state, task(state, nxt))
    wf.add_exit_state(S.DONE)

    async def serve() -> None:
        async with open_store(args.store) as store:
            worker = cano.Worker(
                store,
                [wf],
                concurrency=args.concurrency,
                lease=args.lease,
                poll_interval=args.poll,
                worker_id=args.worker_id,
            )
            ready(f"serving {args.worker_id}")
            await worker.run()

    asyncio.run(serve())
    result("stopped")


if __name__ == "__main__":
    main()
