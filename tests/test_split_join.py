"""Split / join: strategies, early decisions, cancellation of losers, bulkhead, timeouts,
errors, observers, the SplitResult handed to the join state, and bad input (API §4, §13.5,
§13.8).

Branches are ordered with ``asyncio.Event``s, never with sleeps: a branch that must lose
waits on an event nobody sets, so an engine that did not stop early would hang (and the
``GUARD`` turns that into a failure). The only real-time values are the join / attempt /
total timeouts themselves, which the tests use as triggers, never as measured thresholds.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import enum
import math
import time
from collections.abc import Callable
from typing import Any

import cano
import pytest

GUARD = 10.0  # safety net so a broken engine fails a test instead of hanging it
TICK = 0.05  # a join / total timeout that only blocked branches can run into


class Step(enum.Enum):
    SPLIT = enum.auto()
    JOIN = enum.auto()
    AFTER = enum.auto()
    DONE = enum.auto()


MINIMAL = cano.TaskConfig.minimal()


class Recorder(cano.WorkflowObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def _add(self, hook: str, *args: Any) -> None:
        self.events.append((hook, args))

    def on_state_enter(self, state: str) -> None:
        self._add("on_state_enter", state)

    def on_task_start(self, task_id: str) -> None:
        self._add("on_task_start", task_id)

    def on_task_success(self, task_id: str) -> None:
        self._add("on_task_success", task_id)

    def on_task_failure(self, task_id: str, error: BaseException) -> None:
        self._add("on_task_failure", task_id, error)

    def on_retry(self, task_id: str, attempt: int) -> None:
        self._add("on_retry", task_id, attempt)

    def on_workflow_timeout(self, elapsed: float, limit: float) -> None:
        self._add("on_workflow_timeout", elapsed, limit)

    def on_cancelled(self, state: str) -> None:
        self._add("on_cancelled", state)

    def hooks(self, name: str) -> list[tuple[Any, ...]]:
        return [args for hook, args in self.events if hook == name]

    def ids(self, name: str) -> list[str]:
        return [args[0] for args in self.hooks(name)]

    def assert_balanced(self) -> None:
        """Every branch start has exactly one success or failure."""
        starts = sorted(self.ids("on_task_start"))
        ends = sorted(self.ids("on_task_success") + self.ids("on_task_failure"))
        assert starts == ends, (starts, ends)


NEVER = object()  # outcome of a branch that blocks until cancelled


class Branch(cano.Task[Step]):
    """A controllable branch.

    It signals ``started``, waits for ``gate`` (if any), then returns ``outcome`` or raises
    it when it is an exception. ``outcome=NEVER`` blocks until cancelled. ``log`` records
    ``start``, ``cancelled`` and ``cleaned`` (its ``finally`` ran, after an await).
    ``fail_first`` makes the first n attempts raise ``RuntimeError``.
    """

    def __init__(
        self,
        name: str,
        outcome: object = Step.DONE,
        *,
        gate: asyncio.Event | None = None,
        config: cano.TaskConfig = MINIMAL,
        fail_first: int = 0,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self._name = name
        self.outcome = outcome
        self.gate = gate
        self._config = config
        self.fail_first = fail_first
        self.on_start = on_start
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self.log: list[str] = []
        self.attempts = 0
        self.tasks: list[asyncio.Task[Any] | None] = []

    def config(self) -> cano.TaskConfig:
        return self._config

    def name(self) -> str:
        return self._name

    async def run(self, res: cano.Resources) -> Step:
        self.attempts += 1
        self.tasks.append(asyncio.current_task())
        self.log.append("start")
        self.started.set()
        if self.on_start is not None:
            self.on_start()
        try:
            if self.attempts <= self.fail_first:
                raise RuntimeError(f"{self._name} attempt {self.attempts}")
            if self.gate is not None:
                await self.gate.wait()
            if self.outcome is NEVER:
                await asyncio.Event().wait()
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            assert isinstance(self.outcome, Step)
            return self.outcome
        except asyncio.CancelledError:
            self.log.append("cancelled")
            raise
        finally:
            # cleanup that needs the loop: the engine must wait for it (§13.9)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            self.log.append("cleaned")
            self.finished.set()

    @property
    def saw_cancel(self) -> bool:
        return "cancelled" in self.log and self.log[-1] == "cleaned"


def ok(name: str, **kw: Any) -> Branch:
    return Branch(name, Step.DONE, **kw)


def bad(name: str, exc: BaseException | None = None, **kw: Any) -> Branch:
    return Branch(name, exc if exc is not None else ValueError(f"{name} failed"), **kw)


def hang(name: str, **kw: Any) -> Branch:
    return Branch(name, NEVER, **kw)


class JoinTask(cano.Task[Step]):
    """The join state's task: records the SplitResult it finds and what losers had done."""

    def __init__(self, watch: list[Branch] | None = None, nxt: Step = Step.DONE) -> None:
        self.results: list[cano.SplitResult] = []
        self.watch = watch or []
        self.logs_at_join: list[list[str]] = []
        self.nxt = nxt

    def config(self) -> cano.TaskConfig:
        return MINIMAL

    async def run(self, res: cano.Resources) -> Step:
        self.results.append(res.get(cano.SPLIT_RESULT_KEY, cano.SplitResult))
        self.logs_at_join = [list(b.log) for b in self.watch]
        return self.nxt

    @property
    def result(self) -> cano.SplitResult:
        assert len(self.results) == 1, self.results
        return self.results[0]


