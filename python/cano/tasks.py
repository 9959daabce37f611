"""Tasks: the code that runs in each state.

A task returns the next state. The simplest task is a plain ``async def``::

    async def fetch(res: cano.Resources) -> Step:
        ...
        return Step.PARSE

Classes give a task a name and a policy (:class:`cano.TaskConfig`). Each processing model
is a base class with defaults; all of them are optional, duck typing works too. This module
holds plain tasks, routers and saga steps; polling, timer and stepped tasks have their own
modules (:mod:`cano.poll`, :mod:`cano.timer`, :mod:`cano.stepped`), re-exported here.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeAlias, TypeVar, Union, overload

from cano._core import TaskConfig
from cano.batch import BatchTask
from cano.errors import ConfigurationError
from cano.poll import Pending, PollErrorPolicy, PollTask, Ready
from cano.resources import Resources
from cano.stepped import Done, More, SteppedTask
from cano.timer import TimerTask

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
    "TaskLike",
    "TaskResult",
    "TimerTask",
    "task",
]

S = TypeVar("S")
T = TypeVar("T")
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


# ----- what register() accepts, for type checkers ------------------------------------------

E = TypeVar("E", bound=enum.Enum)
E_co = TypeVar("E_co", bound=enum.Enum, covariant=True)


class _RunsWithResources(Protocol[E_co]):
    """Any object with an async ``run(res)`` returning a state."""

    def run(self, res: Resources[Any], /) -> Awaitable[E_co | TaskResult[E_co]]: ...


class _RunsBare(Protocol[E_co]):
    """Any object with an async ``run_bare()`` returning a state."""

    def run_bare(self) -> Awaitable[E_co | TaskResult[E_co]]: ...


TaskLike: TypeAlias = Union[  # noqa: UP007 - a generic alias subscriptable at run time
    Task[E],
    PollTask[E],
    TimerTask[E],
    BatchTask[E, Any, Any],
    _RunsWithResources[E],
    _RunsBare[E],
    Callable[[Resources[Any]], Awaitable[E | TaskResult[E]]],
    Callable[[], Awaitable[E | TaskResult[E]]],
]
"""What ``Workflow.register(state, task)`` takes for a state of enum ``E``: a task of that
enum (a :class:`Task`, :class:`PollTask`, :class:`TimerTask` or :class:`BatchTask`, or any
object with an async ``run(res)``/``run_bare()``), or an ``async def f(res)`` / ``async def
f()`` returning one of its states. Type checkers then flag a task of another enum, one that
returns a ``str``, a plain ``def`` and a class given instead of an instance."""
