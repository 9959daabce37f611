"""Timer tasks: wait for a duration or until a moment, then decide the next state."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from cano._core import TaskConfig
from cano._values import Duration, seconds
from cano.errors import ConfigurationError

if TYPE_CHECKING:
    from cano.resources import Resources

__all__ = ["TimerTask"]

S = TypeVar("S")


class TimerTask(Generic[S]):
    """Waits, then decides: ``wait`` returns how long (or until when), ``after_wait`` the
    next state. A resumed run waits again from scratch. Default ``TaskConfig.minimal()``.
    """

    def config(self) -> TaskConfig:
        """Default ``TaskConfig.minimal()``."""
        return TaskConfig.minimal()

    def name(self) -> str:
        """Default: the class's ``__qualname__``."""
        return type(self).__qualname__

    async def wait(self, res: Resources[Any]) -> Duration | datetime:
        """Seconds or a timedelta to wait, or a timezone-aware datetime to wait until."""
        raise ConfigurationError(f"timer task {self.name()!r} does not implement wait(res)")

    async def after_wait(self, res: Resources[Any]) -> S:
        """Returns the next state once the wait is over."""
        raise ConfigurationError(f"timer task {self.name()!r} does not implement after_wait(res)")


async def _drive_timer(timer: TimerTask[S], res: Resources[Any]) -> S:
    """The engine's timer: one wait, then ``after_wait`` (one task attempt)."""
    until = await timer.wait(res)
    if isinstance(until, datetime):
        if until.tzinfo is None:
            raise ConfigurationError(
                f"timer task {timer.name()!r}: wait() returned a naive datetime {until!r}; "
                "use a timezone-aware one"
            )
        delay = (until - datetime.now(UTC)).total_seconds()
    else:
        delay = seconds(until, f"timer task {timer.name()!r} wait()")
    if delay > 0:
        await asyncio.sleep(delay)
    return await timer.after_wait(res)
