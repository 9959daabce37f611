"""The checkpoint writes a stream task's driver makes between windows (the dispatcher's
own rows are written from Rust, in ``rust/bindings/src/run/journal.rs``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cano.store import CheckpointRow, RowKind

__all__ = ["clear_in_background", "commit_cursor", "nothing"]

_log = logging.getLogger("cano")
_BACKGROUND: set[asyncio.Future[Any]] = set()


def clear_in_background(
    clear: Callable[..., Awaitable[None]], workflow_id: str, *args: object
) -> None:
    """Clears a finished run's log without anybody awaiting it (the run's own clear was
    interrupted by a cancellation that came too late to change its outcome): calls
    ``clear(workflow_id, *args)`` — ``store.clear``, or ``store.run_ended`` with the record."""
    try:
        future = asyncio.ensure_future(clear(workflow_id, *args))
    except Exception:
        _log.warning("cannot clear the checkpoint log of %r", workflow_id, exc_info=True)
        return
    _BACKGROUND.add(future)

    def done(f: asyncio.Future[Any]) -> None:
        _BACKGROUND.discard(f)
        if not f.cancelled() and f.exception() is not None:
            _log.warning(
                "cannot clear the checkpoint log of %r", workflow_id, exc_info=f.exception()
            )

    future.add_done_callback(done)


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
