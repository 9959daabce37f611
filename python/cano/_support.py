"""Cold-path helpers the Rust dispatcher calls: explaining unexpected return values,
formatting split failures, encoding cursors and outputs, the saga drain, stream commits.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from cano import _codec, _saga
from cano._registration import state_label
from cano.split import SplitResult
from cano.store import CheckpointRow, RowKind
from cano.tasks import TaskResult

__all__ = ["_Support"]


class _Support:
    """Cold-path helpers the dispatcher calls when a task returns something unexpected."""

    def __init__(
        self,
        state_types: frozenset[type],
        compensators: dict[str, tuple[Any, float | None]],
    ) -> None:
        self._state_types = state_types
        self._compensators = compensators

    @staticmethod
    def split_result(
        successes: list[tuple[int, Any]],
        errors: list[tuple[int, BaseException]],
        cancelled: list[int],
    ) -> SplitResult:
        """The SplitResult handed to the join state's task."""
        return SplitResult(successes, errors, cancelled)

    @staticmethod
    def split_message(
        state: str,
        strategy: str,
        total: int,
        succeeded: int,
        errors: list[tuple[int, BaseException]],
        timed_out: bool,
        timeout: float | None,
    ) -> str:
        """The message of a failed split: the counts and up to three branch errors."""
        if timed_out and strategy == "JoinStrategy.PARTIAL_TIMEOUT":
            head = f"split in state {state}: no branch finished before the {timeout}s timeout"
        elif timed_out:
            head = (
                f"split in state {state} timed out after {timeout}s: {succeeded} of {total} "
                f"branches succeeded, strategy {strategy}"
            )
        else:
            head = (
                f"split in state {state}: join condition not met: {succeeded} of {total} "
                f"branches succeeded, strategy {strategy}"
            )
        if not errors:
            return head
        shown = "; ".join(f"branch {i}: {_describe_error(e)}" for i, e in errors[:3])
        more = f"; and {len(errors) - 3} more error(s)" if len(errors) > 3 else ""
        return f"{head}; errors: {shown}{more}"

    @staticmethod
    async def nothing() -> None:
        """What a stream's commit does when the workflow has no checkpoint store."""

    @staticmethod
    async def commit_cursor(
        store: Any,
        fast: bool,
        workflow_id: str,
        sequence: int,
        state: str,
        task: str,
        blob: bytes,
        version: int,
        hub: Any,
    ) -> None:
        """Appends a stream cursor row and waits until it is durable."""
        if fast:
            await store._append_raw(workflow_id, sequence, state, task, 2, blob, version)
        else:
            row = CheckpointRow(
                workflow_id, sequence, state, task, RowKind.STEP_CURSOR, blob, version
            )
            await store.append(row)
        if hub is not None:
            hub.on_checkpoint(workflow_id, sequence)

    @staticmethod
    def encode(value: object, task: str, what: str) -> bytes:
        """JSON bytes of a cursor or compensation output (CheckpointError otherwise)."""
        return _codec.encode(value, task=task, what=what)

    def drain(
        self, stack: list[tuple[str, bytes]], resources: object, budget: float | None
    ) -> Coroutine[Any, Any, list[BaseException]]:
        """The compensation drain for ``stack`` (a coroutine the dispatcher drives)."""
        return _saga.drain(stack, self._compensators, resources, budget)

    @staticmethod
    def label(value: object) -> str:
        """The label of a value that may or may not be a state."""
        return state_label(value)

    def explain_return(self, value: object, state: str, task: str) -> tuple[int, object]:
        """(0, state) to retry the lookup on an unwrapped TaskResult, else (1, message)."""
        if isinstance(value, TaskResult):
            if value.is_split:
                return 1, (
                    f"task '{task}' in state {state} returned {value!r}, but a single-task "
                    "state cannot fan out; use register_split() for split tasks"
                )
            return 0, value.state
        if type(value) in self._state_types and not isinstance(value, bool):
            return 1, (
                f"task '{task}' in state {state} returned {state_label(value)}, which is "
                "neither a registered nor an exit state"
            )
        expected = " or ".join(sorted(t.__qualname__ for t in self._state_types))
        return 1, (
            f"task '{task}' in state {state} returned {value!r} ({type(value).__qualname__}), "
            f"which is not a state of this workflow (expected {expected})"
        )


def _describe_error(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
