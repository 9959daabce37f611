"""The scheduler: interval, cron and manual flows, backoff, tripping, cancel and shutdown.

Most tests drive time with ``FakeClock`` instead of sleeping: the scheduler's loops sleep
on the clock, and ``advance`` wakes them in deadline order, letting the event loop settle
between wake-ups. Runs are awaited through the clock too, so "slow" runs cost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import cano
import cano.testing
import pytest
from cano import (
    BackoffPolicy,
    ConfigurationError,
    CronSchedule,
    FlowInfo,
    FlowStatus,
    Resources,
    RetryExhaustedError,
    RunningScheduler,
    Scheduler,
    TaskError,
    Workflow,
    WorkflowError,
)
from cano.store import InMemoryCheckpointStore

T0 = datetime(2024, 1, 1, tzinfo=UTC)


class Step(enum.Enum):
    WORK = enum.auto()
    DONE = enum.auto()


# --------------------------------------------------------------------------------------------
# helpers


async def settle(rounds: int = 50) -> None:
    """Lets every ready callback and task run (runs of a trivial workflow need a few)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeClock:
    """Wall time that moves only when told to; sleeps measure monotonic time, like asyncio."""

    def __init__(self, start: datetime = T0) -> None:
        self._start = start
        self._mono = 0.0
        self._offset = timedelta(0)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._mono) + self._offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, self._seq, future))
        self._seq += 1
        await future

    async def advance(self, seconds: float) -> None:
        """Moves time forward, waking each sleeper at its deadline, in order."""
        target = self._mono + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            if future.done():  # its sleeper was cancelled
                continue
            self._mono = max(self._mono, deadline)
            future.set_result(None)
            await settle()
        self._mono = target
        await settle()

    def set_wall_back(self, seconds: float) -> None:
        """The wall clock jumps back (NTP, a VM restore); sleepers are unaffected."""
        self._offset -= timedelta(seconds=seconds)

    def at(self, seconds: float) -> datetime:
        return self._start + timedelta(seconds=seconds)


def work_task(body: Callable[[], Awaitable[None]]) -> cano.Task[Step]:
    """A task that awaits ``body()`` then moves to DONE; no retries."""

    @cano.task(config=cano.TaskConfig.minimal(), name="work")
    async def work(res: Resources[Any]) -> Step:
        await body()
        return Step.DONE

    return work


def workflow(
    body: Callable[[], Awaitable[None]],
    resources: Resources[Any] | None = None,
) -> Workflow[Step]:
    """A one-task workflow running ``work_task(body)``."""
    wf: Workflow[Step] = Workflow(resources if resources is not None else Resources())
    return wf.register(Step.WORK, work_task(body)).add_exit_state(Step.DONE)


class Journal:
    """Records runs: when each started (clock time) and how many run at once."""

    def __init__(self, clock: FakeClock | None = None, *, duration: float = 0.0) -> None:
        self.clock = clock
        self.duration = duration
        self.starts: list[datetime] = []
        self.active = 0
        self.max_active = 0
        self.fail = False

    async def __call__(self) -> None:
        self.starts.append(self.clock.now() if self.clock else datetime.now(UTC))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.duration and self.clock is not None:
                await self.clock.sleep(self.duration)
            elif self.duration:
                await asyncio.sleep(self.duration)
            if self.fail:
                raise RuntimeError("boom")
        finally:
            self.active -= 1


class Lifecycle:
    """A resource counting its setups and teardowns."""

    def __init__(self, *, fail_setup: bool = False) -> None:
        self.setups = 0
        self.teardowns = 0
        self.fail_setup = fail_setup

    async def setup(self) -> None:
        self.setups += 1
        if self.fail_setup:
            raise ConnectionError("database unreachable")

    async def teardown(self) -> None:
        self.teardowns += 1


def info(running: RunningScheduler, flow_id: str) -> FlowInfo:
    status = running.status(flow_id)
    assert status is not None
    return status


async def never() -> None:
    await asyncio.Event().wait()


# --------------------------------------------------------------------------------------------
# interval flows