def split_flow(
    branches: list[Any],
    strategy: cano.JoinStrategy,
    join: cano.Task[Step] | None = None,
    *observers: object,
    timeout: float | None = None,
    bulkhead: int | None = None,
    resources: cano.Resources | None = None,
) -> cano.Workflow[Step]:
    wf: cano.Workflow[Step] = (
        cano.Workflow(resources) if resources is not None else cano.Workflow.bare()
    )
    cfg = cano.JoinConfig(strategy, Step.JOIN, timeout=timeout, bulkhead=bulkhead)
    wf.register_split(Step.SPLIT, branches, cfg)
    wf.register(Step.JOIN, join if join is not None else JoinTask())
    wf.add_exit_state(Step.DONE)
    for o in observers:
        wf.with_observer(o)
    return wf


async def run(wf: cano.Workflow[Step], **kw: Any) -> Step:
    return await asyncio.wait_for(wf.orchestrate(Step.SPLIT, **kw), GUARD)


async def fails(wf: cano.Workflow[Step], **kw: Any) -> cano.WorkflowError:
    with pytest.raises(cano.WorkflowError) as info:
        await run(wf, **kw)
    return info.value


def causes(err: cano.WorkflowError) -> list[BaseException | None]:
    return [e.__cause__ for e in err.exceptions]


# --------------------------------------------------------------------------------------------
# bad input: value objects validate at construction (§13.5)


@pytest.mark.parametrize("p", [0, 0.0, -0.5, 1.0000001, 2, math.nan, math.inf, -math.inf])
def test_percentage_outside_zero_one_is_rejected(p: float) -> None:
    with pytest.raises(cano.ConfigurationError) as info:
        cano.JoinStrategy.percentage(p)
    assert isinstance(info.value, ValueError)
    assert "percentage" in str(info.value)


@pytest.mark.parametrize("p", [True, "0.5", None])
def test_percentage_of_a_non_number_is_rejected(p: Any) -> None:
    with pytest.raises(cano.ConfigurationError):
        cano.JoinStrategy.percentage(p)


@pytest.mark.parametrize("p", [1, 1.0, 0.5, 1e-9])
def test_percentage_inside_zero_one_is_accepted(p: float) -> None:
    assert cano.JoinStrategy.percentage(p) == cano.JoinStrategy.percentage(float(p))


@pytest.mark.parametrize("make", [cano.JoinStrategy.quorum, cano.JoinStrategy.partial_results])
@pytest.mark.parametrize("n", [-1, 1.5, True, "2"])
def test_counting_strategies_reject_non_counts(make: Callable[[Any], Any], n: Any) -> None:
    with pytest.raises(cano.ConfigurationError):
        make(n)


@pytest.mark.parametrize("bulkhead", [0, -1, True, 1.5])
def test_bulkhead_below_one_is_rejected(bulkhead: Any) -> None:
    with pytest.raises(cano.ConfigurationError) as info:
        cano.JoinConfig(cano.JoinStrategy.ALL, Step.JOIN, bulkhead=bulkhead)
    assert "bulkhead" in str(info.value)


def test_bulkhead_of_one_is_accepted() -> None:
    assert cano.JoinConfig(cano.JoinStrategy.ALL, Step.JOIN, bulkhead=1).bulkhead == 1


def test_partial_timeout_without_timeout_is_rejected_at_construction() -> None:
    with pytest.raises(cano.ConfigurationError) as info:
        cano.JoinConfig(cano.JoinStrategy.PARTIAL_TIMEOUT, Step.JOIN)
    assert "PARTIAL_TIMEOUT" in str(info.value)


@pytest.mark.parametrize("timeout", [-0.1, math.nan, datetime.timedelta(seconds=-1)])
def test_negative_or_nan_join_timeout_is_rejected(timeout: Any) -> None:
    with pytest.raises(cano.ConfigurationError):
        cano.JoinConfig(cano.JoinStrategy.ALL, Step.JOIN, timeout=timeout)


@pytest.mark.parametrize(
    ("given", "expected"), [(2, 2.0), (0.25, 0.25), (datetime.timedelta(milliseconds=1500), 1.5)]
)
def test_join_timeout_accepts_durations_and_reads_back_as_float_seconds(
    given: Any, expected: float
) -> None:
    cfg = cano.JoinConfig(cano.JoinStrategy.PARTIAL_TIMEOUT, Step.JOIN, timeout=given)
    assert type(cfg.timeout) is float
    assert cfg.timeout == expected


def test_join_config_requires_a_join_strategy() -> None:
    with pytest.raises(cano.ConfigurationError):
        cano.JoinConfig("all", Step.JOIN)  # type: ignore[arg-type]


def test_register_split_requires_a_join_config() -> None:
    with pytest.raises(cano.ConfigurationError):
        cano.Workflow[Step].bare().register_split(
            Step.SPLIT,
            [ok("a")],
            cano.JoinStrategy.ALL,  # type: ignore[arg-type]
        )


def test_strategies_compare_and_print_by_value() -> None:
    J = cano.JoinStrategy
    assert J.quorum(2) == J.quorum(2) != J.quorum(3)
    assert J.ALL != J.ANY
    assert len({J.ALL, J.ALL, J.partial_results(1)}) == 2
    assert repr(J.ALL) == "JoinStrategy.ALL"
    assert repr(J.quorum(2)) == "JoinStrategy.quorum(2)"
    assert repr(J.percentage(0.5)) == "JoinStrategy.percentage(0.5)"


def test_unregistered_join_state_is_rejected_by_validate_not_registration() -> None:
    wf: cano.Workflow[Step] = cano.Workflow.bare()
    wf.register_split(Step.SPLIT, [ok("a")], cano.JoinConfig(cano.JoinStrategy.ALL, Step.JOIN))
    wf.add_exit_state(Step.DONE)  # registration accepted; the graph is checked later
    with pytest.raises(cano.ConfigurationError) as info:
        wf.validate()
    assert "JOIN" in str(info.value)


