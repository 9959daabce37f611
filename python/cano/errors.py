"""The exception hierarchy of cano.

Every engine error derives from :class:`CanoError` and carries where it happened:

- ``state``: the label of the state that failed (``None`` outside a run);
- ``attempt``: the 1-based attempt that failed (0 for timeouts, cancellation and circuit
  rejections; ``None`` outside a run);
- ``path``: every state label entered in the run, in order, including the failing one.

A user exception is never swallowed: it is the ``__cause__`` of the engine error.
Every class can be constructed from a message alone, so custom stores and tasks can raise
them too::

    raise cano.CheckpointError("disk full")
"""

from __future__ import annotations

import types

__all__ = [
    "CanoError",
    "CheckpointError",
    "CircuitOpenError",
    "CompensationFailedError",
    "ConfigurationError",
    "KeyNotFoundError",
    "LeaseLostError",
    "RunParked",
    "OrphanedCompensationError",
    "RateLimitedError",
    "ResourceError",
    "ResourceNotFoundError",
    "ResourceTypeError",
    "RetryExhaustedError",
    "StoreError",
    "TaskError",
    "TaskTimeoutError",
    "WorkflowCancelledError",
    "WorkflowError",
    "WorkflowTimeoutError",
    "WorkflowVersionMismatchError",
]


class CanoError(Exception):
    """Base class of every error raised by cano."""

    def __init__(
        self,
        message: str = "",
        *,
        state: str | None = None,
        attempt: int | None = None,
        path: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.state = state
        self.attempt = attempt
        self.path = path

    def __str__(self) -> str:
        return self.message


class ConfigurationError(CanoError, ValueError):
    """The workflow, a task or a value given to cano is invalid."""


class WorkflowError(CanoError):
    """The run cannot continue: an unknown next state, a failed join, a loop guard.

    ``exceptions`` holds the branch errors of a failed split (empty otherwise).
    """

    def __init__(
        self,
        message: str = "",
        *,
        state: str | None = None,
        attempt: int | None = None,
        path: list[str] | None = None,
        exceptions: list[BaseException] | None = None,
    ) -> None:
        super().__init__(message, state=state, attempt=attempt, path=path)
        self.exceptions: list[BaseException] = list(exceptions) if exceptions else []


class TaskError(CanoError):
    """A task raised; ``__cause__`` is the user's exception."""


class RetryExhaustedError(TaskError):
    """A task failed on every attempt its retry mode allowed (``attempts``)."""

    def __init__(
        self,
        message: str = "",
        *,
        state: str | None = None,
        attempt: int | None = None,
        path: list[str] | None = None,
        attempts: int | None = None,
    ) -> None:
        super().__init__(message, state=state, attempt=attempt, path=path)
        self.attempts = attempts


class TaskTimeoutError(TaskError, TimeoutError):
    """One attempt of a task ran longer than its ``attempt_timeout``."""


class WorkflowTimeoutError(CanoError, TimeoutError):
    """The run exceeded its total timeout (``elapsed`` and ``limit`` in seconds)."""

    def __init__(
        self,
        message: str = "",
        *,
        state: str | None = None,
        attempt: int | None = None,
        path: list[str] | None = None,
        elapsed: float | None = None,
        limit: float | None = None,
    ) -> None:
        super().__init__(message, state=state, attempt=attempt, path=path)
        self.elapsed = elapsed
        self.limit = limit


class WorkflowCancelledError(CanoError):
    """The run was cancelled through its :class:`cano.CancellationToken`."""


class CircuitOpenError(CanoError):
    """A circuit breaker rejected the call."""


class RateLimitedError(CanoError):
    """A rate limiter tier rejected the call; retry after ``retry_after`` seconds."""

    def __init__(
        self,
        message: str = "",
        *,
        state: str | None = None,
        attempt: int | None = None,
        path: list[str] | None = None,
        tier: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, state=state, attempt=attempt, path=path)
        self.tier = tier
        self.retry_after = retry_after


class CheckpointError(CanoError):
    """The checkpoint store failed, or its log cannot be used."""


class LeaseLostError(CheckpointError):
    """The run's lease went to another worker: this process no longer owns the run.

    A store raises it for a write fenced by a lease that is no longer current (the run was
    taken over after the lease expired). The engine then *abandons* the run: it ends at
    once with this error, writes nothing more, runs no compensation and does not clear the
    log — the new owner carries on from the log.
    """

    @classmethod
    def of_run(cls, workflow_id: str, consequence: str = "") -> LeaseLostError:
        """The one wording every store and the Worker use, naming the run."""
        return cls(
            f"the lease on run {workflow_id!r} is no longer this worker's (another worker "
            f"took the run over){consequence}"
        )


class RunParked(LeaseLostError):
    """A run under a Worker reached a wait with nothing to consume: its worker gives it back,
    WAITING — no slot and no lease held — until a signal arrives or ``wake_at`` passes.

    Raised by a wait state inside a Worker's run and handled by the Worker; like a lost
    lease, the engine ends the run at once without recording an end, compensating or
    clearing anything (the run resumes from its log when it wakes).
    """

    def __init__(
        self, message: str, *, state: str, signal: str | None, wake_at: float | None
    ) -> None:
        super().__init__(message)
        self.state = state
        self.signal = signal
        self.wake_at = wake_at


class WorkflowVersionMismatchError(CheckpointError):
    """The log was written by another version of the workflow (``stored`` vs ``expected``)."""

    def __init__(
        self,
        message: str = "",
        *,
        state: str | None = None,
        attempt: int | None = None,
        path: list[str] | None = None,
        stored: int | None = None,
        expected: int | None = None,
    ) -> None:
        super().__init__(message, state=state, attempt=attempt, path=path)
        self.stored = stored
        self.expected = expected


class CompensationFailedError(CanoError):
    """Rolling back failed: ``errors[0]`` is the original error, then each compensation's."""

    def __init__(
        self,
        message: str = "",
        *,
        state: str | None = None,
        attempt: int | None = None,
        path: list[str] | None = None,
        errors: list[BaseException] | None = None,
    ) -> None:
        super().__init__(message, state=state, attempt=attempt, path=path)
        self.errors: list[BaseException] | None = list(errors) if errors is not None else None


class OrphanedCompensationError(CanoError):
    """A completed step has no compensator (``task_id``); ``output`` is its raw JSON."""

    def __init__(
        self,
        message: str = "",
        *,
        state: str | None = None,
        attempt: int | None = None,
        path: list[str] | None = None,
        task_id: str | None = None,
        output: bytes | None = None,
    ) -> None:
        super().__init__(message, state=state, attempt=attempt, path=path)
        self.task_id = task_id
        self.output = output


class ResourceError(CanoError):
    """A resource could not be stored or looked up."""


class ResourceNotFoundError(ResourceError, KeyError):
    """No resource under the requested key."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class ResourceTypeError(ResourceError, TypeError):
    """The resource exists but is not of the requested type."""


class StoreError(CanoError):
    """A :class:`cano.MemoryStore` operation failed."""


class KeyNotFoundError(StoreError, KeyError):
    """The key is not in the store."""

    def __str__(self) -> str:
        return self.message


def _type_name(tp: object) -> str:
    """A type as error messages show it: ``int``, ``pkg.module.Class``, or its repr."""
    if isinstance(tp, type) and not isinstance(tp, types.GenericAlias):
        if tp.__module__ == "builtins":
            return tp.__qualname__
        return f"{tp.__module__}.{tp.__qualname__}"
    return repr(tp)
