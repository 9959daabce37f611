"""What a task returned when it is not a state of the workflow: the dispatcher's cold path
for ``TaskResult`` values, unknown states and values of the wrong type."""

from __future__ import annotations

from cano._registration import state_label
from cano.tasks import TaskResult

__all__ = ["ReturnCheck"]


class ReturnCheck:
    """Explains a returned value that the plan's state lookup did not find."""

    __slots__ = ("_state_types",)

    def __init__(self, state_types: frozenset[type]) -> None:
        self._state_types = state_types

    def explain(self, value: object, state: str, task: str) -> tuple[int, object]:
        """``(0, state)`` to retry the lookup on an unwrapped ``TaskResult``, else
        ``(1, message)``: a message naming the task, the state and the value."""
        if isinstance(value, TaskResult):
            if value.is_split:
                return 1, (
                    f"task {task!r} in state {state} returned {value!r}, but a single-task "
                    "state cannot fan out; use register_split() for split tasks"
                )
            return 0, value.state
        if type(value) in self._state_types and not isinstance(value, bool):
            return 1, (
                f"task {task!r} in state {state} returned {state_label(value)}, which is "
                "neither a registered nor an exit state"
            )
        expected = " or ".join(sorted(t.__qualname__ for t in self._state_types))
        return 1, (
            f"task {task!r} in state {state} returned {value!r} ({type(value).__qualname__}), "
            f"which is not a state of this workflow (expected {expected})"
        )
