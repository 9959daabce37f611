"""Polling tasks: ``poll`` is called until it returns ``Ready(state)``.

``Pending(delay)`` asks to be polled again after ``delay`` seconds; ``PollErrorPolicy``
says how many consecutive errors the loop tolerates (counted by ``cano_core``'s
``ErrorStreak``). The whole loop is one task attempt of the dispatcher.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from cano._core import ErrorStreak, TaskConfig
from cano._values import Duration, count, seconds
from cano.errors import ConfigurationError

if TYPE_CHECKING:
    from cano.resources import Resources

__all__ = ["Pending", "PollErrorPolicy", "PollTask", "Ready"]

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Ready(Generic[S]):
    """A poll outcome: done, move to ``state``."""

    state: S


class Pending:
    """A poll outcome: not yet; poll again after ``delay`` seconds (0 = at once)."""

    __slots__ = ("delay",)

    def __init__(self, delay: Duration = 0) -> None:
        self.delay = seconds(delay, "Pending(delay)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pending) and other.delay == self.delay

    def __hash__(self) -> int:
        return hash(("Pending", self.delay))

    def __repr__(self) -> str:
        return f"Pending({self.delay!r})"


class PollErrorPolicy:
    """What a poll loop does when ``poll`` raises."""

    __slots__ = ("max_errors",)

    def __init__(self, max_errors: int | None) -> None:
        self.max_errors = (
            None if max_errors is None else count(max_errors, "PollErrorPolicy(max_errors)")
        )

    @staticmethod
    def fail_fast() -> PollErrorPolicy:
        """The first error fails the task (the default)."""
        return PollErrorPolicy(None)

    @staticmethod
    def retry_on_error(max_errors: int) -> PollErrorPolicy:
        """Tolerate up to ``max_errors`` consecutive errors, re-polling at once."""
        return PollErrorPolicy(count(max_errors, "PollErrorPolicy.retry_on_error(max_errors)"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PollErrorPolicy) and other.max_errors == self.max_errors

    def __hash__(self) -> int:
        return hash(("PollErrorPolicy", self.max_errors))

    def __repr__(self) -> str:
        if self.max_errors is None:
            return "PollErrorPolicy.fail_fast()"
        return f"PollErrorPolicy.retry_on_error({self.max_errors})"


class PollTask(Generic[S]):
    """Waits until something is ready: ``poll`` is called until it returns ``Ready``.

    ``Pending(delay)`` sleeps ``delay`` seconds before the next poll. There is no iteration
    cap: bound the loop with ``TaskConfig().with_attempt_timeout(...)``, which covers the
    whole loop. Default config ``TaskConfig.minimal()``.
    """

    def config(self) -> TaskConfig:
        """Default ``TaskConfig.minimal()``: a failing poll loop is not restarted."""
        return TaskConfig.minimal()

    def name(self) -> str:
        """Default: the class's ``__qualname__``."""
        return type(self).__qualname__

    def on_poll_error(self) -> PollErrorPolicy:
        """Default ``PollErrorPolicy.fail_fast()``."""
        return PollErrorPolicy.fail_fast()

    async def poll(self, res: Resources[Any]) -> Ready[S] | Pending:
        """One check: ``Ready(next_state)`` or ``Pending(delay)``."""
        raise ConfigurationError(f"poll task {self.name()!r} does not implement poll(res)")


async def _drive_poll(poller: PollTask[S], res: Resources[Any]) -> S:
    """The engine's poll loop (one task attempt). Every iteration yields to the event loop
    at least once, so timeouts and cancellation fire even when ``poll`` never suspends."""
    policy = poller.on_poll_error()
    streak = ErrorStreak(policy.max_errors or 0)
    while True:
        try:
            outcome = await poller.poll(res)
        except Exception:
            if streak.failed():
                raise
            await asyncio.sleep(0)
            continue
        if isinstance(outcome, Ready):
            return outcome.state
        if isinstance(outcome, Pending):
            streak.succeeded()
            await asyncio.sleep(outcome.delay)
            continue
        raise TypeError(
            f"poll task {poller.name()!r} returned {outcome!r}; expected Ready(state) or Pending()"
        )
