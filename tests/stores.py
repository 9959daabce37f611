"""Test doubles shared by the store suites."""

from __future__ import annotations

import cano
from cano.store import CheckpointRow, conflict_message

__all__ = ["DictStore"]


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
