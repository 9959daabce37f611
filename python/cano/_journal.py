"""The checkpoint writes a stream task's driver makes between windows (the dispatcher's
own rows are written from Rust, in ``rust/bindings/src/run/journal.rs``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cano.store import CheckpointRow, RowKind

__all__ = ["commit_cursor", "nothing"]


async def nothing() -> None:
    """What a stream's commit does when the run has no checkpoint log."""


async def commit_cursor(
    append: Callable[..., Any],
    raw: bool,
    workflow_id: str,
    sequence: int,
    state: str,
    task: str,
    blob: bytes,
    version: int,
    on_durable: Callable[[int], None] | None,
) -> None:
    """Appends a stream cursor row through the store's ``append`` (or its raw fast path),
    waits until it is durable, then tells the observers."""
    if raw:
        await append(workflow_id, sequence, state, task, RowKind.STEP_CURSOR.value, blob, version)
    else:
        await append(
            CheckpointRow(workflow_id, sequence, state, task, RowKind.STEP_CURSOR, blob, version)
        )
    if on_durable is not None:
        on_durable(sequence)
