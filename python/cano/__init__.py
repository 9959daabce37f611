"""cano: an async workflow engine built on finite state machines, with a Rust core.

Define states as an ``Enum``, write one ``async`` task per state that returns the next
state, and let the engine run the machine with retries, timeouts, cancellation, resources
and observers::

    import enum
    import cano

    class Step(enum.Enum):
        FETCH = enum.auto()
        DONE = enum.auto()

    async def fetch(res: cano.Resources) -> Step:
        return Step.DONE

    wf = cano.Workflow.bare().register(Step.FETCH, fetch).add_exit_state(Step.DONE)
    assert wf.run_sync(Step.FETCH) is Step.DONE
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cano._core import (
    CancellationHandle,
    CancellationToken,
    RetryMode,
    Run,
    TaskConfig,
)
from cano._core import __version__ as __version__
from cano.batch import BatchTask
from cano.errors import (
    CanoError,
    CheckpointError,
    CircuitOpenError,
    CompensationFailedError,
    ConfigurationError,
    KeyNotFoundError,
    LeaseLostError,
    OrphanedCompensationError,
    RateLimitedError,
    ResourceError,
    ResourceNotFoundError,
    ResourceTypeError,
    RetryExhaustedError,
    RunParked,
    StoreError,
    TaskError,
    TaskTimeoutError,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowTimeoutError,
    WorkflowVersionMismatchError,
)
from cano.observer import WorkflowObserver
from cano.poll import Pending, PollErrorPolicy, PollTask, Ready
from cano.resilience import (
    CircuitBreaker,
    CircuitPermit,
    CircuitPolicy,
    CircuitState,
    MultiRateLimiter,
    RateLimiter,
    WindowedRateLimiter,
)
from cano.resources import (
    MISSING,
    SPLIT_RESULT_KEY,
    HealthStatus,
    MemoryStore,
    Resource,
    Resources,
)
from cano.runs import Client, RunInfo, RunStatus, StepInfo
from cano.scheduler import (
    BackoffPolicy,
    CronSchedule,
    FlowInfo,
    FlowStatus,
    RunningScheduler,
    Scheduler,
)
from cano.split import JoinConfig, JoinStrategy, SplitResult
from cano.stepped import Done, More, SteppedTask
from cano.store import (
    CheckpointRow,
    CheckpointStore,
    InMemoryCheckpointStore,
    RedbCheckpointStore,
    RowKind,
)
from cano.stream import (
    CloseReason,
    Continue,
    Stop,
    StreamErrorPolicy,
    StreamTask,
    StreamWindow,
)
from cano.tasks import CompensatableTask, RouterTask, Task, TaskLike, TaskResult, task
from cano.timer import TimerTask
from cano.waits import WaitTask
from cano.worker import RunContext, Worker, current_run
from cano.workflow import Workflow, state_label

__all__ = [
    "Client",
    "RunContext",
    "Worker",
    "current_run",
    "RunInfo",
    "RunStatus",
    "StepInfo",
    "CheckpointRow",
    "CheckpointStore",
    "InMemoryCheckpointStore",
    "RedbCheckpointStore",
    "RowKind",
    "SqliteCheckpointStore",
    "JoinConfig",
    "JoinStrategy",
    "SplitResult",
    "BatchTask",
    "CloseReason",
    "Continue",
    "Stop",
    "StreamErrorPolicy",
    "StreamTask",
    "StreamWindow",
    "MISSING",
    "SPLIT_RESULT_KEY",
    "BackoffPolicy",
    "CancellationHandle",
    "CancellationToken",
    "CanoError",
    "CheckpointError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitPermit",
    "CircuitPolicy",
    "CircuitState",
    "CompensatableTask",
    "CompensationFailedError",
    "ConfigurationError",
    "CronSchedule",
    "Done",
    "FlowInfo",
    "FlowStatus",
    "HealthStatus",
    "KeyNotFoundError",
    "LeaseLostError",
    "RunParked",
    "MemoryStore",
    "More",
    "MultiRateLimiter",
    "OrphanedCompensationError",
    "Pending",
    "PollErrorPolicy",
    "PollTask",
    "RateLimitedError",
    "RateLimiter",
    "Ready",
    "Resource",
    "ResourceError",
    "ResourceNotFoundError",
    "ResourceTypeError",
    "Resources",
    "RetryExhaustedError",
    "RetryMode",
    "RouterTask",
    "Run",
    "RunningScheduler",
    "Scheduler",
    "SteppedTask",
    "WaitTask",
    "StoreError",
    "Task",
    "TaskConfig",
    "TaskError",
    "TaskLike",
    "TaskResult",
    "TaskTimeoutError",
    "TimerTask",
    "WindowedRateLimiter",
    "Workflow",
    "WorkflowCancelledError",
    "WorkflowError",
    "WorkflowObserver",
    "WorkflowTimeoutError",
    "WorkflowVersionMismatchError",
    "state_label",
    "task",
]


if TYPE_CHECKING:
    from cano.stores.sqlite import SqliteCheckpointStore


def __getattr__(name: str) -> Any:
    # Imported on first use: `import cano` does not load sqlite3.
    if name == "SqliteCheckpointStore":
        from cano.stores.sqlite import SqliteCheckpointStore  # noqa: PLC0415 - lazily

        return SqliteCheckpointStore
    raise AttributeError(f"module 'cano' has no attribute {name!r}")
