"""Child process: a checkpointed workflow that is killed in the middle of a state.

Usage: ``child_states.py crash|resume STORE JOURNAL [HANG_STATE]`` (one run, id
``order-7``) or ``child_states.py many-crash|many-resume STORE JOURNAL RUNS STATES``
(many concurrent runs on one store, killed at a random moment).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import random
import sys
from typing import Any

import cano
from child_common import Journal, ready, result


class S(enum.Enum):
    VALIDATE = enum.auto()
    RESERVE = enum.auto()
    CHARGE = enum.auto()
    EMAIL = enum.auto()
    DONE = enum.auto()


ORDER = [S.VALIDATE, S.RESERVE, S.CHARGE, S.EMAIL, S.DONE]


def one_run(mode: str, store: Any, journal: Journal, hang: str) -> None:
    def task(state: S, nxt: S) -> Any:
        async def run() -> S:
            journal.note("start", state.name)
            if state.name == hang:
                ready(state.name)
                await asyncio.Event().wait()  # killed here
            journal.note("end", state.name)
            return nxt

        return cano.task(name=f"do_{state.name.lower()}", config=cano.TaskConfig.minimal())(run)

    wf: cano.Workflow[S] = cano.Workflow(cano.Resources.empty(), name="orders")
    for state, nxt in itertools.pairwise(ORDER):
        wf.register(state, task(state, nxt))
    wf.add_exit_state(S.DONE).with_checkpoint_store(store).with_workflow_id("order-7")

    async def main() -> S:
        if mode == "crash":
            return await wf.orchestrate(S.VALIDATE)
        return await wf.resume_from("order-7")

    result(asyncio.run(main()).name)


def many_runs(
    mode: str, store: cano.RedbCheckpointStore, journal: Journal, runs: int, states: int
) -> None:
    chain = enum.Enum("Chain", [f"S{i}" for i in range(states)] + ["END"])  # type: ignore[misc]
    members: list[Any] = list(chain)
    end = members[-1]

    def workflow(run_id: str) -> cano.Workflow[Any]:
        def task(state: Any, nxt: Any) -> Any:
            async def run() -> Any:
                journal.note("start", run_id, state.name)
                await asyncio.sleep(0.001 + random.random() * 0.002)  # >= 1 ms a state
                return nxt

            return cano.task(name=state.name, config=cano.TaskConfig.minimal())(run)

        wf: cano.Workflow[Any] = cano.Workflow.bare()
        for state, nxt in itertools.pairwise(members):
            wf.register(state, task(state, nxt))
        return wf.add_exit_state(end).with_checkpoint_store(store).with_workflow_id(run_id)

    async def main() -> None:
        if mode == "many-crash":
            ids = [f"run-{i:03d}" for i in range(runs)]
            started = [asyncio.ensure_future(workflow(i).orchestrate(members[0])) for i in ids]
            await asyncio.sleep(0.02)
            ready("running")
            await asyncio.gather(*started)
            ready("finished")  # not killed in time: the parent reports it
            await asyncio.Event().wait()
        else:
            ids = await store.list_runs()
            ends = await asyncio.gather(*(workflow(i).resume_from(i) for i in ids))
            assert all(e is end for e in ends), ends
            result(f"resumed {len(ids)}")

    asyncio.run(main())


def main() -> None:
    mode, store_path, journal_path = sys.argv[1:4]
    journal = Journal(journal_path)
    store: Any = (
        cano.SqliteCheckpointStore(store_path)
        if store_path.endswith(".db")
        else cano.RedbCheckpointStore(store_path)
    )
    if mode.startswith("many"):
        many_runs(mode, store, journal, int(sys.argv[4]), int(sys.argv[5]))
    else:
        one_run(mode, store, journal, sys.argv[4] if len(sys.argv) > 4 else "")
    store.close()


if __name__ == "__main__":
    main()