async def test_unregistered_join_state_fails_the_run_before_any_branch_starts() -> None:
    a = ok("a")
    wf: cano.Workflow[Step] = cano.Workflow.bare()
    wf.register_split(Step.SPLIT, [a], cano.JoinConfig(cano.JoinStrategy.ALL, Step.JOIN))
    wf.add_exit_state(Step.DONE)
    with pytest.raises(cano.ConfigurationError):
        await run(wf)
    assert a.attempts == 0


async def test_join_state_may_be_an_exit_state() -> None:
    wf: cano.Workflow[Step] = cano.Workflow.bare()
    wf.register_split(
        Step.SPLIT, [ok("a"), ok("b")], cano.JoinConfig(cano.JoinStrategy.ALL, Step.DONE)
    )
    wf.add_exit_state(Step.DONE)
    wf.validate()
    assert await run(wf) is Step.DONE


async def test_task_result_split_from_a_single_state_is_a_workflow_error() -> None:
    calls = 0

    async def fan_out() -> cano.TaskResult[Step]:
        nonlocal calls
        calls += 1
        return cano.TaskResult.split([Step.DONE, Step.DONE])

    wf: cano.Workflow[Step] = cano.Workflow.bare()
    wf.register(Step.SPLIT, cano.task(fan_out, config=cano.TaskConfig()))  # retries armed
    wf.add_exit_state(Step.DONE)
    wf.validate()  # not a graph error: it happens at run time
    err = await fails(wf)
    assert "register_split" in str(err)
    assert err.state == "SPLIT"
    assert calls == 1  # the attempt succeeded; nothing to retry (§13.1)


async def test_task_result_split_from_a_router_is_a_workflow_error() -> None:
    class Fan(cano.RouterTask[Step]):
        async def route(self, res: cano.Resources) -> Any:
            return cano.TaskResult.split([Step.DONE])

    wf: cano.Workflow[Step] = cano.Workflow.bare()
    wf.register_router(Step.SPLIT, Fan()).add_exit_state(Step.DONE)
    err = await fails(wf)
    assert "register_split" in str(err)


# --------------------------------------------------------------------------------------------
# every branch is its own asyncio task, all in flight at once


async def test_branches_run_concurrently_each_in_its_own_asyncio_task() -> None:
    n = 5
    everyone_in = asyncio.Event()
    arrived = 0

    def arrive() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == n:
            everyone_in.set()

    # each branch waits until all n are in flight: sequential branches would deadlock
    branches = [ok(f"b{i}", gate=everyone_in, on_start=arrive) for i in range(n)]
    join = JoinTask()
    outer = asyncio.current_task()
    assert await run(split_flow(branches, cano.JoinStrategy.ALL, join)) is Step.DONE
    tasks = [b.tasks[0] for b in branches]
    assert all(t is not None and t is not outer for t in tasks)
    assert len({id(t) for t in tasks}) == n
    assert join.result.successes == [(i, Step.DONE) for i in range(n)]


async def test_branches_see_the_workflow_resources() -> None:
    seen: list[object] = []

    async def reads(res: cano.Resources) -> Step:
        seen.append(res.get("greeting", str))
        return Step.DONE

    res = cano.Resources().insert("greeting", "hello")
    wf = split_flow([cano.task(reads, config=MINIMAL)] * 3, cano.JoinStrategy.ALL, resources=res)
    assert await run(wf) is Step.DONE
    assert seen == ["hello"] * 3


async def test_branches_inherit_the_callers_context_variables() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    async def reads() -> Step:
        seen.append(var.get())
        return Step.DONE

    wf = split_flow([cano.task(reads, config=MINIMAL)] * 2, cano.JoinStrategy.ALL)
    var.set("caller")
    assert await run(wf) is Step.DONE
    assert seen == ["caller", "caller"]


async def test_function_branches_and_a_shared_task_object_get_distinct_ids() -> None:
    rec = Recorder()

    async def probe() -> Step:
        return Step.DONE

    shared = cano.task(probe, name="probe", config=MINIMAL)
    wf = split_flow([shared, shared, ok("named")], cano.JoinStrategy.ALL, None, rec)
    assert await run(wf) is Step.DONE
    assert sorted(rec.ids("on_task_start")) == [
        "JoinTask",
        "named[2]",
        "probe[0]",
        "probe[1]",
    ]  # the split state itself is not a task


# --------------------------------------------------------------------------------------------
# ALL


async def test_all_moves_to_the_join_state_with_every_result_in_index_order() -> None:
    gates = [asyncio.Event() for _ in range(3)]
    branches = [ok(f"b{i}", gate=g) for i, g in enumerate(gates)]

    async def release_backwards() -> None:
        for i in (2, 1, 0):  # finish in reverse order
            await branches[i].started.wait()
            gates[i].set()
            await branches[i].finished.wait()

    join = JoinTask(nxt=Step.DONE)
    wf = split_flow(branches, cano.JoinStrategy.ALL, join)
    out, _ = await asyncio.gather(run(wf), release_backwards())
    assert out is Step.DONE
    r = join.result
    assert r.successes == [(0, Step.DONE), (1, Step.DONE), (2, Step.DONE)]
    assert r.errors == [] and r.cancelled == []
    assert r.completed_count == 3 and r.total_count == 3


async def test_all_fails_fast_on_the_first_failure_and_cancels_the_rest() -> None:
    slow = [hang("slow0"), hang("slow2")]
    boom = ValueError("boom")
    rec = Recorder()
    join = JoinTask()
    wf = split_flow([slow[0], bad("bad1", boom), slow[1]], cano.JoinStrategy.ALL, join, rec)
    err = await fails(wf)
    assert all(b.saw_cancel for b in slow)
    assert join.results == []  # the join state is never entered
    assert "JOIN" not in rec.ids("on_state_enter")
    # §13.8: the failures seen so far
    assert len(err.exceptions) == 1
    assert isinstance(err.exceptions[0], cano.TaskError)
    assert err.exceptions[0].__cause__ is boom
    assert "boom" in str(err) and "bad1[1]" in str(err)
    rec.assert_balanced()


