"""Crash recovery: a checkpointed workflow is killed mid-run, and a new process resumes it.

With a checkpoint store and a workflow id, the engine writes a row to the store *before*
each state's task runs, and a stepped task's cursor after every step. If the process dies,
``resume_from(workflow_id)`` in another process re-runs the state the log ends in (its task
must be idempotent) and never the states before it; a stepped task continues from its last
persisted cursor. The log is cleared when the run reaches an exit state.

This script starts itself as a child process that imports a catalogue page by page and
kills itself with SIGKILL halfway through, then resumes the run here, from the same redb
file. Run it with ``python examples/durable.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import cano

WORKFLOW_ID = "catalogue-import-42"
PAGES = 6
CRASH_AT_PAGE = 4  # the child dies while importing this page


class Import(enum.Enum):
    FETCH_MANIFEST = enum.auto()
    IMPORT_PAGES = enum.auto()
    PUBLISH = enum.auto()
    DONE = enum.auto()


@dataclasses.dataclass(frozen=True)
class PageCursor:
    """Where the import stands; persisted as JSON after every page (a dataclass works)."""

    next_page: int
    imported: int


class Journal:
    """The side effects, one line each in a file, so both processes' work can be shown."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def note(self, text: str) -> None:
        with self.path.open("a") as f:
            f.write(f"[pid {os.getpid()}] {text}\n")

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []


class ImportPages(cano.SteppedTask[Import, PageCursor]):
    """One page per step. ``cursor_type`` rebuilds the dataclass on resume."""

    cursor_type = PageCursor

    def __init__(self, journal: Journal, crash: bool) -> None:
        self.journal = journal
        self.crash = crash

    async def step(
        self, res: cano.Resources[Any], cursor: PageCursor | None
    ) -> cano.More[PageCursor] | cano.Done[Import]:
        at = cursor or PageCursor(next_page=1, imported=0)
        if at.next_page > PAGES:
            return cano.Done(Import.PUBLISH)
        if self.crash and at.next_page == CRASH_AT_PAGE:
            self.journal.note(f"importing page {at.next_page}... and the process dies")
            os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
        self.journal.note(f"imported page {at.next_page}")
        return cano.More(PageCursor(at.next_page + 1, at.imported + 25))


def build(store: cano.RedbCheckpointStore, journal: Journal, crash: bool) -> cano.Workflow[Import]:
    async def fetch_manifest() -> Import:
        journal.note("fetched the manifest")
        return Import.IMPORT_PAGES

    async def publish() -> Import:
        journal.note("published the catalogue")
        return Import.DONE

    wf: cano.Workflow[Import] = cano.Workflow.bare()
    wf.register(Import.FETCH_MANIFEST, fetch_manifest)
    wf.register_stepped(Import.IMPORT_PAGES, ImportPages(journal, crash))
    wf.register(Import.PUBLISH, publish)
    wf.add_exit_state(Import.DONE)
    return wf.with_checkpoint_store(store).with_workflow_id(WORKFLOW_ID)


def child(store_path: str, journal_path: str) -> None:
    """The first process: runs the workflow until it kills itself."""
    with cano.RedbCheckpointStore(store_path) as store:
        wf = build(store, Journal(Path(journal_path)), crash=True)
        asyncio.run(wf.orchestrate(Import.FETCH_MANIFEST))
    raise SystemExit("unreachable: the child should have died mid-import")


async def inspect_and_resume(store_path: Path, journal: Journal) -> Import:
    with cano.RedbCheckpointStore(store_path) as store:
        print("\nthe checkpoint log the dead process left behind:")
        for row in await store.load_run(WORKFLOW_ID):
            output = "" if row.output is None else f" {row.output.decode()}"
            print(f"  #{row.sequence} {row.kind.name:<12} {row.state:<15}{output}")

        print("\nresuming in this process...")
        wf = build(store, journal, crash=False)
        final = await wf.resume_from(WORKFLOW_ID)
        assert await store.load_run(WORKFLOW_ID) == [], "the log is cleared on success"
        return final


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3])
        return

    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "checkpoints.redb"
        journal = Journal(Path(tmp) / "journal.txt")
        print(f"starting the import in a child process (it dies at page {CRASH_AT_PAGE})...")
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(store_path), str(journal.path)],
            timeout=60,
            check=False,
        )
        print(f"child exited with status {proc.returncode} (negative: killed by a signal)")
        assert proc.returncode != 0

        final = asyncio.run(inspect_and_resume(store_path, journal))
        print(f"finished in state {final.name}\n\nwhat each process did:")
        lines = journal.lines()
        for line in lines:
            print(f"  {line}")

        mine = f"[pid {os.getpid()}]"
        resumed = [line for line in lines if line.startswith(mine)]
        assert final is Import.DONE
        assert not any("manifest" in line for line in resumed), "earlier states never re-run"
        assert f"imported page {CRASH_AT_PAGE}" in resumed[0], "the import went on from page 4"
        assert sum("imported page" in line for line in lines) == PAGES
        print("\nthe manifest was fetched once; pages 1-3 were not imported again.")


if __name__ == "__main__":
    main()
