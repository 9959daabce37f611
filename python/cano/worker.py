"""Workers: run the enqueued runs of a store, and finish the runs of workers that died.

A :class:`Worker` serves workflows by name (``Workflow(name=...)``): it claims PENDING runs
of those workflows from the store's queue, runs at most ``concurrency`` at once, and holds a
lease on each run it owns, renewed every ``poll_interval``. A run whose worker stopped
renewing its lease (killed, frozen, cut off) is claimed by any worker once the lease has
expired, and resumed from its log: no completed state runs again; the state in flight at the
crash runs again. Every write of a run is fenced by its lease, so a worker that lost a lease
— it was frozen past it, say — writes nothing more for that run, runs no compensation and
does not clear its log: the new owner carries on::

    client = cano.Client(store)
    await client.enqueue("orders", Step.RESERVE, workflow_id="order-7", input={"sku": 3})

    async with cano.Worker(store, [orders_workflow], concurrency=8):
        info = await client.wait("order-7")

Inside a task, :func:`current_run` gives the run's id, its input and the attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from cano._core import CancellationHandle, CancellationToken
from cano._values import Duration, count, seconds
from cano.errors import CanoError, ConfigurationError, LeaseLostError, RunParked
from cano.records import FENCE, LEASE_CHECK, PARK_AFTER, Claim, RunEnd, RunStatus, utc
from cano.runs import Client, RunRegistry
from cano.workflow import Workflow

__all__ = ["RunContext", "RunQueue", "Worker", "current_run"]

_log = logging.getLogger("cano")


@dataclass(frozen=True, slots=True)
class RunContext:
    """What a task run by a Worker knows about its run (see :func:`current_run`)."""

    workflow_id: str
    input: Any
    attempt: int
    """How many times a worker has started or resumed this run (1 the first time)."""
    worker_id: str


_CURRENT: ContextVar[RunContext] = ContextVar("cano_current_run")


def current_run() -> RunContext:
    """The run the calling task belongs to, when a Worker runs it; ``LookupError`` outside
    one (a plain ``orchestrate`` has no queue input or worker)."""
    try:
        return _CURRENT.get()
    except LookupError:
        raise LookupError(
            "cano.current_run() is only set inside a run started by a Worker"
        ) from None


@runtime_checkable
class RunQueue(Protocol):
    """What a store implements so that Workers can claim its runs (SQLite and in-memory do;
    see :class:`cano.runs.RunRegistry` for the records). Leases are fenced by an epoch that
    every claim increments; ``cano.records.FENCE`` carries ``(owner, epoch)`` to the store's
    writes of a run owned by a Worker."""

    def enqueue_run(
        self,
        workflow_id: str,
        workflow_name: str,
        initial: str,
        input: bytes | None,
        queue: str,
        not_before: float | None,
        priority: int,
    ) -> Any: ...

    def claim_runs(
        self,
        worker_id: str,
        workflow_names: tuple[str, ...],
        queues: tuple[str, ...],
        limit: int,
        lease: float,
    ) -> Any: ...

    def renew_leases(self, worker_id: str, held: list[tuple[str, int]], lease: float) -> Any: ...

    def release_leases(self, worker_id: str, held: list[tuple[str, int]]) -> Any: ...

    def cancel_run(self, workflow_id: str) -> Any: ...

    def set_queue_cap(self, name: str, concurrency: int | None) -> Any: ...

    def park_run(
        self, workflow_id: str, state: str, signal: str | None, wake_at: float | None
    ) -> Any: ...


async def until_signalled(serving: asyncio.Future[Any]) -> None:
    """Waits until ``serving`` ends or SIGINT or SIGTERM arrives (where the loop can catch
    signals), whichever comes first; the handlers are removed again."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
            installed.append(sig)
    waiter = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({waiter, serving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)


@dataclass(slots=True)
class _Owned:
    claim: Claim
    task: asyncio.Task[Any]
    handle: CancellationHandle
    held_since: float
    """Loop time the claim, or the last renewal that succeeded, was sent: the lease runs
    ``lease`` seconds from a moment after it."""
    lost: bool = False


class Worker:
    """Serves the runs of ``workflows`` (by name) from a store's queue.

    ``ui=PORT`` also serves ``cano ui`` (extra ``cano[ui]``) on 127.0.0.1:PORT from this
    process (0: any free port; :attr:`ui_url` says which) — the way to watch a redb store,
    whose file its process holds. ``CANO_UI_TOKEN``, when set, is required by the page.
    """

    def __init__(
        self,
        store_or_client: object,
        workflows: Iterable[Workflow[Any]],
        *,
        concurrency: int = 16,
        queues: Iterable[str] = ("default",),
        lease: Duration = 30,
        poll_interval: Duration = 1.0,
        worker_id: str | None = None,
        ui: int | None = None,
    ) -> None:
        store = store_or_client.store if isinstance(store_or_client, Client) else store_or_client
        if not isinstance(store, RunQueue) or not isinstance(store, RunRegistry):
            raise ConfigurationError(
                f"Worker(store): {type(store).__name__} has no run queue; use a built-in store "
                "(SqliteCheckpointStore for workers in several processes, RedbCheckpointStore "
                "or InMemoryCheckpointStore in one) or implement cano.worker.RunQueue"
            )
        self._store: Any = store
        self._workflows: dict[str, Workflow[Any]] = {}
        for wf in workflows:
            if not isinstance(wf, Workflow):
                raise ConfigurationError(f"Worker(workflows): expected Workflows, got {wf!r:.80}")
            if wf.name is None:
                raise ConfigurationError(
                    "Worker(workflows): a served workflow needs a name: Workflow(name=...) or "
                    "with_name(...)"
                )
            if wf.name in self._workflows:
                raise ConfigurationError(f"Worker(workflows): two workflows named {wf.name!r}")
            attached = wf._store
            if attached is None:
                wf.with_checkpoint_store(store)
            elif attached is not store:
                raise ConfigurationError(
                    f"Worker: workflow {wf.name!r} checkpoints into another store than the "
                    "worker's; give it the worker's store, or none"
                )
            wf.validate()
            self._workflows[wf.name] = wf
        if not self._workflows:
            raise ConfigurationError("Worker(workflows): serve at least one workflow")
        self._names = tuple(sorted(self._workflows))
        self._queues = tuple(queues) if not isinstance(queues, str) else (queues,)
        if not self._queues or not all(isinstance(q, str) and q for q in self._queues):
            raise ConfigurationError(f"Worker(queues): expected non-empty strs, got {queues!r:.80}")
        self._concurrency = count(concurrency, "Worker(concurrency)", 1)
        self._lease = seconds(lease, "Worker(lease)")
        self._poll = seconds(poll_interval, "Worker(poll_interval)")
        if self._lease <= 0 or self._poll <= 0:
            raise ConfigurationError(
                f"Worker: lease and poll_interval must be positive, got lease={self._lease:g}, "
                f"poll_interval={self._poll:g}"
            )
        if self._poll * 2 > self._lease:
            raise ConfigurationError(
                f"Worker: poll_interval ({self._poll:g} s) must be at most half the lease "
                f"({self._lease:g} s), so that leases are renewed in time"
            )
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._owned: dict[str, _Owned] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._renewed_at = 0.0
        if ui is not None and (isinstance(ui, bool) or not isinstance(ui, int)):
            raise ConfigurationError(f"Worker(ui): expected a port number, got {ui!r:.40}")
        self._ui_port = ui
        self._ui: Any = None

    # ----- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start(self) -> None:
        """Starts serving in the background (``async with worker`` does this)."""
        if self._loop_task is None:
            if self._ui_port is not None and self._ui is None:
                self._start_ui(self._ui_port)
            self._loop_task = asyncio.get_running_loop().create_task(self._serve())

    def _start_ui(self, port: int) -> None:
        """``cano ui`` inside this process, on 127.0.0.1:``port`` (a redb file belongs to
        one process: its worker's). ``CANO_UI_TOKEN``, when set, is required by the page."""
        try:
            from cano.ui import UiServer  # noqa: PLC0415
        except ImportError as err:
            raise ConfigurationError(
                f"Worker(ui={port}): the page needs the ui extra: pip install 'cano[ui]' ({err})"
            ) from None
        server = UiServer(
            self._store,
            workflows=self._workflows.values(),
            port=port,
            token=os.environ.get("CANO_UI_TOKEN") or None,
        )
        server.start()
        self._ui = server
        _log.info("worker %s: cano ui on %s", self.worker_id, server.url)

    @property
    def ui_url(self) -> str | None:
        """Where this worker's page is served (``Worker(ui=PORT)``), once started."""
        return None if self._ui is None else str(self._ui.url)

    async def run(self) -> None:
        """Serves until :meth:`stop`, SIGINT or SIGTERM; then stops gracefully."""
        self.start()
        assert self._loop_task is not None
        try:
            await until_signalled(self._loop_task)
        finally:
            await self.stop()

    async def stop(self, grace: Duration = 30) -> None:
        """Stops claiming, lets owned runs finish for ``grace`` seconds, then cancels the rest
        and gives their leases back, so that another worker takes them over at once."""
        limit = seconds(grace, "stop(grace)")
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            # A tick stuck on an unreachable store is not waited for beyond the grace.
            await asyncio.wait({self._loop_task}, timeout=limit)
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = [o.task for o in self._owned.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=limit)
        left = list(self._owned.values())
        for owned in left:
            owned.task.cancel()
        if left:
            await asyncio.wait([o.task for o in left])
            held = [(o.claim.workflow_id, o.claim.epoch) for o in left]
            with contextlib.suppress(CanoError):
                await self._store.release_leases(self.worker_id, held)
            _log.info(
                "worker %s stopped; %d runs left for another worker", self.worker_id, len(left)
            )
        if self._ui is not None:
            ui, self._ui = self._ui, None
            await ui.stop()

    @property
    def running(self) -> int:
        """How many runs this worker owns right now."""
        return len(self._owned)

    # ----- the loop ---------------------------------------------------------------------

    async def _serve(self) -> None:
        # A store that can say when runs are enqueued (PostgreSQL: LISTEN) wakes the idle
        # wait below at once; polling stays the safety net.
        loop = asyncio.get_running_loop()
        helpers = [loop.create_task(self._self_fence())]
        watch = getattr(self._store, "watch_enqueues", None)
        if callable(watch):
            helpers.append(loop.create_task(watch(self._wake.set)))
        try:
            await self._serve_until_stopped()
        finally:
            for helper in helpers:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await helper

    async def _self_fence(self) -> None:
        """Stops a run whose lease could not be renewed in time (the store unreachable, the
        renewal stuck): ``poll_interval`` before its lease may run out, the run is cancelled
        here — it writes nothing more and stays RUNNING for whoever takes it over — so that
        two workers never run it at once, whatever the network does."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._poll / 2)
            limit = loop.time() - (self._lease - self._poll)
            for workflow_id, owned in list(self._owned.items()):
                if not owned.lost and owned.held_since <= limit:
                    owned.lost = True
                    owned.task.cancel()
                    _log.warning(
                        "worker %s could not renew its lease on run %s in time: stopped the "
                        "run (it stays RUNNING for another worker to take over)",
                        self.worker_id,
                        workflow_id,
                        extra={"workflow_id": workflow_id},
                    )

    async def _serve_until_stopped(self) -> None:
        while not self._stopping:
            try:
                await self._tick()
            except CanoError:
                _log.warning("worker %s: store error", self.worker_id, exc_info=True)
            self._wake.clear()
            # Until a run ends (or stop), at most one poll_interval: a timer, not a task per
            # wait as asyncio.wait_for would make.
            timer = asyncio.get_running_loop().call_later(self._poll, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    async def _tick(self) -> None:
        now = asyncio.get_running_loop().time()
        # Leases are renewed every poll_interval; a tick woken early (a run ended) only
        # claims.
        if self._owned and now - self._renewed_at >= self._poll:
            self._renewed_at = now
            held = [(i, o.claim.epoch) for i, o in self._owned.items() if not o.lost]
            lost, cancels = await self._store.renew_leases(self.worker_id, held, self._lease)
            for workflow_id, _ in held:
                owned = self._owned.get(workflow_id)
                if owned is not None and workflow_id not in lost:
                    owned.held_since = max(owned.held_since, now)
            for workflow_id in lost:
                owned = self._owned.get(workflow_id)
                if owned is not None and not owned.lost:
                    owned.lost = True
                    _log.warning(
                        "worker %s lost the lease on run %s; its next write is refused",
                        self.worker_id,
                        workflow_id,
                        extra={"workflow_id": workflow_id},
                    )
            for workflow_id in cancels:
                owned = self._owned.get(workflow_id)
                if owned is not None:
                    owned.handle.cancel()
            _log.debug("worker %s renewed %d leases", self.worker_id, len(held) - len(lost))
        free = self._concurrency - len(self._owned)
        if free <= 0 or self._stopping:
            return
        sent = asyncio.get_running_loop().time()
        claims = await self._store.claim_runs(
            self.worker_id, self._names, self._queues, free, self._lease
        )
        for claim in claims:
            self._launch(claim, sent)

    def _launch(self, claim: Claim, sent: float) -> None:
        token, handle = CancellationToken.new()
        task = asyncio.get_running_loop().create_task(self._execute(claim, token))
        self._owned[claim.workflow_id] = _Owned(claim, task, handle, sent)
        task.add_done_callback(functools.partial(self._finished, claim.workflow_id))

    def _finished(self, workflow_id: str, _task: object) -> None:
        self._owned.pop(workflow_id, None)
        # Claim again at once. Claims still come in batches: while one is with the store, the
        # runs that end meanwhile only set the event, and the next tick claims for them all.
        self._wake.set()

    async def _execute(self, claim: Claim, token: CancellationToken) -> None:
        FENCE.set((self.worker_id, claim.epoch))
        LEASE_CHECK.set(functools.partial(self._confirm_lease, claim))
        PARK_AFTER.set(self._lease)  # a longer timer parks the run instead of holding it
        _CURRENT.set(RunContext(claim.workflow_id, claim.input, claim.attempt, self.worker_id))
        wf = self._workflows[claim.workflow_name]
        extra = {"workflow_id": claim.workflow_id, "attempt": claim.attempt}
        if claim.resume:
            _log.info(
                "worker %s took over run %s (attempt %d): resuming it from its log",
                self.worker_id,
                claim.workflow_id,
                claim.attempt,
                extra=extra,
            )
        # The engine logs the run's start and end (cano logger, INFO) with the same extra.
        try:
            if claim.resume:
                await wf.resume_from(claim.workflow_id, cancel=token)
            else:
                initial = self._initial(wf, claim)
                await wf.orchestrate(initial, workflow_id=claim.workflow_id, cancel=token)
        except RunParked as parked:
            await self._park(claim, parked, extra)
        except LeaseLostError:
            _log.warning(
                "worker %s abandoned run %s: another worker owns it now",
                self.worker_id,
                claim.workflow_id,
                extra=extra,
            )
        except CanoError as err:
            if isinstance(err, ConfigurationError):
                _log.warning("run %s cannot start: %s", claim.workflow_id, err, extra=extra)
                await self._refuse(claim, err)
        except Exception as err:  # not the engine's: log it, never kill the worker
            _log.warning("run %s raised %r", claim.workflow_id, err, extra=extra)

    async def _park(self, claim: Claim, parked: RunParked, extra: dict[str, Any]) -> None:
        """The run waits: it is given back, WAITING, and its slot is free at once."""
        try:
            await self._store.park_run(
                claim.workflow_id, parked.state, parked.signal, parked.wake_at
            )
        except LeaseLostError:
            return  # taken over meanwhile: the new owner has it
        except CanoError as err:  # not recorded: the lease runs out and it is taken over
            _log.warning(
                "worker %s could not park run %s: %s",
                self.worker_id,
                claim.workflow_id,
                err,
                extra=extra,
            )
            return
        until = "" if parked.wake_at is None else f" (until {utc(parked.wake_at).isoformat()})"
        _log.info(
            "run %s waits for signal %r%s, holding no slot",
            claim.workflow_id,
            parked.signal,
            until,
            extra=extra,
        )

    async def _confirm_lease(self, claim: Claim) -> None:
        """Renews the run's lease now, or raises LeaseLostError: before compensating."""
        held = [(claim.workflow_id, claim.epoch)]
        lost, _ = await self._store.renew_leases(self.worker_id, held, self._lease)
        if lost:
            raise LeaseLostError.of_run(claim.workflow_id, ": it compensates nothing")

    def _initial(self, wf: Workflow[Any], claim: Claim) -> Any:
        by_label = wf._labels  # label -> state, kept by the workflow as states are claimed
        if claim.initial not in by_label:
            raise ConfigurationError(
                f"run {claim.workflow_id!r}: initial state {claim.initial!r} is not a state of "
                f"workflow {claim.workflow_name!r}"
            )
        return by_label[claim.initial]

    async def _refuse(self, claim: Claim, err: CanoError) -> None:
        """A run that can never start (a bad initial state): FAILED, not retried for ever."""
        with contextlib.suppress(CanoError):
            end = RunEnd(RunStatus.FAILED, claim.initial, None, type(err).__name__, str(err))
            await self._store.run_ended(claim.workflow_id, end, False)