@pytest.mark.parametrize("strategy", [cano.JoinStrategy.ALL, cano.JoinStrategy.ANY])
def test_a_split_with_no_branches_is_refused_at_registration(
    strategy: cano.JoinStrategy,
) -> None:
    with pytest.raises(cano.ConfigurationError, match=r"split state SPLIT: .*at least one branch"):
        split_flow([], strategy, JoinTask())


# --------------------------------------------------------------------------------------------
# ANY


async def test_any_succeeds_on_the_first_success_and_cancels_the_rest() -> None:
    losers = [hang("h0"), hang("h2"), hang("h3")]
    join = JoinTask(watch=losers)
    wf = split_flow([losers[0], ok("win1"), losers[1], losers[2]], cano.JoinStrategy.ANY, join)
    assert await run(wf) is Step.DONE
    assert all(b.saw_cancel for b in losers)
    r = join.result
    assert r.successes == [(1, Step.DONE)]
    assert r.errors == []
    assert r.cancelled == [0, 2, 3]
    assert r.completed_count == 1 and r.total_count == 4


async def test_losers_are_cancelled_and_awaited_before_the_join_state_runs() -> None:
    losers = [hang("h0"), hang("h1")]
    join = JoinTask(watch=losers)
    wf = split_flow([*losers, ok("win")], cano.JoinStrategy.ANY, join)
    assert await run(wf) is Step.DONE
    # each loser's finally (which awaits) had completed when the join task started
    assert join.logs_at_join == [["start", "cancelled", "cleaned"]] * 2


async def test_any_keeps_waiting_through_failures_until_a_success() -> None:
    g_win = asyncio.Event()
    early = [bad("bad0"), bad("bad1")]
    win = ok("win2", gate=g_win)
    loser = hang("h3")

    async def release_after_failures() -> None:
        for b in early:
            await b.finished.wait()
        g_win.set()

    join = JoinTask()
    wf = split_flow([*early, win, loser], cano.JoinStrategy.ANY, join)
    out, _ = await asyncio.gather(run(wf), release_after_failures())
    assert out is Step.DONE
    r = join.result
    assert r.successes == [(2, Step.DONE)]
    assert [i for i, _ in r.errors] == [0, 1]
    assert all(isinstance(e, cano.TaskError) for _, e in r.errors)
    assert r.cancelled == [3]
    assert loser.saw_cancel


async def test_any_fails_when_every_branch_failed_with_all_exceptions() -> None:
    excs = [ValueError(f"e{i}") for i in range(5)]
    wf = split_flow([bad(f"b{i}", e) for i, e in enumerate(excs)], cano.JoinStrategy.ANY)
    err = await fails(wf)
    assert len(err.exceptions) == 5
    assert all(isinstance(e, cano.TaskError) for e in err.exceptions)
    assert sorted(map(str, causes(err))) == [f"e{i}" for i in range(5)]
    # the message lists at most three branch errors and counts the rest
    msg = str(err)
    assert sum(f"e{i}" in msg for i in range(5)) == 3
    assert "2 more" in msg
    assert "SPLIT" in msg


# --------------------------------------------------------------------------------------------
# quorum, percentage, partial_results


async def test_quorum_succeeds_once_n_branches_succeeded() -> None:
    losers = [hang("h1"), hang("h3")]
    join = JoinTask()
    wf = split_flow([ok("a0"), losers[0], ok("a2"), losers[1]], cano.JoinStrategy.quorum(2), join)
    assert await run(wf) is Step.DONE
    assert all(b.saw_cancel for b in losers)
    assert join.result.successes == [(0, Step.DONE), (2, Step.DONE)]
    assert join.result.cancelled == [1, 3]


async def test_quorum_fails_as_soon_as_it_became_unreachable() -> None:
    # quorum(2) of 3: two failures leave at most one success possible
    loser = hang("h0")
    wf = split_flow([loser, bad("b1"), bad("b2")], cano.JoinStrategy.quorum(2))
    err = await fails(wf)
    assert loser.saw_cancel
    assert len(err.exceptions) == 2
    assert "1 of 3" not in str(err) and "0 of 3" in str(err)


@pytest.mark.parametrize(
    "strategy", [cano.JoinStrategy.quorum(3), cano.JoinStrategy.partial_results(3)]
)
def test_a_split_that_can_never_succeed_is_refused_at_registration(
    strategy: cano.JoinStrategy,
) -> None:
    with pytest.raises(cano.ConfigurationError, match=r"can never succeed with 2 branch\(es\)"):
        split_flow([ok("a"), ok("b")], strategy, JoinTask())


async def test_percentage_rounds_the_required_successes_up() -> None:
    # 0.5 of 5 needs ceil(2.5) = 3: two successes and three failures is not enough
    two_of_five = [ok("a0"), ok("a1"), bad("b2"), bad("b3"), bad("b4")]
    err = await fails(split_flow(two_of_five, cano.JoinStrategy.percentage(0.5)))
    assert len(err.exceptions) == 3
    # ... and three successes are enough; the rest are cancelled
    losers = [hang("h3"), hang("h4")]
    join = JoinTask()
    wf = split_flow(
        [ok("a0"), ok("a1"), ok("a2"), *losers], cano.JoinStrategy.percentage(0.5), join
    )
    assert await run(wf) is Step.DONE
    assert [i for i, _ in join.result.successes] == [0, 1, 2]
    assert join.result.cancelled == [3, 4]
    assert all(b.saw_cancel for b in losers)


async def test_percentage_one_behaves_like_all() -> None:
    loser = hang("h0")
    err = await fails(split_flow([loser, bad("b1")], cano.JoinStrategy.percentage(1.0)))
    assert loser.saw_cancel
    assert len(err.exceptions) == 1


