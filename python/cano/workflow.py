"""The workflow builder: states, their tasks, exit states and run-wide settings.

A :class:`Workflow` is a definition; ``orchestrate()`` starts a run of it. Every run works
on a snapshot of the definition taken when it starts (the compiled ``Plan``), so changing a
workflow never affects runs already in flight.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from cano._core import (
    CancellationToken,
    Handler,
    Plan,
    TaskConfig,
    check_split,
    resume_run,
    start_run,
)
from cano._graph import mermaid
from cano._registration import _describe_task, _Entry, state_label
from cano._returns import ReturnCheck
from cano._values import Duration, count, seconds
from cano.errors import ConfigurationError
from cano.observer import ObserverHub
from cano.resources import Resources
from cano.split import JoinConfig
from cano.waits import SignalBox, WaitStep, WaitTask

if TYPE_CHECKING:
    from typing import Self

    from typing_extensions import TypeVar as _TypeVar

    from cano.stepped import SteppedTask
    from cano.stream import StreamTask
    from cano.tasks import CompensatableTask, RouterTask, TaskLike

    # A bare ``Workflow.bare()`` is a ``Workflow[Any]`` rather than ``Workflow[Never]``.
    S = _TypeVar("S", default=Any)
else:
    S = TypeVar("S")

E = TypeVar("E", bound=enum.Enum)
"""The state enum of one registration: the state and its task must agree on it."""

__all__ = ["Workflow", "state_label"]


def _workflow_id(value: object, what: str) -> str:
    """A run id or a workflow name given by a user: a non-empty str without NUL."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigurationError(
            f"{what}: expected a non-empty str without NUL characters, got {value!r:.80}"
        )
    return value


async def _raise(err: BaseException) -> Any:
    raise err


