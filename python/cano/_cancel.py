"""Cancellation a library swallowed, honoured.

psycopg waits on its socket through ``asyncio.wait_for``. On Python 3.11 that returns the
result and drops the ``CancelledError`` when a cancellation lands just as the wait
completes (fixed in 3.12). The task stays marked as cancelling (``Task.cancelling()``) but
runs on, so a loop that is stopped by cancelling it would never stop. Such loops call
:func:`stop_if_cancelled` after each database call.
"""

from __future__ import annotations

import asyncio


def stop_if_cancelled() -> None:
    """Raises ``CancelledError`` if the current task was asked to stop and is still running."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