async def test_interval_flow_runs_at_start_then_a_fixed_delay_after_each_run() -> None:
    clock = FakeClock()
    journal = Journal(clock, duration=5)
    running = (
        await Scheduler().with_clock(clock).every("poll", workflow(journal), Step.WORK, 1).start()
    )
    await clock.advance(20)
    # Runs take 5 s and the interval counts from the end of a run: 0, 6, 12, 18.
    assert journal.starts == [clock.at(0), clock.at(6), clock.at(12), clock.at(18)]
    assert journal.max_active == 1
    flow = info(running, "poll")
    assert flow.run_count == 4
    assert flow.status is FlowStatus.RUNNING
    assert flow.last_run == clock.at(18)
    await running.stop()
    assert info(running, "poll").status is FlowStatus.IDLE  # the in-flight run was cancelled


async def test_interval_runs_never_overlap_in_real_time() -> None:
    journal = Journal(duration=0.02)
    running = await Scheduler().every("fast", workflow(journal), Step.WORK, 0.001).start()
    while len(journal.starts) < 4:
        await asyncio.sleep(0.005)
    await running.stop()
    assert journal.max_active == 1
    assert info(running, "fast").status in (FlowStatus.IDLE, FlowStatus.COMPLETED)


async def test_completed_flow_reports_completed_with_timezone_aware_times() -> None:
    clock = FakeClock()
    running = (
        await Scheduler().with_clock(clock).every("f", workflow(Journal()), Step.WORK, 60).start()
    )
    await settle()
    flow = info(running, "f")
    assert flow == FlowInfo(
        id="f",
        status=FlowStatus.COMPLETED,
        run_count=1,
        last_run=T0,
        failure_streak=0,
        next_eligible=None,
        last_error=None,
    )
    assert flow.last_run is not None and flow.last_run.tzinfo is not None
    assert not running.has_running_flows()
    await running.stop()


# --------------------------------------------------------------------------------------------
# manual flows and trigger


async def test_manual_flow_runs_only_when_triggered() -> None:
    clock = FakeClock()
    journal = Journal()
    running = await Scheduler().with_clock(clock).manual("m", workflow(journal), Step.WORK).start()
    await clock.advance(3600)
    assert journal.starts == []
    assert info(running, "m").status is FlowStatus.IDLE
    await running.trigger("m")
    # trigger returns once the run has started.
    assert info(running, "m").run_count == 1
    await settle()
    assert len(journal.starts) == 1
    assert info(running, "m").status is FlowStatus.COMPLETED
    await running.trigger("m")
    await settle()
    assert info(running, "m").run_count == 2
    await running.stop()


async def test_trigger_returns_once_the_run_started() -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def body() -> None:
        entered.set()
        await gate.wait()

    running = await Scheduler().manual("m", workflow(body), Step.WORK).start()
    await running.trigger("m")
    assert running.has_running_flows()
    assert info(running, "m").status is FlowStatus.RUNNING
    await asyncio.wait_for(entered.wait(), 5)
    gate.set()
    await settle()
    assert info(running, "m").status is FlowStatus.COMPLETED
    await running.stop()


async def test_trigger_errors_unknown_running_and_tripped() -> None:
    gate = asyncio.Event()
    journal = Journal()
    journal.fail = True

    async def slow() -> None:
        await gate.wait()

    running = await (
        Scheduler()
        .manual("slow", workflow(slow), Step.WORK)
        .manual("bad", workflow(journal), Step.WORK)
        .set_backoff("bad", BackoffPolicy(streak_limit=1))
        .start()
    )
    with pytest.raises(WorkflowError, match="'nope'"):
        await running.trigger("nope")
    await running.trigger("slow")
    with pytest.raises(WorkflowError, match=r"'slow'.*already running"):
        await running.trigger("slow")
    await running.trigger("bad")
    await settle()
    assert info(running, "bad").status is FlowStatus.TRIPPED
    with pytest.raises(WorkflowError, match=r"'bad'.*reset_flow"):
        await running.trigger("bad")
    gate.set()
    await running.stop()
    with pytest.raises(WorkflowError, match="stopping"):
        await running.trigger("slow")


