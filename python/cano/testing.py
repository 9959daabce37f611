"""Helpers for testing workflows: a recording observer, fixtures and failure injection.

Not re-exported from the top-level package; import it explicitly::

    import cano.testing

    rec = cano.testing.RecordingObserver()
    flaky = cano.testing.panic_on_attempt(1, Step.DONE).with_config(
        cano.TaskConfig().with_fixed_retry(1, 0)
    )
    wf = cano.Workflow.bare().register(Step.FETCH, flaky).add_exit_state(Step.DONE)
    wf.with_observer(rec).run_sync(Step.FETCH)
    rec.assert_path([Step.FETCH, Step.DONE])
    assert flaky.attempts == 2

Everything here is ordinary public API: the helpers do not reach into the engine, so what
passes with them passes in production too.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Self, TypeVar

from cano._core import TaskConfig
from cano.errors import ConfigurationError, ResourceError
from cano.observer import WorkflowObserver
from cano.resources import MemoryStore, Resources
from cano.store import InMemoryCheckpointStore
from cano.tasks import Task
from cano.workflow import Workflow, state_label

__all__ = [
    "InMemoryCheckpointStore",
    "PanicOnAttempt",
    "RecordingObserver",
    "TestResources",
    "assert_compensation_ran",
    "panic_on_attempt",
]

S = TypeVar("S")

# Hooks after which the state last entered cannot have been a completed exit state.
_NOT_COMPLETED = frozenset(
    {"on_task_start", "on_task_failure", "on_cancelled", "on_workflow_timeout"}
)


class RecordingObserver(WorkflowObserver):
    """An observer that records every hook call, in order, for assertions.

    ``events`` is a list of ``(hook_name, args)`` tuples, e.g. ``("on_retry", ("fetch", 1))``
    or ``("on_state_enter", ("DONE",))``; every hook of :class:`cano.WorkflowObserver` is
    recorded, the scheduler's ``on_flow_*`` ones included. State arguments are labels
    (``member.name`` for an Enum).

    The assertion helpers accept states or labels: ``assert_path([Step.A, Step.B])`` and
    ``assert_path(["A", "B"])`` are the same check. One observer attached to a workflow
    records every run of that workflow, interleaved if runs overlap: use one observer per
    run, or :meth:`clear` between runs, when the order matters.

    Example::

        rec = RecordingObserver()
        wf.with_observer(rec)
        await wf.orchestrate(Step.FETCH)
        rec.assert_path([Step.FETCH, Step.PARSE, Step.DONE])
        rec.assert_completed_with(Step.DONE)
        assert ("on_retry", ("fetch", 1)) in rec.events
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    # ----- queries -----------------------------------------------------------------------

    @property
    def states_entered(self) -> list[str]:
        """The labels of the states entered, in order (exit states and routers included)."""
        return [args[0] for hook, args in self.events if hook == "on_state_enter"]

    def events_named(self, hook: str) -> list[tuple[Any, ...]]:
        """The argument tuples of every call to ``hook`` (e.g. ``"on_retry"``), in order."""
        return [args for name, args in self.events if name == hook]

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self.events.clear()

    def take(self) -> list[tuple[str, tuple[Any, ...]]]:
        """Return the events recorded so far and forget them."""
        events, self.events = self.events, []
        return events

    # ----- assertions --------------------------------------------------------------------

    def assert_path(self, labels: Iterable[object]) -> None:
        """Asserts that exactly these states were entered, in this order.

        Raises ``AssertionError`` naming the first position where the paths differ.
        """
        expected = [state_label(s) for s in labels]
        actual = self.states_entered
        if actual == expected:
            return
        where = next(
            (i for i, (a, e) in enumerate(zip(actual, expected, strict=False)) if a != e),
            min(len(actual), len(expected)),
        )
        got = repr(actual[where]) if where < len(actual) else "nothing more"
        wanted = repr(expected[where]) if where < len(expected) else "nothing more"
        raise AssertionError(
            f"state path differs at step {where}: expected {wanted}, got {got}\n"
            f"  expected: {expected}\n"
            f"  actual:   {actual}"
        )

    def assert_completed_with(self, label: object) -> None:
        """Asserts that the run ended by entering the exit state ``label``.

        The last state entered must be ``label`` and nothing that a non-exit state or a
        failure would cause (a task start, a task failure, a cancellation, a timeout) may
        have been recorded after it.
        """
        want = state_label(label)
        entered = [i for i, (hook, _) in enumerate(self.events) if hook == "on_state_enter"]
        if not entered:
            raise AssertionError(
                f"expected the run to complete with {want!r}, but no state was entered"
            )
        last = entered[-1]
        got = self.events[last][1][0]
        if got != want:
            raise AssertionError(
                f"expected the run to complete with {want!r}, but the last state entered was "
                f"{got!r} (path: {self.states_entered})"
            )
        after = [(hook, args) for hook, args in self.events[last + 1 :] if hook in _NOT_COMPLETED]
        if after:
            hook, args = after[0]
            raise AssertionError(
                f"the last state entered was {want!r}, but the run did not complete there: "
                f"{hook}{args!r} was recorded after it"
            )

    def assert_all_states_entered(self, states: Iterable[object]) -> None:
        """Asserts that every one of ``states`` was entered at least once, in any order."""
        seen = set(self.states_entered)
        missing = [lab for lab in (state_label(s) for s in states) if lab not in seen]
        if missing:
            raise AssertionError(f"states never entered: {missing} (entered: {sorted(seen)})")

    def assert_registered_states_entered(self, workflow: Workflow[Any]) -> None:
        """Asserts that every state with a task in ``workflow`` was entered (a coverage check).

        Exit-only states are not required: a workflow with two exit states reaches one.
        """
        self.assert_all_states_entered(sorted(workflow.registered_states, key=state_label))

    # ----- hooks -------------------------------------------------------------------------

    def on_state_enter(self, state: str) -> None:
        self.events.append(("on_state_enter", (state,)))

    def on_task_start(self, task_id: str) -> None:
        self.events.append(("on_task_start", (task_id,)))

    def on_task_success(self, task_id: str) -> None:
        self.events.append(("on_task_success", (task_id,)))

    def on_task_failure(self, task_id: str, error: BaseException) -> None:
        self.events.append(("on_task_failure", (task_id, error)))

    def on_retry(self, task_id: str, attempt: int) -> None:
        self.events.append(("on_retry", (task_id, attempt)))

    def on_circuit_open(self, task_id: str) -> None:
        self.events.append(("on_circuit_open", (task_id,)))

    def on_checkpoint(self, workflow_id: str, sequence: int) -> None:
        self.events.append(("on_checkpoint", (workflow_id, sequence)))

    def on_resume(self, workflow_id: str, sequence: int) -> None:
        self.events.append(("on_resume", (workflow_id, sequence)))

    def on_workflow_timeout(self, elapsed: float, limit: float) -> None:
        self.events.append(("on_workflow_timeout", (elapsed, limit)))

    def on_cancelled(self, state: str) -> None:
        self.events.append(("on_cancelled", (state,)))

    def on_checkpoint_clear_failed(self, workflow_id: str, error: BaseException) -> None:
        self.events.append(("on_checkpoint_clear_failed", (workflow_id, error)))

    def on_unknown_resume_state(self, workflow_id: str, sequence: int, label: str) -> None:
        self.events.append(("on_unknown_resume_state", (workflow_id, sequence, label)))

    def on_run_start(self, workflow_id: str | None) -> None:
        self.events.append(("on_run_start", (workflow_id,)))

    def on_run_finish(self, state: str | None, error: BaseException | None) -> None:
        self.events.append(("on_run_finish", (state, error)))

    def on_flow_start(self, flow_id: str, run: int) -> None:
        self.events.append(("on_flow_start", (flow_id, run)))

    def on_flow_finish(self, flow_id: str, outcome: str, duration: float) -> None:
        self.events.append(("on_flow_finish", (flow_id, outcome, duration)))

    def on_flow_backoff(self, flow_id: str, streak: int, delay: float) -> None:
        self.events.append(("on_flow_backoff", (flow_id, streak, delay)))

    def on_flow_tripped(self, flow_id: str, streak: int) -> None:
        self.events.append(("on_flow_tripped", (flow_id, streak)))

    def __repr__(self) -> str:
        return f"RecordingObserver(events={len(self.events)}, path={self.states_entered})"


