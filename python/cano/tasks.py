"""Tasks: the code that runs in each state.

A task returns the next state. The simplest task is a plain ``async def``::

    async def fetch(res: cano.Resources) -> Step:
        ...
        return Step.PARSE

Classes give a task a name and a policy (:class:`cano.TaskConfig`). Each processing model
is a base class with defaults; all of them are optional, duck typing works too.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from cano._core import TaskConfig
from cano._duration import Duration, seconds
from cano.errors import ConfigurationError

if TYPE_CHECKING:
    from cano.resources import Resources

__all__ = [
    "CompensatableTask",
    "Done",
    "More",
    "Pending",
    "PollErrorPolicy",
    "PollTask",
    "Ready",
    "RouterTask",
    "SteppedTask",
    "Task",
    "TaskResult",
    "TimerTask",
    "task",
]

S = TypeVar("S")
T = TypeVar("T")
C = TypeVar("C")
Out = TypeVar("Out")


class TaskResult(Generic[S]):
    """What a task may return instead of a bare state.

    ``TaskResult.single(s)`` is the same as returning ``s``. ``TaskResult.split([...])`` is
    refused by single-task states: fan-out is declared with ``register_split``.
    """

    __slots__ = ("_split", "_states")

    def __init__(self, states: Sequence[S], *, split: bool) -> None:
        self._states = tuple(states)
        self._split = split

    @staticmethod
    def single(state: T) -> TaskResult[T]:
        """Move to ``state``."""
        return TaskResult((state,), split=False)

    @staticmethod
    def split(states: Sequence[T]) -> TaskResult[T]:
        """Fan out to several states (only meaningful for split states)."""
        return TaskResult(list(states), split=True)

    @property
    def is_split(self) -> bool:
        """True for ``TaskResult.split``."""
        return self._split

    @property
    def states(self) -> tuple[S, ...]:
        """The state(s) carried."""
        return self._states

    @property
    def state(self) -> S:
        """The single state carried (``ValueError`` for a split)."""
        if self._split:
            raise ValueError("TaskResult.split carries several states; use .states")
        return self._states[0]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TaskResult)
            and other._split == self._split
            and other._states == self._states
        )

    def __hash__(self) -> int:
        return hash((self._split, self._states))

    def __repr__(self) -> str:
        if self._split:
            return f"TaskResult.split({list(self._states)!r})"
        return f"TaskResult.single({self._states[0]!r})"


class Task(Generic[S]):
    """A task: override ``run(res)`` (or ``run_bare()`` when it needs no resources).

    ``config()`` is read once, when the task is registered; ``name()`` defaults to the
    class's qualified name and is what observers, logs and errors show.

    Example::

        class Fetch(cano.Task[Step]):
            def config(self) -> cano.TaskConfig:
                return cano.TaskConfig().with_attempt_timeout(5)

            async def run(self, res: cano.Resources) -> Step:
                return Step.PARSE
    """

    def config(self) -> TaskConfig:
        """Retry and timeout policy; default ``TaskConfig()`` (3 retries, exponential)."""
        return TaskConfig()

    def name(self) -> str:
        """The task's name; default the class's ``__qualname__``."""
        return type(self).__qualname__

    async def run(self, res: Resources[Any]) -> S | TaskResult[S]:
        """Does the work and returns the next state; default calls ``run_bare()``."""
        return await self.run_bare()

    async def run_bare(self) -> S | TaskResult[S]:
        """The resource-free variant of ``run``."""
        raise ConfigurationError(f"task {self.name()!r} implements neither run(res) nor run_bare()")


class _FunctionTask(Task[S]):
    """A plain ``async def`` turned into a Task by :func:`task`."""

    def __init__(
        self,
        fn: Callable[..., Awaitable[S | TaskResult[S]]],
        *,
        name: str | None,
        config: TaskConfig | None,
    ) -> None:
        self.fn = fn
        self.takes_resources = _takes_resources(fn)
        self._name = name or getattr(fn, "__qualname__", None) or repr(fn)
        self._config = config

    def config(self) -> TaskConfig:
        return self._config if self._config is not None else TaskConfig()

    def name(self) -> str:
        return self._name

    async def run(self, res: Resources[Any]) -> S | TaskResult[S]:
        if self.takes_resources:
            return await self.fn(res)
        return await self.fn()

    def __call__(self, *args: Any) -> Awaitable[S | TaskResult[S]]:
        return self.fn(*args)

    def __repr__(self) -> str:
        return f"<cano task {self._name}>"


FnTask = Callable[..., Awaitable[Any]]


@overload
def task(
    fn: Callable[..., Awaitable[S | TaskResult[S]]],
    /,
    *,
    name: str | None = None,
    config: TaskConfig | None = None,
) -> Task[S]: ...


@overload
def task(
    *, name: str | None = None, config: TaskConfig | None = None
) -> Callable[[Callable[..., Awaitable[S | TaskResult[S]]]], Task[S]]: ...


def task(
    fn: Callable[..., Awaitable[S | TaskResult[S]]] | None = None,
    /,
    *,
    name: str | None = None,
    config: TaskConfig | None = None,
) -> Task[S] | Callable[[Callable[..., Awaitable[S | TaskResult[S]]]], Task[S]]:
    """Turns an ``async def f(res)`` or ``async def f()`` into a :class:`Task`.

    Example::

        @cano.task(config=cano.TaskConfig.minimal())
        async def parse(res: cano.Resources) -> Step:
            return Step.DONE
    """

    def wrap(f: Callable[..., Awaitable[S | TaskResult[S]]]) -> Task[S]:
        if not callable(f):
            raise ConfigurationError(f"@cano.task expects an async function, got {f!r}")
        return _FunctionTask(f, name=name, config=config)

    if fn is not None:
        return wrap(fn)
    return wrap


class RouterTask(Generic[S]):
    """A side-effect-free decision; registered with ``register_router``.

    Routers are never checkpointed (a resumed run re-decides). Default config
    ``TaskConfig()``.
    """

    def config(self) -> TaskConfig:
        """Retry policy; default ``TaskConfig()``."""
        return TaskConfig()

    def name(self) -> str:
        """Default: the class's ``__qualname__``."""
        return type(self).__qualname__

    async def route(self, res: Resources[Any]) -> S:
        """Returns the next state."""
        raise ConfigurationError(f"router {self.name()!r} does not implement route(res)")