async def test_unknown_ids_in_commands_raise_and_status_returns_none() -> None:
    running = await Scheduler().manual("m", workflow(Journal()), Step.WORK).start()
    assert running.status("nope") is None
    with pytest.raises(WorkflowError, match="'nope'"):
        await running.reset_flow("nope")
    with pytest.raises(WorkflowError, match="'nope'"):
        await running.cancel_flow("nope")
    await running.stop()


# --------------------------------------------------------------------------------------------
# backoff, tripping, reset


async def test_failures_back_off_then_trip_at_the_streak_limit() -> None:
    clock = FakeClock()
    journal = Journal(clock)
    journal.fail = True
    policy = BackoffPolicy(initial=10, multiplier=2, max_delay=100, jitter=0, streak_limit=3)
    running = await (
        Scheduler()
        .with_clock(clock)
        .every("flaky", workflow(journal), Step.WORK, 1)
        .set_backoff("flaky", policy)
        .start()
    )
    await settle()
    flow = info(running, "flaky")
    assert flow.status is FlowStatus.BACKOFF
    assert flow.failure_streak == 1
    assert flow.next_eligible == clock.at(10)
    assert isinstance(flow.last_error, TaskError)
    assert isinstance(flow.last_error.__cause__, RuntimeError)
    # The interval loop sleeps out the backoff window (10 s), not just the interval.
    assert clock.sleeps == [10]

    await clock.advance(10)
    flow = info(running, "flaky")
    assert (flow.failure_streak, flow.next_eligible) == (2, clock.at(30))

    await clock.advance(20)
    flow = info(running, "flaky")
    assert flow.status is FlowStatus.TRIPPED
    assert flow.failure_streak == 3
    assert flow.next_eligible is None

    # Tripped: ticks keep coming but nothing runs.
    await clock.advance(500)
    assert info(running, "flaky").run_count == 3
    assert journal.starts == [clock.at(0), clock.at(10), clock.at(30)]
    await running.stop()


async def test_jittered_backoff_stays_in_its_band_and_under_the_cap() -> None:
    policy = BackoffPolicy(initial=1, multiplier=2, max_delay=5, jitter=0.5)
    for _ in range(200):
        assert 1.0 <= policy.compute_delay(2) <= 3.0
        assert 2.5 <= policy.compute_delay(10) <= 5.0
    assert BackoffPolicy(jitter=0).compute_delay(0) == 1.0
    assert not BackoffPolicy().is_tripped(10**6)
    assert BackoffPolicy.with_trip(1).is_tripped(1)
    with pytest.raises(ConfigurationError, match="streak_limit"):  # 0 would trip before failing
        BackoffPolicy.with_trip(0)
    with pytest.raises(ConfigurationError, match="streak_limit"):
        BackoffPolicy(streak_limit=0)
    assert BackoffPolicy(max_delay=timedelta(minutes=1)).max_delay == 60.0
    assert BackoffPolicy() == BackoffPolicy(1.0, 2.0, 300.0, 0.1, None)
    assert "streak_limit=4" in repr(BackoffPolicy(streak_limit=4))


async def test_trigger_bypasses_the_backoff_window_and_success_clears_the_streak() -> None:
    clock = FakeClock()
    journal = Journal(clock)
    journal.fail = True
    running = await (
        Scheduler()
        .with_clock(clock)
        .every("f", workflow(journal), Step.WORK, 1)
        .set_backoff("f", BackoffPolicy(initial=1000, jitter=0))
        .start()
    )
    await settle()
    assert info(running, "f").status is FlowStatus.BACKOFF
    journal.fail = False
    await running.trigger("f")
    await settle()
    flow = info(running, "f")
    assert flow.status is FlowStatus.COMPLETED
    assert (flow.failure_streak, flow.next_eligible, flow.last_error) == (0, None, None)
    assert flow.run_count == 2
    await running.stop()