class TestResources:
    """Builds a :class:`cano.Resources` for a test in one expression.

    ``with_store(key="store")`` adds a fresh :class:`cano.MemoryStore`; ``with_resource``
    adds any value. Both return ``self``; ``build()`` returns a new ``Resources`` each time
    (with new ``MemoryStore`` objects, the other values shared). A key used twice raises
    :class:`cano.ResourceError` at once.

    Example::

        res = TestResources().with_store().with_resource("api", FakeApi()).build()
        wf = cano.Workflow(res)
        ...
        assert res.get("store", cano.MemoryStore).get("count") == 3
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[bool, object]] = {}

    def with_store(self, key: Hashable = "store") -> Self:
        """Adds an empty :class:`cano.MemoryStore` under ``key``."""
        return self._add(key, True, None)

    def with_resource(self, key: Hashable, value: object) -> Self:
        """Adds ``value`` under ``key`` (its ``setup``/``teardown``, if any, run as usual)."""
        return self._add(key, False, value)

    def build(self) -> Resources[Any]:
        """A new ``Resources`` holding everything added, in the order it was added."""
        res: Resources[Any] = Resources()
        for key, (is_store, value) in self._entries.items():
            res.insert(key, MemoryStore() if is_store else value)
        return res

    def _add(self, key: Hashable, is_store: bool, value: object) -> Self:
        if key in self._entries:
            raise ResourceError(
                f"duplicate resource key {key!r}: TestResources already holds a resource there"
            )
        self._entries[key] = (is_store, value)
        return self

    def __repr__(self) -> str:
        return f"TestResources(keys={list(self._entries)!r})"


class PanicOnAttempt(Task[S]):
    """A task that raises ``RuntimeError`` on its first ``n`` attempts, then returns a state.

    Made by :func:`panic_on_attempt`. ``attempts`` counts every call of ``run`` over the
    task's life (all runs, all retries). Its policy is ``TaskConfig()`` (3 retries,
    exponential from 100 ms) unless replaced with :meth:`with_config`.
    """

    def __init__(self, n: int, next_state: S, *, config: TaskConfig | None = None) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigurationError(f"panic_on_attempt: n must be an int >= 0, got {n!r}")
        self.n = n
        self.next_state = next_state
        self.attempts = 0
        self._config = config if config is not None else TaskConfig()

    def with_config(self, config: TaskConfig) -> Self:
        """Replaces the retry policy (register the task after calling this) and returns self."""
        self._config = config
        return self

    def config(self) -> TaskConfig:
        return self._config

    def name(self) -> str:
        return "PanicOnAttempt"

    async def run(self, res: Resources[Any]) -> S:
        self.attempts += 1
        if self.attempts <= self.n:
            raise RuntimeError(
                f"panic_on_attempt: deliberate failure on attempt {self.attempts} of {self.n}"
            )
        return self.next_state

    def __repr__(self) -> str:
        return (
            f"PanicOnAttempt(n={self.n}, next_state={self.next_state!r}, attempts={self.attempts})"
        )


def panic_on_attempt(n: int, next_state: S) -> PanicOnAttempt[S]:
    """A task that raises ``RuntimeError`` on its first ``n`` attempts, then returns ``next_state``.

    Unlike the Rust crate, where a panic is never retried, the failure here is an ordinary
    exception, so the retry policy decides: with the default ``TaskConfig()`` (4 attempts)
    a task with ``n <= 3`` succeeds after ``n`` retries, and ``n >= 4`` makes the run fail
    with ``RetryExhaustedError``. Use ``.with_config(...)`` for another policy, e.g.
    ``TaskConfig.minimal()`` to fail on the first attempt, or a fixed zero delay to keep
    tests fast. The task's name is ``"PanicOnAttempt"``.

    Example::

        flaky = panic_on_attempt(2, Step.DONE).with_config(
            cano.TaskConfig().with_fixed_retry(2, 0)
        )
        wf = cano.Workflow.bare().register(Step.FETCH, flaky).add_exit_state(Step.DONE)
        assert wf.run_sync(Step.FETCH) is Step.DONE
        assert flaky.attempts == 3
    """
    return PanicOnAttempt(n, next_state)


def assert_compensation_ran(actual: Iterable[object], expected: Sequence[object]) -> None:
    """Asserts that compensations ran exactly as ``expected``, in that order.

    ``actual`` is whatever your compensators recorded (ids, outputs, ...). On a mismatch
    the ``AssertionError`` shows both lists, a line diff (``-`` expected, ``+`` actual) and,
    when only the order differs, says so: compensations run in reverse order of
    completion.

    Example::

        log: list[str] = []        # each compensate() appends its task's name
        ...
        assert_compensation_ran(log, ["ship", "charge", "reserve"])
    """
    if isinstance(actual, str | bytes) or isinstance(expected, str | bytes):
        raise TypeError("assert_compensation_ran compares sequences of items, not strings")
    got = list(actual)
    want = list(expected)
    if got == want:
        return
    lines = [
        f"compensations differ from what was expected ({len(want)} expected, {len(got)} ran)",
        f"  expected: {want!r}",
        f"  actual:   {got!r}",
    ]
    if len(got) == len(want) and _same_items(got, want):
        lines.append("  same compensations in a different order (they run newest first)")
    lines.append("  diff (- expected, + actual):")
    diff = difflib.ndiff([repr(x) for x in want], [repr(x) for x in got])
    lines.extend(f"    {line}" for line in diff if not line.startswith("?"))
    raise AssertionError("\n".join(lines))


def _same_items(a: list[object], b: list[object]) -> bool:
    rest = list(b)
    for item in a:
        try:
            rest.remove(item)
        except ValueError:
            return False
    return not rest
