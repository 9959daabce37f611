"""Timer tasks: wait for a duration or until a moment, then decide the next state."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from cano._core import TaskConfig
from cano._values import Duration, seconds
from cano.errors import ConfigurationError, RunParked
from cano.records import PARK_AFTER
from cano.stepped import Done, More, SteppedTask

if TYPE_CHECKING:
    from cano.resources import Resources

__all__ = ["TimerTask"]

S = TypeVar("S")


class TimerTask(Generic[S]):
    """Waits, then decides: ``wait`` returns how long (or until when), ``after_wait`` the
    next state. The moment it waits until is recorded when the state is first entered (with
    a checkpoint store, durably): a resumed run waits for what is left of it, not the whole
    wait again. Under a Worker, a wait longer than the worker's lease *parks* the run
    (WAITING, no slot and no lease held) until then. Default ``TaskConfig.minimal()``.
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


class TimerStep(SteppedTask[Any, dict[str, float]]):
    """A timer as the engine runs it: a stepped task whose first cursor records the moment
    to wait until; the second step waits for what is left (or parks), then decides."""

    def __init__(self, timer: TimerTask[Any], label: str) -> None:
        self.timer, self._label = timer, label

    def name(self) -> str:
        return self.timer.name()

    def config(self) -> TaskConfig:
        return self.timer.config()

    async def step(
        self, res: Resources[Any], cursor: dict[str, float] | None
    ) -> More[dict[str, float]] | Done[Any]:
        if cursor is None:
            return More({"until": time.time() + await self._delay(res)})
        until = cursor["until"]
        left = until - time.time()
        park_after = PARK_AFTER.get()
        if left > 0 and park_after is not None and left > park_after:
            raise RunParked(
                f"timer task {self.name()!r} waits until {until}",
                state=self._label,
                signal=None,
                wake_at=until,
            )
        if left > 0:
            await asyncio.sleep(left)
        return Done(await self.timer.after_wait(res))

    async def _delay(self, res: Resources[Any]) -> float:
        until = await self.timer.wait(res)
        if isinstance(until, datetime):
            if until.tzinfo is None:
                raise ConfigurationError(
                    f"timer task {self.timer.name()!r}: wait() returned a naive datetime "
                    f"{until!r}; use a timezone-aware one"
                )
            return (until - datetime.now(UTC)).total_seconds()
        return seconds(until, f"timer task {self.timer.name()!r} wait()")