async def test_reset_flow_clears_a_tripped_flow() -> None:
    journal = Journal()
    journal.fail = True
    running = await (
        Scheduler()
        .manual("m", workflow(journal), Step.WORK)
        .set_backoff("m", BackoffPolicy.with_trip(1))
        .start()
    )
    await running.trigger("m")
    await settle()
    assert info(running, "m").status is FlowStatus.TRIPPED
    await running.reset_flow("m")
    flow = info(running, "m")
    assert flow.status is FlowStatus.IDLE
    assert (flow.failure_streak, flow.next_eligible, flow.last_error) == (0, None, None)
    assert flow.run_count == 1
    journal.fail = False
    await running.trigger("m")
    await settle()
    assert info(running, "m").status is FlowStatus.COMPLETED
    await running.stop()


async def test_reset_during_a_run_keeps_it_running() -> None:
    gate = asyncio.Event()

    async def body() -> None:
        await gate.wait()
        raise RuntimeError("late failure")

    running = await Scheduler().manual("m", workflow(body), Step.WORK).start()
    await running.trigger("m")
    await running.reset_flow("m")
    assert info(running, "m").status is FlowStatus.RUNNING
    gate.set()
    await settle()
    assert info(running, "m").failure_streak == 1
    await running.stop()


async def test_retries_inside_a_run_are_one_failure_for_the_scheduler() -> None:
    @cano.task(config=cano.TaskConfig().with_fixed_retry(2, 0))
    async def always_fails(res: Resources[Any]) -> Step:
        raise ValueError("nope")

    wf: Workflow[Step] = Workflow.bare().register(Step.WORK, always_fails).add_exit_state(Step.DONE)
    running = await Scheduler().manual("m", wf, Step.WORK).start()
    await running.trigger("m")
    await settle()
    flow = info(running, "m")
    assert flow.failure_streak == 1
    assert isinstance(flow.last_error, RetryExhaustedError)
    await running.stop()


# --------------------------------------------------------------------------------------------
# cancel_flow and stop


async def test_cancel_flow_cancels_the_run_and_leaves_the_flow_idle() -> None:
    cleaned: list[str] = []

    async def body() -> None:
        try:
            await never()
        finally:
            cleaned.append("finally ran")

    running = await Scheduler().manual("m", workflow(body), Step.WORK).start()
    await running.cancel_flow("m")  # idle: a no-op
    await running.trigger("m")
    await running.cancel_flow("m")
    flow = info(running, "m")
    assert flow.status is FlowStatus.IDLE
    assert flow.failure_streak == 0
    assert flow.last_error is None
    assert cleaned == ["finally ran"]
    await running.stop()


async def test_stop_cancels_in_flight_runs_and_tears_down_once() -> None:
    lifecycle = Lifecycle()
    cancelled: list[str] = []

    async def body() -> None:
        try:
            await never()
        except asyncio.CancelledError:
            cancelled.append("cancelled")
            raise

    res: Resources[str] = Resources().insert("db", lifecycle)
    running = await Scheduler().manual("a", workflow(body, res), Step.WORK).start()
    await running.trigger("a")
    await running.stop(grace=5)
    assert cancelled == ["cancelled"]
    assert info(running, "a").status is FlowStatus.IDLE
    assert (lifecycle.setups, lifecycle.teardowns) == (1, 1)


async def test_stop_raises_when_a_run_ignores_cancellation_past_grace() -> None:
    lifecycle = Lifecycle()

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await never()  # ignores the token ...
        await never()  # ... but not the hard cancel after the grace period

    res: Resources[str] = Resources().insert("db", lifecycle)
    running = await (
        Scheduler()
        .manual("stubborn", workflow(stubborn, res), Step.WORK)
        .manual("quiet", workflow(Journal(), res), Step.WORK)
        .start()
    )
    await running.trigger("stubborn")
    with pytest.raises(WorkflowError, match=r"timed out after 0.05s.*'stubborn'") as caught:
        await running.stop(grace=0.05)
    assert "'quiet'" not in str(caught.value)
    await settle()
    assert info(running, "stubborn").status is FlowStatus.IDLE
    # The straggler held its own lease: teardown waited for it, and happened once.
    assert (lifecycle.setups, lifecycle.teardowns) == (1, 1)
    # Idempotent: the same outcome again, from stop and from wait.
    with pytest.raises(WorkflowError) as again:
        await running.stop()
    assert again.value is caught.value
    with pytest.raises(WorkflowError):
        await running.wait()


