"""Scheduled runs of workflows: every N seconds, on a cron schedule, or on demand.

Register flows on a :class:`Scheduler`, start it, and stop it when done::

    scheduler = (
        cano.Scheduler()
        .every("sync", sync_workflow, Step.START, interval=30)
        .cron("report", report_workflow, Step.START, "0 0 9 * * *")  # 09:00:00 UTC daily
        .manual("backfill", backfill_workflow, Step.START)
        .set_backoff("sync", cano.BackoffPolicy(initial=5, streak_limit=10))
    )
    async with scheduler.running() as running:
        await running.trigger("backfill")
        ...  # runs happen in the background until the block exits

How flows run:

- an ``every`` flow runs once at start, then ``interval`` seconds after each run *ends*
  (fixed delay, so runs never pile up);
- a ``cron`` flow runs at each firing of its expression (six fields, seconds first, in
  UTC); firings that pass while a run is in progress are skipped, not queued;
- a ``manual`` flow runs only when :meth:`RunningScheduler.trigger` is called;
- runs of one flow never overlap: a tick that comes while the flow runs is skipped;
- a failed run puts the flow in ``BACKOFF`` per its :class:`BackoffPolicy`; ticks inside
  the window are skipped, and once ``streak_limit`` consecutive runs failed the flow is
  ``TRIPPED`` until :meth:`RunningScheduler.reset_flow`. A cancelled run is not a failure;
- each workflow's resources are set up once at start and torn down once at stop, not
  around every run;
- a workflow with a checkpoint store gets one workflow id per run,
  ``"{flow_id}:{fire time in ISO 8601}"``, so every scheduled run has its own log;
- with ``Scheduler(client=cano.Client(store))`` each tick is *enqueued* under that id
  instead of run here (Workers run it): enqueuing is idempotent, so any number of
  schedulers on one store fire each tick once; ``every`` ticks then fall on a grid aligned
  to the Unix epoch, so schedulers started at different moments agree on them. Backoff
  and tripping do not apply then (the run's record tells how it went).

Events (flow started, finished, failed, backing off, tripped, skipped) are logged on the
``cano`` logger.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import enum
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from cano._core import BackoffPolicy, CancellationHandle, CancellationToken, CronSchedule
from cano._enqueued_ticks import enqueue_cron, enqueue_every, enqueue_tick
from cano._values import Duration, seconds
from cano.errors import ConfigurationError, WorkflowCancelledError, WorkflowError
from cano.observer import ObserverHub
from cano.resources import Resources
from cano.runs import Client
from cano.workflow import Workflow, state_label

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "BackoffPolicy",
    "Clock",
    "CronSchedule",
    "FlowInfo",
    "FlowStatus",
    "RunningScheduler",
    "Scheduler",
    "SystemClock",
]

logger = logging.getLogger("cano")

# timedelta cannot hold an unbounded backoff; ~31 years is "never" for a scheduler.
_LONGEST_BACKOFF = 1e9


class FlowStatus(enum.Enum):
    """Where a scheduled flow stands."""

    IDLE = "idle"
    """Not running: never ran, was cancelled, or was reset."""
    RUNNING = "running"
    """A run is in flight."""
    COMPLETED = "completed"
    """The last run reached an exit state."""
    BACKOFF = "backoff"
    """The last run failed; scheduled runs wait until ``next_eligible``."""
    TRIPPED = "tripped"
    """Too many consecutive failures; no runs until ``reset_flow``."""


@dataclass(frozen=True, slots=True)
class FlowInfo:
    """A snapshot of one flow, as returned by :meth:`RunningScheduler.status`.

    Datetimes are timezone-aware UTC. ``run_count`` and ``last_run`` are stamped when a
    run starts; ``last_error`` is the error of the last failed run of the current failure
    streak (``None`` after a success or a reset).
    """

    id: str
    status: FlowStatus
    run_count: int
    last_run: datetime | None
    failure_streak: int
    next_eligible: datetime | None
    last_error: BaseException | None


class Clock(Protocol):
    """The scheduler's view of time: inject one to drive a scheduler in tests.

    ``now()`` returns a timezone-aware UTC datetime; ``sleep(seconds)`` waits that long in
    the clock's time and must be cancellable (``stop`` cancels the sleeping loops).
    """

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock UTC time and ``asyncio.sleep``: the default clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(eq=False, slots=True)
class _Flow:
    """One registered flow: how it is scheduled, and its live state once started."""

    id: str
    workflow: Workflow[Any]
    initial: object
    interval: float | None = None
    cron: CronSchedule | None = None
    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    status: FlowStatus = FlowStatus.IDLE
    run_count: int = 0
    last_run: datetime | None = None
    streak: int = 0
    next_eligible: datetime | None = None
    last_error: BaseException | None = None
    cancel: CancellationHandle | None = None
    run: asyncio.Task[None] | None = None
    hub: ObserverHub | None = None
    run_started: float = 0.0

    def notify(self, hook: str, *args: object) -> None:
        """Tells the flow's workflow observers about a scheduler event."""
        if self.hub is None:
            observers = self.workflow._observers
            if not observers:
                return
            self.hub = ObserverHub(observers)
        getattr(self.hub, hook)(self.id, *args)

    def elapsed(self) -> float:
        if not self.run_started:
            return 0.0  # cancelled before it started
        return max(asyncio.get_running_loop().time() - self.run_started, 0.0)

    def info(self) -> FlowInfo:
        return FlowInfo(
            id=self.id,
            status=self.status,
            run_count=self.run_count,
            last_run=self.last_run,
            failure_streak=self.streak,
            next_eligible=self.next_eligible,
            last_error=self.last_error,
        )

    def describe(self) -> str:
        if self.interval is not None:
            return f"every {self.interval:g}s"
        if self.cron is not None:
            return f"cron {self.cron.expression!r}"
        return "manual"