class Workflow(Generic[S]):
    """A finite state machine of async tasks.

    Example::

        class Step(enum.Enum):
            FETCH = enum.auto()
            DONE = enum.auto()

        async def fetch(res: cano.Resources) -> Step:
            return Step.DONE

        wf = cano.Workflow.bare().register(Step.FETCH, fetch).add_exit_state(Step.DONE)
        assert await wf.orchestrate(Step.FETCH) is Step.DONE

    Builder methods mutate the workflow and return it, so calls chain.
    """

    def __init__(self, resources: Resources[Any] | None = None, *, name: str | None = None) -> None:
        if resources is not None and not isinstance(resources, Resources):
            raise ConfigurationError(
                f"Workflow(resources): expected a cano.Resources or None, got {resources!r:.80}"
            )
        self._resources: Resources[Any] = resources if resources is not None else Resources()
        self._name: str | None = None if name is None else _workflow_id(name, "Workflow(name)")
        self._entries: dict[Any, _Entry] = {}
        self._exits: list[Any] = []
        self._labels: dict[str, Any] = {}
        self._observers: list[object] = []
        self._workflow_id: str | None = None
        self._version = 0
        self._total_timeout: float | None = None
        self._compensation_timeout: float | None = None
        self._max_transitions: int | None = None
        self._store: Any = None
        self._plan: Plan | None = None
        self._waits: list[str] = []  # labels of the wait states

    @classmethod
    def bare(cls) -> Workflow[S]:
        """A workflow without resources."""
        return cls(Resources.empty())

    # ----- registration -----------------------------------------------------------------

    def register(self, state: E, task: TaskLike[E], *, to: Iterable[E] | None = None) -> Self:
        """Runs ``task`` in ``state``.

        ``task`` is a :class:`Task`, a :class:`PollTask`, a :class:`TimerTask`, any object
        with an async ``run(res)`` or ``run_bare()``, or an ``async def f(res)`` /
        ``async def f()``. ``to`` optionally declares the states the task may return: they
        are checked by ``validate()`` and at run time, and drawn by ``to_mermaid()``.
        """
        self._entries[self._claim_handler(state)] = self._entry(state, task, to, kind=None)
        return self._changed()

    def register_split(
        self,
        state: E,
        tasks: Iterable[TaskLike[E]],
        join: JoinConfig[E],
        *,
        to: Iterable[E] | None = None,
    ) -> Self:
        """Runs ``tasks`` concurrently in ``state``, each as its own asyncio task with its own
        retries and timeouts, and joins them by ``join.strategy``; on success the run moves
        to ``join.join_state``, whose task finds the :class:`SplitResult` under
        ``cano.SPLIT_RESULT_KEY``. Branch ids in observers and errors are ``name[index]``.
        """
        if not isinstance(join, JoinConfig):
            raise ConfigurationError(
                f"register_split for state {state_label(state)} expects a JoinConfig, got {join!r}"
            )
        if isinstance(tasks, str | bytes) or not isinstance(tasks, Iterable):
            raise ConfigurationError(
                f"register_split for state {state_label(state)} expects an iterable of tasks"
            )
        branches = tuple(_describe_task(state, t, None, kind=None) for t in tasks)
        for b in branches:
            if b.kind not in ("single", "router"):
                raise ConfigurationError(
                    f"split state {state_label(state)}: branch task {b.name!r} is a {b.kind} "
                    "task; split branches must be plain tasks"
                )
        check_split(
            state_label(state),
            join.strategy.kind,
            join.strategy.value,
            len(branches),
            has_timeout=join.timeout is not None,
            bulkhead=join.bulkhead,
        )
        key = self._claim_handler(state)
        self._claim(join.join_state)
        del to  # a split always moves to its join state
        self._entries[key] = _Entry(
            call=None,
            takes_resources=False,
            name="",
            config=TaskConfig.minimal(),
            kind="split",
            targets=(join.join_state,),
            task=tuple(b.task for b in branches),
            branches=branches,
            join=join,
        )
        return self._changed()

    def register_stream(
        self, state: E, task: StreamTask[E, Any, Any, Any], *, to: Iterable[E] | None = None
    ) -> Self:
        """Consumes a :class:`StreamTask` in ``state`` window by window; with a checkpoint
        store the cursor of each flushed window is committed, and a resumed run re-opens
        the stream from the last committed cursor. Cancellation and the total timeout drain
        the current window cleanly (``on_close(CloseReason.CANCELLED)``)."""
        for method in ("open", "process_item", "flush_window", "on_close"):
            if not callable(getattr(task, method, None)):
                raise ConfigurationError(
                    f"register_stream for state {state_label(state)} needs a StreamTask; "
                    f"{task!r} has no {method}() method"
                )
        self._entries[self._claim_handler(state)] = self._entry(state, task, to, kind="stream")
        return self._changed()

    def register_stepped(
        self, state: E, task: SteppedTask[E, Any], *, to: Iterable[E] | None = None
    ) -> Self:
        """Runs a :class:`SteppedTask` in ``state``: every step is its own attempt (a failed
        step is retried with the same cursor) and, with a checkpoint store, every cursor is
        persisted so a resumed run continues from the last one."""
        if not callable(getattr(task, "step", None)):
            raise ConfigurationError(
                f"register_stepped for state {state_label(state)} needs a task with an async "
                f"step(res, cursor) method, got {task!r}"
            )
        self._entries[self._claim_handler(state)] = self._entry(state, task, to, kind="stepped")
        return self._changed()

    def register_wait(self, state: E, task: WaitTask[E], *, to: Iterable[E] | None = None) -> Self:
        """Runs a :class:`cano.WaitTask` in ``state``: the run waits for the signal named
        ``task.signal`` (sent with :meth:`cano.Client.signal`), or until ``task.timeout()``
        after the state was first entered, and moves on with ``on_signal(res, payload)`` or
        ``on_timeout(res)``. A consumed signal is durable: a resumed run gets the same
        payload again. Needs a checkpoint store (every built-in store keeps signals)."""
        if not (
            callable(getattr(task, "on_signal", None)) and callable(getattr(task, "name", None))
        ):
            raise ConfigurationError(
                f"register_wait for state {state_label(state)} needs a cano.WaitTask, got {task!r}"
            )
        step = WaitStep(task, lambda: self._store, state_label(state))
        self._entries[self._claim_handler(state)] = self._entry(state, step, to, kind="stepped")
        self._waits.append(state_label(state))
        return self._changed()

    def register_with_compensation(
        self, state: E, task: CompensatableTask[E, Any], *, to: Iterable[E] | None = None
    ) -> Self:
        """Runs a :class:`CompensatableTask` in ``state``: its output is kept (and persisted
        with a checkpoint store) so that ``compensate`` can undo it if a later step fails."""
        if not (
            callable(getattr(task, "run", None)) and callable(getattr(task, "compensate", None))
        ):
            raise ConfigurationError(
                f"register_with_compensation for state {state_label(state)} needs a task with "
                f"async run(res) and compensate(res, output) methods, got {task!r}"
            )
        self._entries[self._claim_handler(state)] = self._entry(
            state, task, to, kind="compensatable"
        )
        return self._changed()

    def register_router(
        self,
        state: E,
        task: RouterTask[E] | Callable[[Resources[Any]], Awaitable[E]] | Callable[[], Awaitable[E]],
        *,
        to: Iterable[E] | None = None,
    ) -> Self:
        """Runs a :class:`RouterTask` (or an async function) in ``state``; never checkpointed."""
        self._entries[self._claim_handler(state)] = self._entry(state, task, to, kind="router")
        return self._changed()

    def add_exit_state(self, state: S) -> Self:
        """Reaching ``state`` ends the run successfully with that state."""
        key = self._claim(state)
        if key not in self._exits:
            self._exits.append(key)
        return self._changed()

    def add_exit_states(self, states: Iterable[S]) -> Self:
        """Adds several exit states."""
        for s in states:
            self.add_exit_state(s)
        return self

    def with_observer(self, observer: object) -> Self:
        """Adds an observer (see :class:`cano.WorkflowObserver`); observers accumulate."""
        self._observers.append(observer)
        return self._changed()

    def with_checkpoint_store(self, store: Any) -> Self:
        """Checkpoints every run in ``store`` (a :class:`cano.RedbCheckpointStore` or any
        object implementing :class:`cano.CheckpointStore`), so that a crashed or failed run
        can be resumed with :meth:`resume_from`. Runs then need a workflow id."""
        for method in ("append", "load_run", "clear"):
            if not callable(getattr(store, method, None)):
                raise ConfigurationError(
                    f"with_checkpoint_store expects a CheckpointStore (async append, load_run, "
                    f"clear), got {store!r} without {method}()"
                )
        self._store = store
        return self._changed()

    def with_name(self, name: str) -> Self:
        """The name run records (and workers) know this workflow by."""
        self._name = _workflow_id(name, "with_name(name)")
        return self._changed()

    @property
    def name(self) -> str | None:
        """The workflow's name (``Workflow(name=...)`` / ``with_name``), or None."""
        return self._name

    def with_workflow_id(self, workflow_id: str) -> Self:
        """The id of runs started without ``workflow_id=``."""
        self._workflow_id = _workflow_id(workflow_id, "with_workflow_id(workflow_id)")
        return self._changed()

    def with_workflow_version(self, version: int) -> Self:
        """The definition's version, stamped on checkpoint rows (default 0)."""
        self._version = count(version, "with_workflow_version(version)")
        return self._changed()

    def with_total_timeout(self, limit: Duration) -> Self:
        """Fails a run with ``WorkflowTimeoutError`` once it ran ``limit`` seconds (counted
        after resource setup); the task in flight is cancelled."""
        self._total_timeout = seconds(limit, "with_total_timeout(limit)")
        return self._changed()

    def with_compensation_timeout(self, limit: Duration) -> Self:
        """The rollback budget after a failure."""
        self._compensation_timeout = seconds(limit, "with_compensation_timeout(limit)")
        return self._changed()

    def with_max_transitions(self, n: int) -> Self:
        """A loop guard: a run may move from one state to the next at most ``n`` times."""
        self._max_transitions = count(n, "with_max_transitions(n)")
        return self._changed()

    # ----- inspection -------------------------------------------------------------------

    @property
    def registered_states(self) -> frozenset[S]:
        """States with a handler (exit-only states excluded)."""
        return frozenset(self._entries)

    @property
    def exit_states(self) -> frozenset[S]:
        """The exit states."""
        return frozenset(self._exits)

    @property
    def resources(self) -> Resources[Any]:
        """The resources handed to every task."""
        return self._resources

    def validate(self) -> None:
        """Checks the definition; raises ``ConfigurationError`` naming what is wrong."""
        self._compile()

    def to_mermaid(self, initial: S | None = None) -> str:
        """The graph as a Mermaid state diagram: states, exits, splits and transitions.

        Transitions declared with ``to=`` are drawn as declared; for a state without
        ``to=``, the states its task's source names (``return Step.DONE``) are drawn as
        possible transitions labelled ``?``. ``[*] -->`` marks ``initial``, or, when it is
        not given, every registered state that no transition leads to.
        """
        return mermaid(self._entries, self._exits, initial)

    # ----- running ----------------------------------------------------------------------

    def orchestrate(
        self,
        initial: S,
        *,
        workflow_id: str | None = None,
        cancel: CancellationToken | None = None,
    ) -> Coroutine[Any, Any, S]:
        """Starts a run at ``initial``; await the result to get the exit state reached.

        The returned object is a coroutine implemented in Rust: await it, or pass it to
        ``asyncio.run``, ``asyncio.create_task`` or ``asyncio.gather``. Validation errors
        are raised when it is first awaited, before any resource is set up.
        """
        plan = self._plan
        if plan is None:
            try:
                plan = self._compile()
            except ConfigurationError as err:
                return cast(Coroutine[Any, Any, S], _raise(err))
        if cancel is not None and not isinstance(cancel, CancellationToken):
            return cast(
                Coroutine[Any, Any, S],
                _raise(ConfigurationError(f"cancel= expects a CancellationToken, got {cancel!r}")),
            )
        if workflow_id is not None:
            try:
                _workflow_id(workflow_id, "orchestrate(workflow_id)")
            except ConfigurationError as err:
                return cast(Coroutine[Any, Any, S], _raise(err))
        run_id = workflow_id if workflow_id is not None else self._workflow_id
        if self._store is not None and run_id is None:
            return cast(
                Coroutine[Any, Any, S],
                _raise(
                    ConfigurationError(
                        "this workflow has a checkpoint store, so every run needs an id: "
                        "pass workflow_id= or call with_workflow_id"
                    )
                ),
            )
        if self._waits and not isinstance(self._store, SignalBox):
            return cast(
                Coroutine[Any, Any, S],
                _raise(
                    ConfigurationError(
                        f"wait state {self._waits[0]} needs a checkpoint store that keeps "
                        "signals (every built-in store does): call with_checkpoint_store"
                    )
                ),
            )
        res = self._resources
        lease = res if res._has_lifecycle else None
        return cast(Coroutine[Any, Any, S], start_run(plan, initial, res, lease, cancel, run_id))

    def resume_from(
        self, workflow_id: str, *, cancel: CancellationToken | None = None
    ) -> Coroutine[Any, Any, S]:
        """Resumes a crashed or failed run from its checkpoint log.

        The state the log ends in runs again (its task must be idempotent); states before it
        never run again. A stepped task continues from its last persisted cursor; finished
        saga steps are remembered, so a later failure still compensates them. The returned
        run reads the log when first awaited, before any resource is set up, and raises
        ``CheckpointError`` when there is no log for ``workflow_id``,
        ``WorkflowVersionMismatchError`` when the log was written by another workflow
        version, and ``WorkflowError`` when the log ends in a state this workflow lacks.
        Where it resumes is decided by ``cano_core::resume_point`` (Rust).
        """
        try:
            plan = self._plan if self._plan is not None else self._compile()
        except ConfigurationError as err:
            return cast(Coroutine[Any, Any, S], _raise(err))
        try:
            _workflow_id(workflow_id, "resume_from(workflow_id)")
        except ConfigurationError as err:
            return cast(Coroutine[Any, Any, S], _raise(err))
        if cancel is not None and not isinstance(cancel, CancellationToken):
            return cast(
                Coroutine[Any, Any, S],
                _raise(ConfigurationError(f"cancel= expects a CancellationToken, got {cancel!r}")),
            )
        res = self._resources
        lease = res if res._has_lifecycle else None
        return cast(Coroutine[Any, Any, S], resume_run(plan, workflow_id, res, lease, cancel))

    def run_sync(self, initial: S, **kwargs: Any) -> S:
        """Runs the workflow to completion in a fresh event loop (``asyncio.run``)."""
        return asyncio.run(self.orchestrate(initial, **kwargs))

    # ----- internals --------------------------------------------------------------------

    def _changed(self) -> Self:
        self._plan = None
        return self

    def _claim_handler(self, state: Any) -> Any:
        """Like ``_claim``, for a state about to get its handler: a second handler for one
        state is refused (it would silently replace the first)."""
        key = self._claim(state)
        if key in self._entries:
            raise ConfigurationError(
                f"state {state_label(state)} already has a task "
                f"({self._entries[key].name!r}); register each state once"
            )
        return key

    def _claim(self, state: Any) -> Any:
        """Checks that ``state`` is usable and that its label is unique."""
        try:
            hash(state)
        except TypeError:
            raise ConfigurationError(
                f"state {state!r} is not hashable; use Enum members (or str/int)"
            ) from None
        label = state_label(state)
        other = self._labels.setdefault(label, state)
        if other is not state and other != state:
            raise ConfigurationError(
                f"states {other!r} and {state!r} share the label {label!r}; labels identify "
                "states in checkpoints, observers and errors, so they must be unique"
            )
        return state

    def _entry(
        self, state: Any, task: Any, to: Iterable[Any] | None, *, kind: str | None
    ) -> _Entry:
        targets: tuple[Any, ...] | None = None
        if to is not None:
            if isinstance(to, str | bytes) or not isinstance(to, Iterable):
                raise ConfigurationError(
                    f"to= for state {state_label(state)} must be an iterable of states"
                )
            targets = tuple(self._claim(t) for t in to)
        return _describe_task(state, task, targets, kind=kind)

    def _compile(self) -> Plan:
        states: list[Any] = []
        ids: dict[Any, int] = {}

        def intern(state: Any) -> int:
            if state not in ids:
                ids[state] = len(states)
                states.append(state)
            return ids[state]

        for state, entry in self._entries.items():
            intern(state)
            if entry.problem is not None:
                raise ConfigurationError(entry.problem)
        for state in self._exits:
            intern(state)
        for entry in self._entries.values():
            for t in entry.targets or ():
                intern(t)
        handlers = [
            (ids[state], self._handler(state, entry, ids)) for state, entry in self._entries.items()
        ]
        compensators: dict[str, tuple[Any, float | None]] = {}
        for state, entry in self._entries.items():
            if entry.kind != "compensatable":
                continue
            if entry.name in compensators:
                raise ConfigurationError(
                    f"two compensatable tasks are named {entry.name!r} (the second in state "
                    f"{state_label(state)}); names key the compensation log, so they must be "
                    "unique: override name()"
                )
            compensators[entry.name] = (entry.task, entry.config.attempt_timeout)
        state_types = frozenset(type(s) for s in states)
        plan = Plan(
            states,
            [state_label(s) for s in states],
            [ids[s] for s in self._exits],
            handlers,
            returns=ReturnCheck(state_types),
            compensators=compensators,
            hub=ObserverHub(self._observers) if self._observers else None,
            max_transitions=self._max_transitions,
            total_timeout=self._total_timeout,
            store=self._store,
            version=self._version,
            compensation_timeout=self._compensation_timeout,
            name=self._name,
        )
        self._plan = plan
        return plan

    def _handler(self, state: Any, entry: _Entry, ids: dict[Any, int]) -> Handler:
        if entry.join is not None:
            join = entry.join
            if join.join_state not in self._entries and join.join_state not in self._exits:
                raise ConfigurationError(
                    f"split state {state_label(state)}: join state "
                    f"{state_label(join.join_state)} is neither registered nor an exit state"
                )
            return Handler.split(
                entry.name,
                [
                    Handler(
                        b.call,
                        takes_resources=b.takes_resources,
                        name=f"{b.name}[{i}]",
                        kind="single",
                        config=b.config,
                    )
                    for i, b in enumerate(entry.branches)
                ],
                strategy=join.strategy.kind,
                value=join.strategy.value,
                strategy_repr=repr(join.strategy),
                join_state=ids[join.join_state],
                timeout=join.timeout,
                bulkhead=join.bulkhead,
                state=state_label(state),
            )
        return Handler(
            entry.call,
            takes_resources=entry.takes_resources,
            name=entry.name,
            kind=entry.kind,
            config=entry.config,
            targets=[ids[t] for t in entry.targets] if entry.targets is not None else None,
            value_type=getattr(entry.task, "cursor_type", None)
            if entry.kind in ("stepped", "stream")
            else getattr(entry.task, "output_type", None)
            if entry.kind == "compensatable"
            else None,
        )

    def __repr__(self) -> str:
        return (
            f"<cano.Workflow states={[state_label(s) for s in self._entries]} "
            f"exits={[state_label(s) for s in self._exits]}>"
        )