async def test_stop_and_wait_are_idempotent() -> None:
    lifecycle = Lifecycle()
    res: Resources[str] = Resources().insert("db", lifecycle)
    running = await Scheduler().every("e", workflow(Journal(), res), Step.WORK, 60).start()
    waiter = asyncio.create_task(running.wait())
    await settle()
    assert not waiter.done()  # wait() blocks until someone stops the scheduler
    await asyncio.gather(running.stop(), running.stop())
    await running.stop()
    await asyncio.wait_for(waiter, 5)
    await running.wait()
    assert lifecycle.teardowns == 1


async def test_cancelling_a_stop_caller_does_not_interrupt_the_shutdown() -> None:
    lifecycle = Lifecycle()
    res: Resources[str] = Resources().insert("db", lifecycle)
    running = await Scheduler().manual("m", workflow(Journal(), res), Step.WORK).start()
    caller = asyncio.create_task(running.stop())
    await asyncio.sleep(0)
    caller.cancel()
    await running.wait()
    assert lifecycle.teardowns == 1


async def test_running_context_manager_stops_on_exit() -> None:
    lifecycle = Lifecycle()
    res: Resources[str] = Resources().insert("db", lifecycle)
    scheduler = Scheduler().manual("m", workflow(Journal(), res), Step.WORK)
    async with scheduler.running(grace=1) as running:
        assert isinstance(running, RunningScheduler)
        assert lifecycle.setups == 1
        await running.trigger("m")
    assert lifecycle.teardowns == 1
    await running.wait()


# --------------------------------------------------------------------------------------------
# resources


async def test_resources_are_set_up_once_and_torn_down_once_across_many_runs() -> None:
    clock = FakeClock()
    shared = Lifecycle()
    own = Lifecycle()
    journal = Journal()
    res_shared: Resources[str] = Resources().insert("db", shared)
    res_own: Resources[str] = Resources().insert("cache", own)
    running = await (
        Scheduler()
        .with_clock(clock)
        .every("a", workflow(journal, res_shared), Step.WORK, 1)
        .every("b", workflow(journal, res_shared), Step.WORK, 2)
        .manual("c", workflow(journal, res_own), Step.WORK)
        .start()
    )
    await clock.advance(20)
    for _ in range(3):
        await running.trigger("c")
        await settle()
    assert len(journal.starts) >= 30
    assert (shared.setups, shared.teardowns) == (1, 0)
    assert (own.setups, own.teardowns) == (1, 0)
    await running.stop()
    assert (shared.setups, shared.teardowns) == (1, 1)
    assert (own.setups, own.teardowns) == (1, 1)


async def test_a_failing_setup_rolls_back_earlier_flows_and_starts_nothing() -> None:
    first = Lifecycle()
    broken = Lifecycle(fail_setup=True)
    journal = Journal()
    scheduler = (
        Scheduler()
        .every("a", workflow(journal, Resources().insert("ok", first)), Step.WORK, 0.01)
        .every("b", workflow(journal, Resources().insert("bad", broken)), Step.WORK, 0.01)
    )
    with pytest.raises(ConnectionError, match="unreachable"):
        await scheduler.start()
    assert (first.setups, first.teardowns) == (1, 1)
    assert (broken.setups, broken.teardowns) == (1, 0)
    await asyncio.sleep(0.03)
    assert journal.starts == []


# --------------------------------------------------------------------------------------------
# cron flows


async def test_cron_flow_fires_at_each_tick_in_utc() -> None:
    clock = FakeClock(T0 + timedelta(seconds=0.25))
    journal = Journal(clock)
    running = await (
        Scheduler()
        .with_clock(clock)
        .cron("tick", workflow(journal), Step.WORK, "*/10 * * * * *")
        .start()
    )
    await settle()
    assert clock.sleeps == [9.75]
    await clock.advance(35)
    ticks = [T0 + timedelta(seconds=n) for n in (10, 20, 30)]
    assert journal.starts == ticks
    assert info(running, "tick").last_run == ticks[-1]
    await running.stop()