async def test_partial_results_stops_at_min_successes() -> None:
    losers = [hang("h0"), hang("h2")]
    join = JoinTask(watch=losers)
    wf = split_flow(
        [losers[0], ok("a1"), losers[1], ok("a3")], cano.JoinStrategy.partial_results(2), join
    )
    assert await run(wf) is Step.DONE
    assert all(b.saw_cancel for b in losers)
    assert join.result.successes == [(1, Step.DONE), (3, Step.DONE)]
    assert join.result.cancelled == [0, 2]


async def test_partial_results_keeps_errors_of_branches_that_finished() -> None:
    join = JoinTask()
    wf = split_flow([bad("b0"), ok("a1"), ok("a2")], cano.JoinStrategy.partial_results(2), join)
    assert await run(wf) is Step.DONE
    assert [i for i, _ in join.result.errors] == [0]
    assert [i for i, _ in join.result.successes] == [1, 2]


async def test_partial_results_fails_when_min_is_out_of_reach() -> None:
    loser = hang("h3")
    wf = split_flow([ok("a0"), bad("b1"), bad("b2"), loser], cano.JoinStrategy.partial_results(3))
    err = await fails(wf)
    assert loser.saw_cancel
    assert len(err.exceptions) == 2


# --------------------------------------------------------------------------------------------
# join timeout and PARTIAL_TIMEOUT


async def test_partial_timeout_succeeds_with_what_finished_before_the_deadline() -> None:
    losers = [hang("h1"), hang("h2")]
    join = JoinTask(watch=losers)
    wf = split_flow([ok("a0"), *losers], cano.JoinStrategy.PARTIAL_TIMEOUT, join, timeout=TICK)
    assert await run(wf) is Step.DONE
    assert all(b.saw_cancel for b in losers)
    assert join.logs_at_join == [["start", "cancelled", "cleaned"]] * 2
    assert join.result.successes == [(0, Step.DONE)]
    assert join.result.cancelled == [1, 2]


async def test_partial_timeout_counts_a_failed_branch_as_finished() -> None:
    join = JoinTask()
    wf = split_flow([bad("b0"), hang("h1")], cano.JoinStrategy.PARTIAL_TIMEOUT, join, timeout=TICK)
    assert await run(wf) is Step.DONE
    assert [i for i, _ in join.result.errors] == [0]
    assert join.result.successes == []
    assert join.result.cancelled == [1]


async def test_partial_timeout_fails_when_nothing_finished() -> None:
    branches = [hang("h0"), hang("h1")]
    wf = split_flow(branches, cano.JoinStrategy.PARTIAL_TIMEOUT, timeout=TICK)
    err = await fails(wf)
    assert all(b.saw_cancel for b in branches)
    assert err.exceptions == []
    assert "timeout" in str(err)


async def test_partial_timeout_does_not_wait_when_every_branch_finished() -> None:
    # a deadline far beyond GUARD: only an early decision lets this test pass
    join = JoinTask()
    wf = split_flow([ok("a0"), ok("a1")], cano.JoinStrategy.PARTIAL_TIMEOUT, join, timeout=3600)
    assert await run(wf) is Step.DONE
    assert join.result.successes == [(0, Step.DONE), (1, Step.DONE)]


@pytest.mark.parametrize(
    ("strategy", "kinds"),
    [
        # each list leaves the join undecided until the timeout
        (cano.JoinStrategy.ALL, "ohh"),
        (cano.JoinStrategy.ANY, "bhh"),
        (cano.JoinStrategy.quorum(2), "obhh"),
        (cano.JoinStrategy.percentage(0.5), "obhh"),
        (cano.JoinStrategy.partial_results(2), "obhh"),
    ],
    ids=lambda v: repr(v) if isinstance(v, cano.JoinStrategy) else v,
)
async def test_join_timeout_fails_every_other_strategy_and_cancels_branches(
    strategy: cano.JoinStrategy, kinds: str
) -> None:
    make = {"o": ok, "b": bad, "h": hang}
    branches = [make[k](f"{k}{i}") for i, k in enumerate(kinds)]
    rec = Recorder()
    join = JoinTask()
    err = await fails(split_flow(branches, strategy, join, rec, timeout=TICK))
    assert not isinstance(err, cano.WorkflowTimeoutError)  # not the run's total timeout
    assert join.results == []
    assert all(b.saw_cancel for b in branches if b.outcome is NEVER)
    assert "timed out" in str(err)
    assert [type(e.__cause__) for e in err.exceptions] == [ValueError] * kinds.count("b")
    rec.assert_balanced()


async def test_a_success_before_the_deadline_is_not_undone_by_a_late_wakeup() -> None:
    # Branch 0 succeeds right away (well before the deadline), then branch 1 blocks the
    # event loop past the deadline, so the engine learns of the success and of the
    # deadline in the same loop turn. ANY was already satisfied before the deadline.
    async def instant() -> Step:
        return Step.DONE  # finishes within its first step, before branch 1 runs

    async def blocks_the_loop() -> Step:
        time.sleep(TICK * 2)
        await asyncio.Event().wait()
        return Step.DONE

    join = JoinTask()
    wf = split_flow(
        [cano.task(instant, config=MINIMAL), cano.task(blocks_the_loop, config=MINIMAL)],
        cano.JoinStrategy.ANY,
        join,
        timeout=TICK,
    )
    assert await run(wf) is Step.DONE
    assert join.result.successes == [(0, Step.DONE)]


async def test_join_timeout_does_not_fire_after_an_early_success() -> None:
    join = JoinTask()
    wf = split_flow([ok("a0"), hang("h1")], cano.JoinStrategy.ANY, join, timeout=TICK)
    assert await run(wf) is Step.DONE
    await asyncio.sleep(TICK * 2)  # a leftover timer must not fire into the caller
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


# --------------------------------------------------------------------------------------------
# per-branch retries and attempt timeouts


