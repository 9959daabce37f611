"""Stepped tasks: a resumable loop whose every cursor is checkpointed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from cano._core import TaskConfig
from cano.errors import ConfigurationError

if TYPE_CHECKING:
    from cano.resources import Resources

__all__ = ["Done", "More", "SteppedTask"]

S = TypeVar("S")
C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class More(Generic[C]):
    """A step outcome: not finished; continue from ``cursor`` (persisted when checkpointing)."""

    cursor: C


@dataclass(frozen=True, slots=True)
class Done(Generic[S]):
    """A step outcome: finished; move to ``state``."""

    state: S


class SteppedTask(Generic[S, C]):
    """A resumable loop: ``step`` is called with the last cursor until it returns ``Done``.

    Registered with ``register_stepped``, every step is its own task attempt (a failed step
    is retried with the same cursor) and, with a checkpoint store, each ``More(cursor)`` is
    persisted before the next step, so a resumed run continues from the last cursor. The
    first step receives ``None``. Set ``cursor_type`` to a dataclass or pydantic model to
    get that type back after a resume instead of the decoded JSON. Default config
    ``TaskConfig()``.
    """

    cursor_type: type[C] | None = None

    def config(self) -> TaskConfig:
        """Retry policy of each step; default ``TaskConfig()``."""
        return TaskConfig()

    def name(self) -> str:
        """Default: the class's ``__qualname__``."""
        return type(self).__qualname__

    async def step(self, res: Resources[Any], cursor: C | None) -> More[C] | Done[S]:
        """One step: ``More(next_cursor)`` or ``Done(next_state)``."""
        raise ConfigurationError(f"stepped task {self.name()!r} does not implement step()")