async def test_cron_ticks_missed_during_a_slow_run_are_skipped() -> None:
    clock = FakeClock()
    journal = Journal(clock, duration=25)
    running = await (
        Scheduler()
        .with_clock(clock)
        .cron("slow", workflow(journal), Step.WORK, "*/10 * * * * *")
        .start()
    )
    await clock.advance(60)
    # 10 → runs until 35 (ticks 20 and 30 skipped), 40 → until 65.
    assert journal.starts == [clock.at(10), clock.at(40)]
    assert journal.max_active == 1
    await running.stop()


async def test_cron_waits_again_when_the_wall_clock_went_backwards() -> None:
    clock = FakeClock()
    journal = Journal(clock)
    running = await (
        Scheduler().with_clock(clock).cron("c", workflow(journal), Step.WORK, "0 * * * * *").start()
    )
    await settle()
    assert clock.sleeps == [60]
    clock.set_wall_back(5)
    await clock.advance(60)
    # The 60 s sleep ended at wall time 00:00:55: the firing waits for the wall clock.
    assert journal.starts == []
    assert clock.sleeps[-1] == 5
    await clock.advance(5)
    assert journal.starts == [T0 + timedelta(minutes=1)]
    await running.stop()


async def test_cron_ticks_inside_a_backoff_window_are_skipped() -> None:
    clock = FakeClock()
    journal = Journal(clock)
    journal.fail = True
    running = await (
        Scheduler()
        .with_clock(clock)
        .cron("c", workflow(journal), Step.WORK, "*/10 * * * * *")
        .set_backoff("c", BackoffPolicy(initial=25, jitter=0))
        .start()
    )
    await clock.advance(40)
    # Fails at 10 → eligible again at 35: ticks 20 and 30 skipped, 40 runs.
    assert journal.starts == [clock.at(10), clock.at(40)]
    assert info(running, "c").failure_streak == 2
    await running.stop()


async def test_a_cron_schedule_that_never_fires_again_ends_quietly() -> None:
    clock = FakeClock()
    journal = Journal(clock)
    running = await (
        Scheduler()
        .with_clock(clock)
        .cron("past", workflow(journal), Step.WORK, "0 0 0 1 1 * 2020")
        .start()
    )
    await clock.advance(10)
    assert journal.starts == []
    await running.stop()


def test_cron_schedule_next_after() -> None:
    schedule = CronSchedule("0 0 9 * * *")
    assert schedule.expression == "0 0 9 * * *"
    nine = datetime(2024, 3, 1, 9, tzinfo=UTC)
    assert schedule.next_after((nine - timedelta(seconds=1)).timestamp()) == nine.timestamp()
    assert schedule.next_after(nine.timestamp()) == (nine + timedelta(days=1)).timestamp()
    assert CronSchedule("0 0 0 1 1 * 2020").next_after(T0.timestamp()) is None
    with pytest.raises(ConfigurationError, match=r'"0 9 \* \* \*".*6 or 7 fields'):
        CronSchedule("0 9 * * *")
    with pytest.raises(ConfigurationError, match=r"next_after\(ts\): expected a finite number"):
        schedule.next_after(float("nan"))


# --------------------------------------------------------------------------------------------
# configuration errors