async def test_each_branch_has_its_own_retry_loop() -> None:
    rec = Recorder()
    flaky = ok("flaky", fail_first=2, config=MINIMAL.with_fixed_retry(3, 0))
    steady = ok("steady", config=MINIMAL.with_fixed_retry(3, 0))
    join = JoinTask()
    wf = split_flow([steady, flaky], cano.JoinStrategy.ALL, join, rec)
    assert await run(wf) is Step.DONE
    assert (steady.attempts, flaky.attempts) == (1, 3)
    assert rec.hooks("on_retry") == [("flaky[1]", 1), ("flaky[1]", 2)]
    assert rec.ids("on_task_start").count("flaky[1]") == 1  # one start per branch
    rec.assert_balanced()


async def test_branch_error_is_what_the_branch_would_raise_alone() -> None:
    retried = bad("retried", config=MINIMAL.with_fixed_retry(2, 0))
    once = bad("once")
    join = JoinTask()
    wf = split_flow(
        [retried, once, hang("h2")], cano.JoinStrategy.PARTIAL_TIMEOUT, join, timeout=TICK
    )
    assert await run(wf) is Step.DONE
    errors = dict(join.result.errors)
    assert isinstance(errors[0], cano.RetryExhaustedError)
    assert errors[0].attempts == 3
    assert isinstance(errors[0].__cause__, ValueError)
    assert type(errors[1]) is cano.TaskError
    assert isinstance(errors[1].__cause__, ValueError)
    assert (retried.attempts, once.attempts) == (3, 1)
    # the same errors on a failed join
    err = await fails(split_flow([retried, once], cano.JoinStrategy.ANY))
    assert {type(e) for e in err.exceptions} == {cano.RetryExhaustedError, cano.TaskError}


async def test_attempt_timeout_applies_to_each_branch() -> None:
    slow = hang("slow", config=MINIMAL.with_attempt_timeout(TICK))
    other = hang("other")
    err = await fails(split_flow([other, slow], cano.JoinStrategy.ALL))
    assert len(err.exceptions) == 1
    assert isinstance(err.exceptions[0], cano.TaskTimeoutError)
    assert slow.saw_cancel  # the attempt itself was cancelled at its deadline
    assert other.saw_cancel  # and ALL then cancelled the other branch


# --------------------------------------------------------------------------------------------
# bulkhead


async def test_bulkhead_caps_branches_in_flight() -> None:
    in_flight = 0
    peak = 0

    async def tracked() -> Step:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(5):
            await asyncio.sleep(0)
        in_flight -= 1
        return Step.DONE

    join = JoinTask()
    wf = split_flow(
        [cano.task(tracked, config=MINIMAL)] * 7, cano.JoinStrategy.ALL, join, bulkhead=2
    )
    assert await run(wf) is Step.DONE
    assert peak == 2
    assert len(join.result.successes) == 7


async def test_bulkhead_holds_its_slot_across_retries() -> None:
    first = ok("first", fail_first=2, config=MINIMAL.with_fixed_retry(2, 0))
    second = ok("second")
    order: list[str] = []
    first.on_start = lambda: order.append("first")
    second.on_start = lambda: order.append("second")
    wf = split_flow([first, second], cano.JoinStrategy.ALL, bulkhead=1)
    assert await run(wf) is Step.DONE
    assert order == ["first", "first", "first", "second"]


async def test_bulkhead_branches_never_started_are_reported_cancelled() -> None:
    later = [ok(f"later{i}") for i in range(1, 4)]
    join = JoinTask()
    rec = Recorder()
    wf = split_flow([ok("first"), *later], cano.JoinStrategy.ANY, join, rec, bulkhead=1)
    assert await run(wf) is Step.DONE
    assert all(b.attempts == 0 for b in later)
    assert join.result.successes == [(0, Step.DONE)]
    assert join.result.cancelled == [1, 2, 3]
    assert [i for i in rec.ids("on_task_start") if "[" in i] == ["first[0]"]


async def test_bulkhead_with_all_stops_queued_branches_after_a_failure() -> None:
    queued = [ok("q1"), ok("q2")]
    err = await fails(split_flow([bad("b0"), *queued], cano.JoinStrategy.ALL, bulkhead=1))
    assert all(b.attempts == 0 for b in queued)
    assert len(err.exceptions) == 1


# --------------------------------------------------------------------------------------------
# cancellation and total timeout during a split


async def _all_started(branches: list[Branch]) -> None:
    for b in branches:
        await b.started.wait()


async def test_cancellation_token_cancels_every_branch() -> None:
    branches = [hang(f"h{i}") for i in range(3)]
    rec = Recorder()
    token, handle = cano.CancellationToken.new()
    wf = split_flow(branches, cano.JoinStrategy.ALL, None, rec)
    running = asyncio.create_task(run(wf, cancel=token))
    await asyncio.wait_for(_all_started(branches), GUARD)
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError) as info:
        await running
    assert info.value.state == "SPLIT"
    assert info.value.attempt == 0
    assert all(b.saw_cancel for b in branches)
    assert rec.hooks("on_cancelled") == [("SPLIT",)]
    assert sorted(rec.ids("on_task_failure")) == ["h0[0]", "h1[1]", "h2[2]"]
    rec.assert_balanced()


async def test_pre_cancelled_token_starts_no_branch() -> None:
    branches = [ok("a0"), ok("a1")]
    rec = Recorder()
    token, handle = cano.CancellationToken.new()
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await run(split_flow(branches, cano.JoinStrategy.ALL, None, rec), cancel=token)
    assert all(b.attempts == 0 for b in branches)
    assert rec.ids("on_task_start") == []
    assert len(rec.hooks("on_cancelled")) == 1


