"""Child process: a stream of durable appends and clears, killed at a random moment.

Usage: ``child_appends.py STORE JOURNAL WORKFLOWS ROWS``.

``WORKFLOWS`` concurrent writers share one ``RedbCheckpointStore(durability="immediate")``
(so their rows share group commits). Writer ``i`` owns workflow ``w{i}`` and loops over
rounds forever: it appends rows ``0..ROWS`` (state ``r{round}-s{seq}``), then clears the
run, then starts the next round at sequence 0. Every operation is awaited before the next
one starts, and is written to the journal only *after* its future completed:

- ``A w{i} {round} {seq}``: the append was acknowledged (durable);
- ``C w{i} {round}``: the clear was acknowledged.

Even writers use ``_append_raw`` (the dispatcher's path, with an output blob on odd
sequences), odd writers ``append(CheckpointRow)``. ``READY`` is printed once the store is
open and the writers are running.
"""

from __future__ import annotations

import asyncio
import sys

from cano.store import CheckpointRow, RedbCheckpointStore, RowKind
from child_common import Journal, ready


def blob(workflow_id: str, round_: int, seq: int) -> bytes | None:
    return f"{workflow_id}:{round_}:{seq}".encode() * 3 if seq % 2 else None


async def writer(store: RedbCheckpointStore, journal: Journal, i: int, rows: int) -> None:
    wid = f"w{i}"
    round_ = 0
    while True:
        for seq in range(rows):
            state = f"r{round_}-s{seq}"
            if i % 2 == 0:
                output = blob(wid, round_, seq)
                kind = 2 if output is not None else 0
                await store._append_raw(wid, seq, state, "task", kind, output, round_)
            else:
                row = CheckpointRow(wid, seq, state, "task", RowKind.STATE_ENTRY, None, round_)
                await store.append(row)
            journal.note("A", wid, round_, seq)
        await store.clear(wid)
        journal.note("C", wid, round_)
        round_ += 1


async def main(path: str, journal: Journal, workflows: int, rows: int) -> None:
    store = RedbCheckpointStore(path)
    tasks = [asyncio.create_task(writer(store, journal, i, rows)) for i in range(workflows)]
    await asyncio.sleep(0)
    ready()
    await asyncio.gather(*tasks)  # forever: the parent kills this process


if __name__ == "__main__":
    store_path, journal_path, n, k = sys.argv[1:5]
    asyncio.run(main(store_path, Journal(journal_path), int(n), int(k)))