def test_registration_errors_name_the_flow() -> None:
    wf = workflow(Journal())
    scheduler = Scheduler().manual("dup", wf, Step.WORK)
    with pytest.raises(ConfigurationError, match="'dup' already exists"):
        scheduler.manual("dup", wf, Step.WORK)
    with pytest.raises(ConfigurationError, match=r"'bad-cron'.*invalid cron expression"):
        scheduler.cron("bad-cron", wf, Step.WORK, "every day")
    with pytest.raises(ConfigurationError, match=r"'zero'.*interval"):
        scheduler.every("zero", wf, Step.WORK, 0)
    with pytest.raises(ConfigurationError, match=r"'neg'.*interval"):
        scheduler.every("neg", wf, Step.WORK, -1)
    with pytest.raises(ConfigurationError, match=r"'nan'.*interval"):
        scheduler.every("nan", wf, Step.WORK, float("nan"))
    with pytest.raises(ConfigurationError, match="'ghost'"):
        scheduler.set_backoff("ghost", BackoffPolicy())
    with pytest.raises(ConfigurationError, match=r"'dup'.*BackoffPolicy"):
        scheduler.set_backoff("dup", "fast please")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"'wf'.*cano.Workflow"):
        scheduler.manual("wf", "not a workflow", Step.WORK)  # type: ignore[arg-type]
    assert len(scheduler) == 1 and "dup" in scheduler
    assert scheduler.every("td", wf, Step.WORK, timedelta(seconds=2)) is scheduler


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"initial": -1}, "initial"),
        ({"max_delay": float("nan")}, "max_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 1.5}, "jitter"),
        ({"streak_limit": -1}, "streak_limit"),
    ],
)
def test_backoff_policy_validates(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        BackoffPolicy(**kwargs)


async def test_start_validates_every_workflow_before_setting_anything_up() -> None:
    lifecycle = Lifecycle()
    good = workflow(Journal(), Resources().insert("db", lifecycle))
    no_exit: Workflow[Step] = Workflow.bare().register(Step.WORK, work_task(Journal()))
    with pytest.raises(ConfigurationError, match=r"'broken'.*exit"):
        await Scheduler().manual("ok", good, Step.WORK).manual("broken", no_exit, Step.WORK).start()
    with pytest.raises(ConfigurationError, match=r"'lost'.*initial state elsewhere"):
        await Scheduler().manual("ok", good, Step.WORK).manual("lost", good, "elsewhere").start()
    assert lifecycle.setups == 0


async def test_a_scheduler_starts_once_and_takes_no_flows_after() -> None:
    scheduler = Scheduler().manual("m", workflow(Journal()), Step.WORK)
    running = await scheduler.start()
    with pytest.raises(ConfigurationError, match="already started"):
        await scheduler.start()
    with pytest.raises(ConfigurationError, match=r"'late'.*already started"):
        scheduler.manual("late", workflow(Journal()), Step.WORK)
    await running.stop()


# --------------------------------------------------------------------------------------------
# logging, checkpoint seam, listing


async def test_events_are_logged_on_the_cano_logger(caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal()
    journal.fail = True
    caplog.set_level(logging.INFO, logger="cano")
    running = await (
        Scheduler()
        .manual("ok", workflow(Journal()), Step.WORK)
        .manual("bad", workflow(journal), Step.WORK)
        .set_backoff("bad", BackoffPolicy(streak_limit=2, jitter=0))
        .start()
    )
    await running.trigger("ok")
    await running.trigger("bad")
    await settle()
    await running.reset_flow("bad")
    for _ in range(2):
        await running.trigger("bad")
        await settle()
    await running.stop()
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "cano")
    assert "flow 'ok': run 1 started" in text
    assert "flow 'ok': run 1 finished in state DONE" in text
    assert "flow 'bad': run 1 failed: TaskError" in text
    assert "flow 'bad': backing off 1.000s" in text
    assert "flow 'bad': tripped after 2 consecutive failures" in text
    assert "scheduler stopped" in text


async def test_a_checkpointed_workflow_gets_a_per_firing_workflow_id() -> None:
    seen: list[dict[str, Any]] = []

    class Recording(Workflow[Step]):
        """Records what the scheduler passes; the run itself is a stand-in."""

        def orchestrate(self, initial: Step, **kwargs: Any) -> Any:
            seen.append(kwargs)

            async def done() -> Step:
                return Step.DONE

            return done()

    clock = FakeClock()
    durable = Recording(Resources()).register(Step.WORK, work_task(Journal()))
    durable.add_exit_state(Step.DONE)
    durable.with_checkpoint_store(cano.InMemoryCheckpointStore())
    plain = Recording(Resources()).register(Step.WORK, work_task(Journal()))
    plain.add_exit_state(Step.DONE)
    running = await (
        Scheduler()
        .with_clock(clock)
        .cron("nightly", durable, Step.WORK, "0 0 0 * * *")
        .manual("plain", plain, Step.WORK)
        .start()
    )
    await clock.advance(86400)
    await running.trigger("plain")
    await settle()
    await running.stop()
    assert seen[0]["workflow_id"] == "nightly:2024-01-02T00:00:00+00:00"
    assert isinstance(seen[0]["cancel"], cano.CancellationToken)
    assert "workflow_id" not in seen[1]


async def test_each_failed_firing_of_a_checkpointed_flow_keeps_its_own_log() -> None:
    store = InMemoryCheckpointStore()
    clock = FakeClock()
    journal = Journal(clock)
    journal.fail = True
    wf = workflow(journal).with_checkpoint_store(store)
    running = await (
        Scheduler()
        .with_clock(clock)
        .cron("nightly", wf, Step.WORK, "0 0 0 * * *")
        .set_backoff("nightly", BackoffPolicy(initial=1, jitter=0))
        .start()
    )
    await clock.advance(2 * 86400)
    await running.stop()
    assert info(running, "nightly").failure_streak == 2
    assert sorted(await store.list_runs()) == [
        "nightly:2024-01-02T00:00:00+00:00",
        "nightly:2024-01-03T00:00:00+00:00",
    ]


async def test_list_is_in_registration_order() -> None:
    running = await (
        Scheduler()
        .manual("z", workflow(Journal()), Step.WORK)
        .every("a", workflow(Journal()), Step.WORK, 60)
        .cron("m", workflow(Journal()), Step.WORK, "0 0 0 1 1 *")
        .start()
    )
    assert [f.id for f in running.list()] == ["z", "a", "m"]
    await running.stop()


async def test_scheduler_events_reach_the_workflows_observers() -> None:
    class Flow(enum.Enum):
        WORK = enum.auto()
        DONE = enum.auto()

    attempts = {"n": 0}

    async def work() -> Flow:
        attempts["n"] += 1
        if attempts["n"] <= 2:
            raise RuntimeError(f"failure {attempts['n']}")
        return Flow.DONE

    recorder = cano.testing.RecordingObserver()
    events: list[tuple[str, tuple[object, ...]]] = []

    class FlowEvents(cano.WorkflowObserver):
        def on_flow_start(self, flow_id: str, run: int) -> None:
            events.append(("start", (flow_id, run)))

        def on_flow_finish(self, flow_id: str, outcome: str, duration: float) -> None:
            assert duration >= 0
            events.append(("finish", (flow_id, outcome)))

        def on_flow_backoff(self, flow_id: str, streak: int, delay: float) -> None:
            events.append(("backoff", (flow_id, streak)))

        def on_flow_tripped(self, flow_id: str, streak: int) -> None:
            events.append(("tripped", (flow_id, streak)))

    wf = (
        cano.Workflow[Flow]
        .bare()
        .register(Flow.WORK, cano.task(work, config=cano.TaskConfig.minimal()))
        .add_exit_state(Flow.DONE)
        .with_observer(FlowEvents())
        .with_observer(recorder)
    )
    scheduler = (
        cano.Scheduler()
        .manual("job", wf, Flow.WORK)
        .set_backoff("job", cano.BackoffPolicy(initial=0.001, streak_limit=2))
    )
    async with scheduler.running() as running:
        for _ in range(2):
            await running.trigger("job")
            while running.has_running_flows():
                await asyncio.sleep(0.001)
        await running.reset_flow("job")
        await running.trigger("job")
        while running.has_running_flows():
            await asyncio.sleep(0.001)
    assert events == [
        ("start", ("job", 1)),
        ("finish", ("job", "failed")),
        ("backoff", ("job", 1)),
        ("start", ("job", 2)),
        ("finish", ("job", "failed")),
        ("tripped", ("job", 2)),
        ("start", ("job", 3)),
        ("finish", ("job", "completed")),
    ]
    assert recorder.states_entered.count("WORK") == 3