async def test_asyncio_cancel_of_the_run_cancels_every_branch() -> None:
    branches = [hang(f"h{i}") for i in range(3)]
    rec = Recorder()
    wf = split_flow(branches, cano.JoinStrategy.ALL, None, rec)
    running = asyncio.create_task(wf.orchestrate(Step.SPLIT))
    await asyncio.wait_for(_all_started(branches), GUARD)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert running.cancelled()
    assert all(b.saw_cancel for b in branches)
    assert len(rec.hooks("on_cancelled")) == 1
    rec.assert_balanced()


async def test_total_timeout_during_a_split_cancels_every_branch() -> None:
    branches = [hang(f"h{i}") for i in range(3)]
    rec = Recorder()
    wf = split_flow(branches, cano.JoinStrategy.ALL, None, rec).with_total_timeout(TICK)
    with pytest.raises(cano.WorkflowTimeoutError) as info:
        await run(wf)
    assert info.value.state == "SPLIT"
    assert all(b.saw_cancel for b in branches)
    assert len(rec.hooks("on_workflow_timeout")) == 1
    assert sorted(rec.ids("on_task_failure")) == ["h0[0]", "h1[1]", "h2[2]"]
    rec.assert_balanced()


async def test_cancellation_with_a_bulkhead_only_reports_started_branches() -> None:
    branches = [hang(f"h{i}") for i in range(4)]
    rec = Recorder()
    token, handle = cano.CancellationToken.new()
    wf = split_flow(branches, cano.JoinStrategy.ALL, None, rec, bulkhead=2)
    running = asyncio.create_task(run(wf, cancel=token))
    await asyncio.wait_for(_all_started(branches[:2]), GUARD)
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await running
    assert branches[0].saw_cancel and branches[1].saw_cancel
    assert branches[2].attempts == 0 and branches[3].attempts == 0
    assert sorted(rec.ids("on_task_start")) == ["h0[0]", "h1[1]"]
    rec.assert_balanced()


async def test_cancellation_interrupts_a_branch_sleeping_between_retries() -> None:
    sleeper = bad("sleeper", config=MINIMAL.with_fixed_retry(3, 3600))
    blocker = hang("blocker")
    rec = Recorder()
    token, handle = cano.CancellationToken.new()
    wf = split_flow([sleeper, blocker], cano.JoinStrategy.ANY, None, rec)
    running = asyncio.create_task(run(wf, cancel=token))
    await asyncio.wait_for(_all_started([sleeper, blocker]), GUARD)
    await asyncio.wait_for(sleeper.finished.wait(), GUARD)  # first attempt failed
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await running
    assert sleeper.attempts == 1
    assert blocker.saw_cancel
    rec.assert_balanced()


async def test_a_branch_raising_cancelled_error_by_itself_does_not_hang_the_split() -> None:
    # Not a cancellation by the engine: the branch's own code raises CancelledError (as
    # a single-state task may, which propagates). The split must end, one way or another.
    async def gives_up() -> Step:
        raise asyncio.CancelledError()

    wf = split_flow([cano.task(gives_up, config=MINIMAL)], cano.JoinStrategy.ALL)
    running = asyncio.ensure_future(wf.orchestrate(Step.SPLIT))
    done, _ = await asyncio.wait([running], timeout=1.0)
    if not done:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        pytest.fail("the split never ended")
    # like a single-state task, CancelledError propagates; a WorkflowError is fine too
    assert running.cancelled() or isinstance(running.exception(), cano.WorkflowError)


async def test_no_branch_task_outlives_the_run() -> None:
    before = asyncio.all_tasks()
    wf = split_flow([hang("h0"), ok("a1"), hang("h2")], cano.JoinStrategy.ANY)
    assert await run(wf) is Step.DONE
    assert asyncio.all_tasks() <= before


# --------------------------------------------------------------------------------------------
# observers


async def test_observers_see_the_split_state_and_one_start_and_end_per_branch() -> None:
    rec = Recorder()
    wf = split_flow([ok("a0"), bad("b1"), ok("a2")], cano.JoinStrategy.quorum(2), None, rec)
    assert await run(wf) is Step.DONE
    assert rec.ids("on_state_enter") == ["SPLIT", "JOIN", "DONE"]
    branch_starts = [i for i in rec.ids("on_task_start") if "[" in i]
    assert sorted(branch_starts) == ["a0[0]", "a2[2]", "b1[1]"]
    rec.assert_balanced()


async def test_cancelled_losers_report_a_failure_not_a_success() -> None:
    rec = Recorder()
    wf = split_flow([hang("h0"), ok("a1")], cano.JoinStrategy.ANY, None, rec)
    assert await run(wf) is Step.DONE
    assert "h0[0]" not in rec.ids("on_task_success")
    assert rec.ids("on_task_failure") == ["h0[0]"]
    rec.assert_balanced()


# --------------------------------------------------------------------------------------------
# the SplitResult handed to the join state (§13.8)


async def test_split_result_is_visible_only_to_the_join_state_task() -> None:
    res: cano.Resources = cano.Resources()
    seen_after: list[bool] = []

    async def after(res: cano.Resources) -> Step:
        seen_after.append(cano.SPLIT_RESULT_KEY in res)
        return Step.DONE

    join = JoinTask(nxt=Step.AFTER)
    wf = split_flow([ok("a0")], cano.JoinStrategy.ALL, join, resources=res)
    wf.register(Step.AFTER, cano.task(after, config=MINIMAL))
    assert await run(wf) is Step.DONE
    assert len(join.results) == 1
    assert seen_after == [False]
    assert cano.SPLIT_RESULT_KEY not in res
    assert res.try_get(cano.SPLIT_RESULT_KEY) is None


