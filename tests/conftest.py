"""Shared fixtures: the checkpoint stores every recovery test runs against."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cano
import pytest
from cano.store import (
    CheckpointRow,
    InMemoryCheckpointStore,
    RedbCheckpointStore,
    conflict_message,
)


class DictStore:
    """A checkpoint store in ten lines: a dict keyed by (workflow id, sequence)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], CheckpointRow] = {}

    async def append(self, row: CheckpointRow) -> None:
        key = (row.workflow_id, row.sequence)
        if key in self.rows:
            raise cano.CheckpointError(conflict_message(*key))
        self.rows[key] = row

    async def load_run(self, workflow_id: str) -> list[CheckpointRow]:
        return sorted(
            (r for r in self.rows.values() if r.workflow_id == workflow_id),
            key=lambda r: r.sequence,
        )

    async def clear(self, workflow_id: str) -> None:
        self.rows = {k: r for k, r in self.rows.items() if k[0] != workflow_id}

    async def list_runs(self) -> list[str]:
        return sorted({wid for wid, _ in self.rows})


@pytest.fixture(params=["redb", "sqlite", "memory", "dict"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Each durable store of cano, plus the smallest one a user could write."""
    if request.param == "redb":
        redb = RedbCheckpointStore(tmp_path / "checkpoints.redb")
        yield redb
        redb.close()
    elif request.param == "sqlite":
        sqlite = cano.SqliteCheckpointStore(tmp_path / "checkpoints.db")
        yield sqlite
        sqlite.close()
    elif request.param == "memory":
        yield InMemoryCheckpointStore()
    else:
        yield DictStore()
