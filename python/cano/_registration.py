"""How a registered task is called: its kind, callable, name and policy.

``Workflow.register*`` turns whatever the user registered (a Task, a PollTask, a plain
``async def``, a duck-typed object...) into an :class:`_Entry` the compiler hands to Rust.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Any

from cano._core import TaskConfig
from cano.batch import BatchTask, _drive_batch
from cano.errors import ConfigurationError
from cano.poll import PollTask, _drive_poll
from cano.split import JoinConfig
from cano.stepped import SteppedTask
from cano.stream import _drive_stream
from cano.tasks import CompensatableTask, RouterTask, Task, _FunctionTask, _takes_resources
from cano.timer import TimerStep, TimerTask

__all__ = ["_Entry", "_describe_task", "_name_of", "state_label"]


def state_label(state: object) -> str:
    """The label of a state: ``member.name`` for an Enum, ``str(s)`` for str/int, else repr."""
    if isinstance(state, enum.Enum):
        return state.name
    if isinstance(state, str | int):
        return str(state)
    return repr(state)


@dataclass(frozen=True, slots=True)
class _Entry:
    """A registered state: how to call its task and with which policy."""

    call: Any
    takes_resources: bool
    name: str
    config: TaskConfig
    kind: str
    targets: tuple[Any, ...] | None
    task: object
    problem: str | None = None
    branches: tuple[_Entry, ...] = ()
    join: JoinConfig[Any] | None = None


def _config_of(task: Any, default: TaskConfig) -> TaskConfig:
    method = getattr(task, "config", None)
    if method is None:
        return default
    config = method() if callable(method) else method
    if not isinstance(config, TaskConfig):
        raise ConfigurationError(
            f"task {_name_of(task)!r}: config() returned {config!r}, expected a TaskConfig"
        )
    return config


def _name_of(task: Any) -> str:
    """The task's name: what its ``name()`` method returns (one way to name a task); else the
    function's or the class's qualified name."""
    method = getattr(task, "name", None)
    if isinstance(method, str):
        raise ConfigurationError(
            f"task {type(task).__qualname__}: name is set to the string {method!r}; a task is "
            "named by overriding its name() method (def name(self) -> str: ...)"
        )
    if callable(method) and not isinstance(task, type):
        try:
            name = method()
        except TypeError:
            name = None  # a name(...) taking arguments is not a task's name
        else:
            if not isinstance(name, str) or not name:
                raise ConfigurationError(
                    f"task {type(task).__qualname__}: name() returned {name!r}; it must return "
                    "a non-empty str"
                )
        if isinstance(name, str):
            return name
    if isinstance(task, functools.partial):
        return _name_of(task.func)
    qualname = getattr(task, "__qualname__", None)
    if isinstance(qualname, str):
        return qualname
    return type(task).__qualname__


def _overrides(task: object, base: type, method: str) -> bool:
    return getattr(type(task), method, None) is not getattr(base, method)


def _describe_task(
    state: Any, task: Any, targets: tuple[Any, ...] | None, *, kind: str | None
) -> _Entry:
    """Works out how to call ``task``, as which kind of handler, with which policy.

    ``kind`` is set by ``register_router`` / ``register_stepped`` /
    ``register_with_compensation``; plain ``register`` infers it from the task's class.
    """
    label = state_label(state)
    router = kind == "router"
    if isinstance(task, type):
        raise ConfigurationError(
            f"cannot register the class {task.__qualname__} for state {label}: register an "
            f"instance of it ({task.__qualname__}())"
        )

    def entry(
        call: Any,
        takes: bool,
        default: TaskConfig,
        problem: str | None = None,
        as_kind: str = "single",
    ) -> _Entry:
        return _Entry(
            call=call,
            takes_resources=takes,
            name=_name_of(task),
            config=_config_of(task, default),
            kind="router" if router else as_kind,
            targets=targets,
            task=task,
            problem=problem,
        )

    if kind == "stream":
        return _Entry(
            call=functools.partial(_drive_stream, task),
            takes_resources=True,
            name=_name_of(task),
            # Only attempt_timeout applies, per item, inside the driver; no retries.
            config=TaskConfig.minimal(),
            kind="stream",
            targets=targets,
            task=task,
        )
    if isinstance(task, BatchTask):
        return entry(functools.partial(_drive_batch, task), True, TaskConfig())
    if kind == "stepped" or (kind is None and isinstance(task, SteppedTask)):
        return entry(task.step, True, TaskConfig(), as_kind="stepped")
    if kind == "compensatable" or (kind is None and isinstance(task, CompensatableTask)):
        return entry(task.run, True, TaskConfig(), as_kind="compensatable")

    if isinstance(task, _FunctionTask):
        return entry(task.fn, task.takes_resources, TaskConfig())
    if isinstance(task, RouterTask) or (router and hasattr(task, "route")):
        return entry(task.route, True, TaskConfig())
    if isinstance(task, PollTask):
        return entry(functools.partial(_drive_poll, task), True, TaskConfig.minimal())
    if isinstance(task, TimerTask):
        step = TimerStep(task, label)
        return entry(step.step, True, TaskConfig.minimal(), as_kind="stepped")
    if isinstance(task, Task):
        if _overrides(task, Task, "run"):
            return entry(task.run, True, TaskConfig())
        if _overrides(task, Task, "run_bare"):
            return entry(task.run_bare, False, TaskConfig())
        return entry(
            task.run,
            True,
            TaskConfig(),
            problem=f"task {_name_of(task)!r} for state {label} implements neither run(res) "
            "nor run_bare()",
        )
    if hasattr(task, "run") and callable(task.run):
        return entry(task.run, True, TaskConfig())
    if hasattr(task, "run_bare") and callable(task.run_bare):
        return entry(task.run_bare, False, TaskConfig())
    if callable(task) and not isinstance(task, type):
        return _Entry(
            call=task,
            takes_resources=_takes_resources(task),
            name=_name_of(task),
            config=TaskConfig(),
            kind="router" if router else "single",
            targets=targets,
            task=task,
        )
    raise ConfigurationError(
        f"cannot register {task!r} for state {label}: expected a Task, an object with an async "
        "run(res) or run_bare() method, or an async function"
    )
