"""Observers: synchronous hooks fired as a run progresses.

Subclass :class:`WorkflowObserver` (or write any object with some of its methods) and
attach it with ``Workflow.with_observer``. Hooks run on the event loop thread, inline, so
keep them fast. A hook that raises is logged on the ``cano`` logger and ignored: an
observer never changes the outcome of a run. With no observer attached the engine calls
nothing at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["HOOKS", "WorkflowObserver"]

logger = logging.getLogger("cano")

HOOKS: tuple[str, ...] = (
    "on_state_enter",
    "on_task_start",
    "on_task_success",
    "on_task_failure",
    "on_retry",
    "on_circuit_open",
    "on_checkpoint",
    "on_resume",
    "on_workflow_timeout",
    "on_cancelled",
    "on_checkpoint_clear_failed",
    "on_unknown_resume_state",
    "on_run_start",
    "on_run_finish",
    "on_flow_start",
    "on_flow_finish",
    "on_flow_backoff",
    "on_flow_tripped",
)


class WorkflowObserver:
    """Base class with a no-op for every hook; override the ones you need."""

    def on_state_enter(self, state: str) -> None:
        """A state was entered (including routers, the initial and the exit state)."""

    def on_task_start(self, task_id: str) -> None:
        """A task is about to run its first attempt."""

    def on_task_success(self, task_id: str) -> None:
        """A task's final attempt succeeded."""

    def on_task_failure(self, task_id: str, error: BaseException) -> None:
        """A task failed for good; ``error`` is what the engine raises for it."""

    def on_retry(self, task_id: str, attempt: int) -> None:
        """Attempt number ``attempt`` (1-based) failed and will be retried."""

    def on_circuit_open(self, task_id: str) -> None:
        """A circuit breaker rejected the task."""

    def on_checkpoint(self, workflow_id: str, sequence: int) -> None:
        """A checkpoint row was appended."""

    def on_resume(self, workflow_id: str, sequence: int) -> None:
        """A run resumed from its checkpoint log."""

    def on_workflow_timeout(self, elapsed: float, limit: float) -> None:
        """The run exceeded its total timeout."""

    def on_cancelled(self, state: str) -> None:
        """The run was cancelled while in ``state``."""

    def on_checkpoint_clear_failed(self, workflow_id: str, error: BaseException) -> None:
        """Clearing the checkpoint log after the run failed."""

    def on_unknown_resume_state(self, workflow_id: str, sequence: int, label: str) -> None:
        """A resumed log names a state this workflow no longer has."""

    def on_run_start(self, workflow_id: str | None) -> None:
        """A run started (after resource setup), fresh or resumed; ``workflow_id`` when it
        has one. Every ``on_run_start`` is followed by exactly one ``on_run_finish``."""

    def on_run_finish(self, state: str | None, error: BaseException | None) -> None:
        """The run ended: in exit ``state`` on success, else with ``error`` (what the run
        raises, including ``asyncio.CancelledError``)."""

    # Scheduler events (fired for the observers of a scheduled flow's workflow).

    def on_flow_start(self, flow_id: str, run: int) -> None:
        """The scheduler started run number ``run`` of flow ``flow_id``."""

    def on_flow_finish(self, flow_id: str, outcome: str, duration: float) -> None:
        """A scheduled run ended: ``outcome`` is "completed", "failed" or "cancelled"."""

    def on_flow_backoff(self, flow_id: str, streak: int, delay: float) -> None:
        """A failed flow waits ``delay`` seconds before it may run again."""

    def on_flow_tripped(self, flow_id: str, streak: int) -> None:
        """A flow failed ``streak`` times in a row and stops until ``reset_flow``."""


def _implemented(observer: object, hook: str) -> Callable[..., Any] | None:
    method = getattr(observer, hook, None)
    if method is None or not callable(method):
        return None
    base = getattr(WorkflowObserver, hook)
    if getattr(type(observer), hook, None) is base:
        return None  # the inherited no-op
    return method  # type: ignore[no-any-return]


class ObserverHub:
    """Fans each hook out to every observer that implements it, isolating failures."""

    def __init__(self, observers: Sequence[object]) -> None:
        self._observers = tuple(observers)
        self._targets: dict[str, tuple[Callable[..., Any], ...]] = {}
        for hook in HOOKS:
            targets = tuple(m for o in self._observers if (m := _implemented(o, hook)))
            self._targets[hook] = targets
            setattr(self, hook, self._fan_out(hook, targets))

    def targets(self, hook: str) -> tuple[Callable[..., Any], ...]:
        """The observer methods implementing ``hook`` (the dispatcher calls them directly)."""
        return self._targets.get(hook, ())

    @staticmethod
    def report(hook: str, error: BaseException) -> None:
        """Logs an observer hook that raised (called by the dispatcher)."""
        logger.error(
            "cano: observer hook %s raised; ignored",
            hook,
            exc_info=(type(error), error, error.__traceback__),
        )

    @staticmethod
    def _fan_out(hook: str, targets: tuple[Callable[..., Any], ...]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            for target in targets:
                try:
                    target(*args)
                except Exception:
                    logger.exception("cano: observer hook %s raised; ignored", hook)

        return call

    def __repr__(self) -> str:
        return f"ObserverHub({list(self._observers)!r})"
