"""Child process: a cano Worker serving the "orders" workflow from a store: a SQLite file, a
``.redb`` file, or ``postgresql://…#SCHEMA``.

Usage: ``child_worker.py STORE JOURNAL WORKER_ID [--hang STATE] [--lease S] [--poll S]
[--concurrency N] [--sleep S] [--saga] [--fail] [--wait STATE] [--note-cancel]``. Each
state's task notes ``start``/``end`` in the journal (and, with ``--note-cancel``,
``cancelled`` when it is cancelled); with ``--hang STATE`` this process prints ``READY <id>
STATE`` on entering that state and then sleeps ``--sleep`` seconds (default: for ever)
before finishing it. ``--saga`` makes RESERVE a saga step whose compensation notes
``undo``; ``--fail`` makes the hanging state raise after its sleep (a failure that
compensates the saga). ``--wait STATE`` makes STATE a wait state for signal ``go``: its
``on_signal`` notes ``signalled`` with the payload's ``n`` (and, with ``--hang STATE``,
prints READY and hangs there, after the signal was consumed). Serves until
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
    parser.add_argument("--saga", action="store_true")
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--wait", default="")
    parser.add_argument("--note-cancel", action="store_true")
    args = parser.parse_args()
    journal = Journal(args.journal)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)

    def task(state: S, nxt: S) -> Any:
        async def run() -> S:
            run_id = cano.current_run().workflow_id
            journal.note("start", run_id, state.name, f"{time.time():.6f}")
            if state.name == args.hang:
                ready(f"{run_id} {state.name}")
                try:
                    if args.sleep is None:
                        await asyncio.Event().wait()  # killed, frozen or cancelled here
                    await asyncio.sleep(args.sleep)
                except asyncio.CancelledError:
                    if args.note_cancel:
                        journal.note("cancelled", run_id, state.name, f"{time.time():.6f}")
                    raise
                if args.fail:
                    journal.note("fail", run_id, state.name, f"{time.time():.6f}")
                    raise RuntimeError(f"{state.name} failed")
            journal.note("end", run_id, state.name, f"{time.time():.6f}")
            return nxt

        return cano.task(name=f"do_{state.name.lower()}", config=cano.TaskConfig.minimal())(run)

    class Hold(cano.CompensatableTask[S, dict[str, str]]):
        """RESERVE as a saga step: its compensation notes ``undo``."""

        def name(self) -> str:
            return "do_reserve"

        def config(self) -> cano.TaskConfig:
            return cano.TaskConfig.minimal()

        async def run(self, res: cano.Resources[Any]) -> tuple[S, dict[str, str]]:
            nxt = await task(S.RESERVE, S.CHARGE).run(res)
            return nxt, {"run": cano.current_run().workflow_id}

        async def compensate(self, res: cano.Resources[Any], output: dict[str, str]) -> None:
            journal.note("undo", output["run"], "RESERVE", f"{time.time():.6f}")

    class Go(cano.WaitTask[S]):
        """A wait state for signal ``go``."""

        signal = "go"

        def __init__(self, state: S, nxt: S) -> None:
            self.state, self.nxt = state, nxt

        async def on_signal(self, res: cano.Resources[Any], payload: Any) -> S:
            run_id = cano.current_run().workflow_id
            journal.note("signalled", run_id, self.state.name, payload["n"])
            if self.state.name == args.hang:
                ready(f"{run_id} {self.state.name}")
                await asyncio.Event().wait()  # killed here, the signal consumed
            return self.nxt

    wf = cano.Workflow[S](cano.Resources.empty(), name="orders")
    for state, nxt in itertools.pairwise(ORDER):
        if state.name == args.wait:
            wf.register_wait(state, Go(state, nxt))
        elif args.saga and state is S.RESERVE:
            wf.register_with_compensation(state, Hold())
        else:
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