class Scheduler:
    """Runs workflows on intervals, cron schedules or on demand.

    Builder methods return the scheduler so calls chain; every registration error raises
    :class:`cano.ConfigurationError` naming the flow. Flows may use different state types
    and different workflows; flows sharing one :class:`cano.Resources` share its setup.
    """

    def __init__(self, *, client: Client | None = None) -> None:
        if client is not None and not isinstance(client, Client):
            raise ConfigurationError(
                f"Scheduler(client): expected a cano.Client, got {client!r:.80}"
            )
        self._flows: dict[str, _Flow] = {}
        self._clock: Clock = SystemClock()
        self._started = False
        self._client = client

    # ----- registration -----------------------------------------------------------------

    def every(
        self, flow_id: str, workflow: Workflow[Any], initial: object, interval: Duration
    ) -> Self:
        """Runs ``workflow`` from ``initial`` at start, then ``interval`` seconds after each
        run ends. ``interval`` must be positive and finite."""
        secs = seconds(interval, f"flow {flow_id!r:.80}: every(interval)")
        if secs <= 0:
            raise ConfigurationError(
                f"flow {flow_id!r:.80}: every(interval) must be a positive number of seconds, "
                f"got {interval!r}"
            )
        self._add(_Flow(flow_id, workflow, initial, interval=secs))
        return self

    def cron(self, flow_id: str, workflow: Workflow[Any], initial: object, expr: str) -> Self:
        """Runs ``workflow`` at each firing of ``expr``: six fields with seconds first
        (``"0 */5 * * * *"`` = every five minutes), or seven with a year; in UTC."""
        if not isinstance(expr, str):
            raise ConfigurationError(
                f"flow {flow_id!r:.80}: cron(expr) must be a str, got {expr!r:.80}"
            )
        try:
            schedule = CronSchedule(expr)
        except ConfigurationError as err:
            raise ConfigurationError(f"flow {flow_id!r}: {err}") from None
        self._add(_Flow(flow_id, workflow, initial, cron=schedule))
        return self

    def manual(self, flow_id: str, workflow: Workflow[Any], initial: object) -> Self:
        """Registers ``workflow`` to run only when triggered."""
        self._add(_Flow(flow_id, workflow, initial))
        return self

    def set_backoff(self, flow_id: str, policy: BackoffPolicy) -> Self:
        """Replaces the default backoff policy (1 s doubling to 5 min, never trips)."""
        flow = self._flows.get(flow_id)
        if flow is None:
            raise ConfigurationError(f"set_backoff: no flow {flow_id!r} is registered")
        if not isinstance(policy, BackoffPolicy):
            raise ConfigurationError(
                f"set_backoff(policy): flow {flow_id!r} needs a cano.BackoffPolicy, "
                f"got {policy!r:.80}"
            )
        flow.policy = policy
        return self

    def with_clock(self, clock: Clock) -> Self:
        """Uses ``clock`` instead of wall-clock time (mostly for tests)."""
        self._clock = clock
        return self

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, flow_id: object) -> bool:
        return flow_id in self._flows

    def _add(self, flow: _Flow) -> None:
        if self._started:
            raise ConfigurationError(
                f"flow {flow.id!r}: the scheduler is already started; register flows before start()"
            )
        if not isinstance(flow.id, str) or not flow.id:
            raise ConfigurationError(f"flow_id must be a non-empty str, got {flow.id!r:.80}")
        if not isinstance(flow.workflow, Workflow):
            raise ConfigurationError(
                f"flow {flow.id!r}: expected a cano.Workflow, got {flow.workflow!r}"
            )
        if flow.id in self._flows:
            raise ConfigurationError(f"flow {flow.id!r} already exists")
        self._flows[flow.id] = flow

    # ----- starting ---------------------------------------------------------------------

    async def start(self) -> RunningScheduler:
        """Validates every flow, sets resources up, and starts the schedules.

        Raises :class:`cano.ConfigurationError` naming the flow when a workflow is invalid
        or its initial state is unknown (nothing is set up then). Resources are set up
        once, in registration order; if a setup raises, those already set up are torn
        down in reverse order and the error propagates unchanged. A scheduler starts once.
        """
        if self._started:
            raise ConfigurationError("this scheduler was already started; build a new one")
        flows = list(self._flows.values())
        for flow in flows:
            _validate(flow)
            if self._client is not None and flow.workflow.name is None:
                raise ConfigurationError(
                    f"flow {flow.id!r}: a scheduler with a client enqueues runs by workflow "
                    "name: give the workflow one (Workflow(name=...) or with_name)"
                )
        if self._client is not None:
            self._started = True
            running = RunningScheduler(flows, self._clock, [], self._client)
            running._launch()
            logger.info("scheduler started with %d flow(s), enqueuing ticks", len(flows))
            return running
        self._started = True
        leases: list[Resources[Any]] = []
        try:
            for res in _distinct_resources(flows):
                await res._acquire()
                leases.append(res)
        except BaseException:
            for res in reversed(leases):
                await res._release()
            self._started = False
            raise
        running = RunningScheduler(flows, self._clock, leases)
        running._launch()
        logger.info("scheduler started with %d flow(s)", len(flows))
        return running

    @contextlib.asynccontextmanager
    async def running(self, *, grace: Duration = 30) -> AsyncIterator[RunningScheduler]:
        """``async with scheduler.running() as r:`` starts the scheduler, and stops it with
        ``r.stop(grace)`` when the block exits (also on error or cancellation)."""
        limit = seconds(grace, "Scheduler.running(grace)")
        running = await self.start()
        try:
            yield running
        finally:
            await running.stop(limit)

    def __repr__(self) -> str:
        flows = ", ".join(f"{f.id!r}: {f.describe()}" for f in self._flows.values())
        return f"<cano.Scheduler {{{flows}}}>"