async def test_a_task_result_single_branch_reports_its_state() -> None:
    async def wrapped() -> cano.TaskResult[Step]:
        return cano.TaskResult.single(Step.DONE)

    join = JoinTask()
    wf = split_flow([cano.task(wrapped, config=MINIMAL)], cano.JoinStrategy.ALL, join)
    assert await run(wf) is Step.DONE
    # returning a bare state is the same as TaskResult.single(state) (§2)
    assert join.result.successes == [(0, Step.DONE)]


async def test_each_visit_of_a_split_state_gets_a_fresh_split_result() -> None:
    visits = 0

    class Loop(cano.Task[Step]):
        def __init__(self) -> None:
            self.results: list[cano.SplitResult] = []

        def config(self) -> cano.TaskConfig:
            return MINIMAL

        async def run(self, res: cano.Resources) -> Step:
            nonlocal visits
            visits += 1
            self.results.append(res.get(cano.SPLIT_RESULT_KEY, cano.SplitResult))
            return Step.SPLIT if visits == 1 else Step.DONE

    flip = 0

    async def flips() -> Step:
        nonlocal flip
        flip += 1
        if flip == 1:
            raise ValueError("first visit fails")
        return Step.DONE

    join = Loop()
    wf = split_flow(
        [ok("a0"), cano.task(flips, name="flips", config=MINIMAL)],
        cano.JoinStrategy.PARTIAL_TIMEOUT,
        join,
        timeout=3600,  # never reached: every branch finishes
    )
    assert await run(wf) is Step.DONE
    first, second = join.results
    assert [i for i, _ in first.errors] == [1]
    assert [i for i, _ in second.successes] == [0, 1]
    assert second.errors == []
    assert first is not second


async def test_concurrent_runs_get_their_own_split_results() -> None:
    run_no: contextvars.ContextVar[int] = contextvars.ContextVar("run_no")
    both_in = asyncio.Event()
    arrived = 0

    async def rendezvous() -> Step:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both_in.set()
        await both_in.wait()  # both runs are inside their split at once
        return Step.DONE

    async def fails_in_run_1() -> Step:
        if run_no.get() == 1:
            raise ValueError("run 1 fails this branch")
        return Step.DONE

    seen: dict[int, cano.SplitResult] = {}

    async def join(res: cano.Resources) -> Step:
        seen[run_no.get()] = res.get(cano.SPLIT_RESULT_KEY, cano.SplitResult)
        return Step.DONE

    wf = split_flow(
        [cano.task(rendezvous, config=MINIMAL), cano.task(fails_in_run_1, config=MINIMAL)],
        cano.JoinStrategy.PARTIAL_TIMEOUT,
        cano.task(join, config=MINIMAL),
        timeout=3600,
    )

    async def one(n: int) -> Step:
        run_no.set(n)
        return await run(wf)

    assert list(await asyncio.gather(one(1), one(2))) == [Step.DONE, Step.DONE]
    assert [i for i, _ in seen[1].errors] == [1]
    assert [i for i, _ in seen[1].successes] == [0]
    assert seen[2].errors == []
    assert [i for i, _ in seen[2].successes] == [0, 1]


# --------------------------------------------------------------------------------------------
# errors


async def test_split_failure_carries_state_path_and_a_readable_message() -> None:
    wf: cano.Workflow[Step] = cano.Workflow.bare()

    async def first() -> Step:
        return Step.SPLIT

    wf.register(Step.AFTER, cano.task(first, config=MINIMAL))
    wf.register_split(
        Step.SPLIT, [bad("b0"), bad("b1")], cano.JoinConfig(cano.JoinStrategy.ALL, Step.JOIN)
    )
    wf.register(Step.JOIN, JoinTask()).add_exit_state(Step.DONE)
    with pytest.raises(cano.WorkflowError) as info:
        await asyncio.wait_for(wf.orchestrate(Step.AFTER), GUARD)
    err = info.value
    assert isinstance(err, cano.CanoError)
    assert err.state == "SPLIT"
    assert err.path == ["AFTER", "SPLIT"]
    assert "SPLIT" in str(err) and "JoinStrategy.ALL" in str(err)
    assert err.exceptions and all(isinstance(e, cano.TaskError) for e in err.exceptions)


async def test_join_state_failure_is_an_ordinary_task_failure() -> None:
    async def broken(res: cano.Resources) -> Step:
        raise KeyError("join broke")

    wf: cano.Workflow[Step] = cano.Workflow.bare()
    wf.register_split(Step.SPLIT, [ok("a0")], cano.JoinConfig(cano.JoinStrategy.ALL, Step.JOIN))
    wf.register(Step.JOIN, cano.task(broken, config=MINIMAL)).add_exit_state(Step.DONE)
    with pytest.raises(cano.TaskError) as info:
        await run(wf)
    assert info.value.state == "JOIN"
    assert isinstance(info.value.__cause__, KeyError)


# --------------------------------------------------------------------------------------------
# checkpoints


async def test_split_state_writes_one_row_and_resume_reruns_the_split(tmp_path: Any) -> None:
    calls = 0

    async def fails_once() -> Step:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("crash-like failure")
        return Step.DONE

    a0 = ok("a0")
    with cano.RedbCheckpointStore(tmp_path / "split.redb") as store:
        join = JoinTask()
        wf = split_flow(
            [a0, cano.task(fails_once, name="once", config=MINIMAL)], cano.JoinStrategy.ALL, join
        ).with_checkpoint_store(store)
        with pytest.raises(cano.WorkflowError):
            await run(wf, workflow_id="w")
        rows = await store.load_run("w")
        assert [(r.state, r.task_id, r.kind) for r in rows] == [
            ("SPLIT", "", cano.RowKind.STATE_ENTRY)
        ]
        out = await asyncio.wait_for(wf.resume_from("w"), GUARD)
        assert out is Step.DONE
        assert (a0.attempts, calls) == (2, 2)  # every branch of the split ran again
        assert join.result.successes == [(0, Step.DONE), (1, Step.DONE)]
        assert await store.load_run("w") == []