@dataclass(frozen=True, slots=True)
class Ready(Generic[S]):
    """A poll outcome: done, move to ``state``."""

    state: S


class Pending:
    """A poll outcome: not yet; poll again after ``delay`` seconds (0 = at once)."""

    __slots__ = ("delay",)

    def __init__(self, delay: Duration = 0) -> None:
        self.delay = seconds(delay, "Pending delay")

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
        if max_errors is not None and max_errors < 0:
            raise ConfigurationError(f"PollErrorPolicy max_errors must be >= 0, got {max_errors}")
        self.max_errors = max_errors

    @staticmethod
    def fail_fast() -> PollErrorPolicy:
        """The first error fails the task (the default)."""
        return PollErrorPolicy(None)

    @staticmethod
    def retry_on_error(max_errors: int) -> PollErrorPolicy:
        """Tolerate up to ``max_errors`` consecutive errors, re-polling at once."""
        return PollErrorPolicy(max_errors)

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
    """The engine's poll loop (one task attempt)."""
    policy = poller.on_poll_error()
    errors = 0
    while True:
        try:
            outcome = await poller.poll(res)
        except Exception:
            errors += 1
            if policy.max_errors is None or errors > policy.max_errors:
                raise
            continue
        if isinstance(outcome, Ready):
            return outcome.state
        if isinstance(outcome, Pending):
            errors = 0
            if outcome.delay > 0:
                await asyncio.sleep(outcome.delay)
            continue
        raise TypeError(
            f"poll task {poller.name()!r} returned {outcome!r}; expected Ready(state) or Pending()"
        )


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


def _takes_resources(fn: Callable[..., Any]) -> bool:
    """True for ``f(res)``, False for ``f()``; anything else is a ConfigurationError."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    required = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if len(required) > 1:
        raise ConfigurationError(
            f"task function {getattr(fn, '__qualname__', fn)!r} takes "
            f"{len(required)} arguments; expected (res) or ()"
        )
    return len(required) == 1 or (not required and bool(positional) and _wants_one(sig))


def _wants_one(sig: inspect.Signature) -> bool:
    # f(res=None) or f(*args): hand it the resources.
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        for p in sig.parameters.values()
    )


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


class CompensatableTask(Generic[S, Out]):
    """A saga step: ``run`` returns ``(next_state, output)``; ``compensate(res, output)``
    undoes it if a later step fails.

    ``output`` must be JSON-serialisable (orjson: dataclasses, pydantic models, enums,
    datetimes and UUIDs work); it is persisted with a checkpoint store, and
    ``compensate`` receives its JSON round trip, rebuilt with ``output_type`` when set.
    ``compensate`` must be idempotent: it may run in another process after a resume.
    Registered with ``register_with_compensation``. Default config ``TaskConfig()``.
    """

    output_type: type[Out] | None = None

    def config(self) -> TaskConfig:
        """Retry policy of the forward ``run``; default ``TaskConfig()``."""
        return TaskConfig()

    def name(self) -> str:
        """Default: the class's ``__qualname__``; it keys the compensation log."""
        return type(self).__qualname__

    async def run(self, res: Resources[Any]) -> tuple[S, Out]:
        """Does the work; returns ``(next_state, output)``."""
        raise ConfigurationError(f"compensatable task {self.name()!r} does not implement run()")

    async def compensate(self, res: Resources[Any], output: Out) -> None:
        """Undoes what ``run`` did, given its output."""
        raise ConfigurationError(
            f"compensatable task {self.name()!r} does not implement compensate()"
        )