def _validate(flow: _Flow) -> None:
    try:
        flow.workflow.validate()
    except ConfigurationError as err:
        raise ConfigurationError(f"flow {flow.id!r}: {err}") from err
    wf = flow.workflow
    try:
        known = flow.initial in wf.registered_states or flow.initial in wf.exit_states
    except TypeError:
        known = False
    if not known:
        raise ConfigurationError(
            f"flow {flow.id!r}: initial state {state_label(flow.initial)} is neither "
            "registered nor an exit state of its workflow"
        )


def _distinct_resources(flows: list[_Flow]) -> list[Resources[Any]]:
    seen: dict[int, Resources[Any]] = {}
    for flow in flows:
        res = flow.workflow.resources
        seen.setdefault(id(res), res)
    return list(seen.values())


class RunningScheduler:
    """A started scheduler: trigger, inspect, reset, cancel and stop its flows.

    Obtained from :meth:`Scheduler.start` or ``Scheduler.running()``; belongs to the event
    loop it was started on. Always stop it: ``stop`` cancels in-flight runs and tears the
    resources down.
    """

    def __init__(
        self,
        flows: builtins.list[_Flow],
        clock: Clock,
        leases: builtins.list[Resources[Any]],
        client: Client | None = None,
    ) -> None:
        self._client = client
        self._flows = {flow.id: flow for flow in flows}
        self._clock = clock
        self._leases = leases
        self._loops: builtins.list[asyncio.Task[None]] = []
        self._stopping = False
        self._shutdown: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()

    def _launch(self) -> None:
        for flow in self._flows.values():
            if self._client is not None and flow.interval is not None:
                loop = enqueue_every(self._client, flow, self._clock, flow.interval)
            elif self._client is not None and flow.cron is not None:
                loop = enqueue_cron(self._client, flow, self._clock)
            elif flow.interval is not None:
                loop = self._every(flow, flow.interval)
            elif flow.cron is not None:
                loop = self._cron(flow, flow.cron)
            else:
                continue
            task = asyncio.create_task(loop, name=f"cano-scheduler:{flow.id}")
            task.add_done_callback(_log_loop_crash)
            self._loops.append(task)

    # ----- commands ---------------------------------------------------------------------

    async def trigger(self, flow_id: str) -> None:
        """Starts a run of ``flow_id`` now, ignoring any backoff window; returns once the
        run has started (it goes on in the background).

        Raises :class:`cano.WorkflowError` when the flow is unknown, already running,
        tripped (call :meth:`reset_flow` first) or the scheduler is stopping.
        """
        flow = self._flow(flow_id)
        if self._stopping:
            raise WorkflowError(f"cannot trigger flow {flow_id!r}: the scheduler is stopping")
        if self._client is not None:  # enqueued: a Worker runs it
            await enqueue_tick(self._client, flow, self._clock.now())
            return
        if flow.status is FlowStatus.RUNNING:
            raise WorkflowError(f"cannot trigger flow {flow_id!r}: it is already running")
        if flow.status is FlowStatus.TRIPPED:
            raise WorkflowError(
                f"cannot trigger flow {flow_id!r}: it tripped after {flow.streak} consecutive "
                "failures; call reset_flow before triggering"
            )
        dispatched = self._dispatch(flow, self._clock.now())
        if dispatched is None:  # unreachable: checked above, and nothing awaited since
            raise WorkflowError(f"cannot trigger flow {flow_id!r} now")
        # shield: a caller that stops waiting must not stop the run.
        await asyncio.shield(dispatched[1])

    async def reset_flow(self, flow_id: str) -> None:
        """Clears the failure streak, backoff window and last error; the flow becomes
        ``IDLE`` (a run in flight keeps running). Unknown id → :class:`cano.WorkflowError`.
        """
        flow = self._flow(flow_id)
        flow.streak = 0
        flow.next_eligible = None
        flow.last_error = None
        if flow.status is not FlowStatus.RUNNING:
            flow.status = FlowStatus.IDLE
        logger.info("flow %r: reset", flow_id)

    async def cancel_flow(self, flow_id: str) -> None:
        """Cancels the run in flight (no-op when idle) and waits for it to wind down: its
        task sees ``asyncio.CancelledError``, compensations drain, and the flow becomes
        ``IDLE`` with its failure streak untouched (a rollback that fails counts as a
        failure). Wrap in ``asyncio.timeout`` to bound the wait; the run is not affected.
        Unknown id → :class:`cano.WorkflowError`.
        """
        flow = self._flow(flow_id)
        run, handle = flow.run, flow.cancel
        if run is None or handle is None:
            return
        logger.info("flow %r: cancelling run %d", flow_id, flow.run_count)
        handle.cancel()
        await asyncio.wait({run})

    def status(self, flow_id: str) -> FlowInfo | None:
        """A snapshot of ``flow_id``, or ``None`` when no such flow exists."""
        flow = self._flows.get(flow_id)
        return flow.info() if flow is not None else None

    def list(self) -> builtins.list[FlowInfo]:
        """Snapshots of every flow, in registration order."""
        return [flow.info() for flow in self._flows.values()]

    def has_running_flows(self) -> bool:
        """True while any run is in flight."""
        return any(flow.status is FlowStatus.RUNNING for flow in self._flows.values())

    async def stop(self, grace: Duration = 30) -> None:
        """Stops the schedules, cancels every run in flight through its token, waits up to
        ``grace`` seconds for them, then tears the resources down once.

        Raises :class:`cano.WorkflowError` naming the flows whose runs were still going
        after ``grace`` (they are then cancelled the asyncio way, and resources they still
        use are torn down when they end). Idempotent: later calls (and :meth:`wait`)
        return, or raise, the first call's outcome. Cancelling a caller does not interrupt
        the shutdown.
        """
        limit = seconds(grace, "stop(grace)")
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(
                self._shut_down(limit), name="cano-scheduler:shutdown"
            )
            # The outcome is read by stop() and wait(); don't log it as never retrieved.
            self._shutdown.add_done_callback(_retrieve)
        await asyncio.shield(self._shutdown)

    async def wait(self) -> None:
        """Waits until the scheduler has stopped (blocks until someone calls ``stop``),
        then returns or raises like ``stop`` did."""
        await self._finished.wait()
        if self._shutdown is not None:
            await asyncio.shield(self._shutdown)

    def __repr__(self) -> str:
        state = "stopping" if self._stopping else "running"
        flows = ", ".join(f"{f.id!r}: {f.status.name}" for f in self._flows.values())
        return f"<cano.RunningScheduler {state} {{{flows}}}>"

    # ----- schedules --------------------------------------------------------------------

    async def _every(self, flow: _Flow, interval: float) -> None:
        while True:
            dispatched = self._dispatch(flow, self._clock.now())
            if dispatched is not None:
                await asyncio.wait({dispatched[0]})
            delay = interval
            if flow.status is FlowStatus.BACKOFF and flow.next_eligible is not None:
                remaining = (flow.next_eligible - self._clock.now()).total_seconds()
                delay = max(delay, remaining)
            await self._clock.sleep(delay)

    async def _cron(self, flow: _Flow, schedule: CronSchedule) -> None:
        last_fire: datetime | None = None
        while True:
            now = self._clock.now()
            # After a firing, never compute from before it: a clock that wakes a hair
            # early or goes backwards must not fire the same tick twice.
            after = now if last_fire is None else max(now, last_fire)
            upcoming = schedule.next_after(after.timestamp())
            if upcoming is None:
                logger.info("flow %r: cron %r never fires again", flow.id, schedule.expression)
                return
            fire = datetime.fromtimestamp(upcoming, UTC)
            await self._clock.sleep(max(0.0, (fire - now).total_seconds()))
            early = (fire - self._clock.now()).total_seconds()
            if early > 0:
                # The wall clock went backwards while we slept: sleep once more.
                await self._clock.sleep(early)
            last_fire = fire
            if (
                flow.status is FlowStatus.BACKOFF
                and flow.next_eligible is not None
                and self._clock.now() < flow.next_eligible
            ):
                logger.info(
                    "flow %r: tick %s skipped, backing off until %s",
                    flow.id,
                    fire.isoformat(),
                    flow.next_eligible.isoformat(),
                )
                continue
            dispatched = self._dispatch(flow, fire)
            if dispatched is not None:
                # Awaited inline: firings that pass meanwhile are skipped.
                await asyncio.wait({dispatched[0]})

    # ----- runs -------------------------------------------------------------------------

    def _dispatch(
        self, flow: _Flow, fire_time: datetime
    ) -> tuple[asyncio.Task[None], asyncio.Future[None]] | None:
        """Reserves the flow and starts a run, or returns None when it may not run now.

        Synchronous, so the check and the reservation cannot interleave with another tick.
        """
        if self._stopping or flow.status in (FlowStatus.RUNNING, FlowStatus.TRIPPED):
            if not self._stopping:
                logger.debug("flow %r: tick skipped, flow is %s", flow.id, flow.status.name)
            return None
        flow.status = FlowStatus.RUNNING
        flow.run_count += 1
        flow.last_run = self._clock.now()
        token, handle = CancellationToken.new()
        flow.cancel = handle
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        run = asyncio.create_task(
            self._run(flow, token, fire_time, started),
            name=f"cano-scheduler:{flow.id}#{flow.run_count}",
        )
        flow.run = run
        run.add_done_callback(lambda task: self._reap(flow, task))
        return run, started

    async def _run(
        self,
        flow: _Flow,
        token: CancellationToken,
        fire_time: datetime,
        started: asyncio.Future[None],
    ) -> None:
        number = flow.run_count
        if not started.done():
            started.set_result(None)
        flow.run_started = asyncio.get_running_loop().time()
        logger.info("flow %r: run %d started", flow.id, number)
        flow.notify("on_flow_start", number)
        try:
            # A checkpointed workflow needs one id per run; the firing time keeps them
            # unique and tells an operator which tick a crashed run belonged to.
            if getattr(flow.workflow, "_store", None) is not None:
                final = await flow.workflow.orchestrate(
                    flow.initial,
                    workflow_id=f"{flow.id}:{fire_time.isoformat()}",
                    cancel=token,
                )
            else:
                final = await flow.workflow.orchestrate(flow.initial, cancel=token)
        except WorkflowCancelledError:
            self._cancelled(flow, number)
        except asyncio.CancelledError:
            self._cancelled(flow, number)
            raise
        except Exception as err:
            self._failed(flow, number, err)
        except BaseException as err:  # KeyboardInterrupt, SystemExit: record, then let go
            self._failed(flow, number, err)
            raise
        else:
            self._succeeded(flow, number, final)

    def _reap(self, flow: _Flow, run: asyncio.Task[None]) -> None:
        # A run cancelled before its first step never reached _run's handlers.
        if flow.run is run:
            self._cancelled(flow, flow.run_count)
        if not run.cancelled():
            run.exception()  # KeyboardInterrupt & co. already propagated through the loop

    def _finish(self, flow: _Flow, status: FlowStatus) -> None:
        flow.status = status
        flow.run = None
        flow.cancel = None

    def _succeeded(self, flow: _Flow, number: int, final: object) -> None:
        flow.streak = 0
        flow.next_eligible = None
        flow.last_error = None
        self._finish(flow, FlowStatus.COMPLETED)
        logger.info("flow %r: run %d finished in state %s", flow.id, number, state_label(final))
        flow.notify("on_flow_finish", "completed", flow.elapsed())

    def _cancelled(self, flow: _Flow, number: int) -> None:
        self._finish(flow, FlowStatus.IDLE)
        logger.info("flow %r: run %d cancelled", flow.id, number)
        flow.notify("on_flow_finish", "cancelled", flow.elapsed())

    def _failed(self, flow: _Flow, number: int, err: BaseException) -> None:
        flow.streak += 1
        flow.last_error = err
        logger.warning("flow %r: run %d failed: %s: %s", flow.id, number, type(err).__name__, err)
        flow.notify("on_flow_finish", "failed", flow.elapsed())
        if flow.policy.is_tripped(flow.streak):
            flow.next_eligible = None
            self._finish(flow, FlowStatus.TRIPPED)
            logger.error(
                "flow %r: tripped after %d consecutive failures; call reset_flow to run it again",
                flow.id,
                flow.streak,
            )
            flow.notify("on_flow_tripped", flow.streak)
            return
        delay = min(flow.policy.compute_delay(flow.streak), _LONGEST_BACKOFF)
        flow.next_eligible = self._clock.now() + timedelta(seconds=delay)
        self._finish(flow, FlowStatus.BACKOFF)
        logger.warning(
            "flow %r: backing off %.3fs until %s (failure streak %d)",
            flow.id,
            delay,
            flow.next_eligible.isoformat(),
            flow.streak,
        )
        flow.notify("on_flow_backoff", flow.streak, delay)

    def _flow(self, flow_id: str) -> _Flow:
        flow = self._flows.get(flow_id)
        if flow is None:
            known = ", ".join(repr(f) for f in self._flows) or "none"
            raise WorkflowError(f"unknown flow {flow_id!r} (registered: {known})")
        return flow

    # ----- shutdown ---------------------------------------------------------------------

    async def _shut_down(self, grace: float) -> None:
        self._stopping = True
        logger.info("scheduler stopping")
        try:
            for loop in self._loops:
                loop.cancel()
            await asyncio.gather(*self._loops, return_exceptions=True)
            runs = {flow.run: flow.id for flow in self._flows.values() if flow.run is not None}
            for flow in self._flows.values():
                if flow.cancel is not None:
                    flow.cancel.cancel()
            error: WorkflowError | None = None
            if runs:
                _, pending = await asyncio.wait(runs, timeout=grace)
                if pending:
                    for run in pending:
                        run.cancel()
                    stuck = ", ".join(repr(runs[run]) for run in runs if run in pending)
                    error = WorkflowError(
                        f"timed out after {grace:g}s waiting for cancelled runs of flow(s) "
                        f"{stuck} to finish"
                    )
            leases, self._leases = self._leases, []
            for res in reversed(leases):
                await res._release()
            if error is not None:
                logger.error("scheduler stopped: %s", error)
                raise error
            logger.info("scheduler stopped")
        finally:
            self._finished.set()


def _log_loop_crash(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    err = task.exception()
    if err is not None:
        logger.error("scheduler loop %s crashed", task.get_name(), exc_info=err)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
