"""Type stubs for the Rust extension ``cano._core`` (hand-written; checked by stubtest)."""

import asyncio as _asyncio
import os as _os
from collections.abc import Awaitable, Generator, Sequence
from collections.abc import Callable as _Callable
from collections.abc import Coroutine as _Coroutine
from datetime import timedelta as _timedelta
from types import TracebackType as _TracebackType
from typing import Any, Generic, TypeVar, final
from typing import Literal as _Literal
from typing import Self as _Self

from cano.resilience import CircuitState as _CircuitState
from cano.store import CheckpointRow as _CheckpointRow
from cano.store import RunSummary as _RunSummary

_S = TypeVar("_S")

__version__: str
__all__ = [
    "CancellationHandle",
    "CancellationToken",
    "ErrorStreak",
    "Handler",
    "Plan",
    "RetryMode",
    "Run",
    "TaskConfig",
    "_BranchDone",
    "_Committer",
    "_SplitMailbox",
    "_count",
    "_number",
    "_seconds",
    "__version__",
    "check_split",
    "resume_run",
    "start_run",
]

@final
class RetryMode:
    @staticmethod
    def none() -> RetryMode: ...
    @staticmethod
    def fixed(retries: int, delay: float | Any) -> RetryMode: ...
    @staticmethod
    def exponential(
        max_retries: int,
        *,
        base_delay: float | Any = 0.1,
        multiplier: float = 2.0,
        max_delay: float | Any = 30.0,
        jitter: float = 0.1,
    ) -> RetryMode: ...
    @property
    def max_attempts(self) -> int: ...
    def delay_for_attempt(self, attempt: int) -> float | None: ...
    def _retry_delay(self, attempt: int) -> float | None: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class TaskConfig:
    def __new__(cls) -> TaskConfig: ...
    @staticmethod
    def minimal() -> TaskConfig: ...
    def with_retry(self, mode: RetryMode) -> TaskConfig: ...
    def with_fixed_retry(self, retries: int, delay: float | Any) -> TaskConfig: ...
    def with_exponential_retry(self, max_retries: int) -> TaskConfig: ...
    def with_attempt_timeout(self, timeout: float | Any) -> TaskConfig: ...
    def with_retry_on(self, *exc_types: type[BaseException]) -> TaskConfig: ...
    def with_circuit_breaker(self, breaker: CircuitBreaker) -> TaskConfig: ...
    def with_rate_limiter(
        self, limiter: RateLimiter | WindowedRateLimiter | MultiRateLimiter, cost: int = 1
    ) -> TaskConfig: ...
    @property
    def retry_mode(self) -> RetryMode: ...
    @property
    def attempt_timeout(self) -> float | None: ...
    @property
    def retry_on(self) -> tuple[type[BaseException], ...] | None: ...
    @property
    def circuit_breaker(self) -> CircuitBreaker | None: ...
    @property
    def rate_limiter(self) -> RateLimiter | WindowedRateLimiter | MultiRateLimiter | None: ...

@final
class CancellationToken:
    @staticmethod
    def new() -> tuple[CancellationToken, CancellationHandle]: ...
    def is_cancelled(self) -> bool: ...

@final
class CancellationHandle:
    def cancel(self) -> None: ...
    def is_cancelled(self) -> bool: ...

@final
class Handler:
    def __new__(
        cls,
        call: Any,
        *,
        takes_resources: bool,
        name: str,
        kind: str,
        config: TaskConfig,
        targets: Sequence[int] | None = None,
        value_type: object | None = None,
    ) -> Handler: ...
    @staticmethod
    def split(
        name: str,
        branches: Sequence[Handler],
        *,
        strategy: str,
        value: float,
        strategy_repr: str,
        join_state: int,
        timeout: float | None = None,
        bulkhead: int | None = None,
        state: str | None = None,
    ) -> Handler: ...
    @property
    def name(self) -> str: ...

@final
class _SplitMailbox: ...

@final
class _Committer:
    def __call__(self, cursor: object) -> Any: ...
    def _checkpointed(self, sequence: int) -> None: ...

@final
class _BranchDone:
    def __call__(self, _task: object) -> None: ...

@final
class Plan:
    def __new__(
        cls,
        states: Sequence[object],
        labels: Sequence[str],
        exits: Sequence[int],
        handlers: Sequence[tuple[int, Handler]],
        *,
        returns: object,
        compensators: object,
        hub: object | None = None,
        max_transitions: int | None = None,
        total_timeout: float | None = None,
        store: object | None = None,
        version: int = 0,
        compensation_timeout: float | None = None,
        name: str | None = None,
    ) -> Plan: ...
    def state_id(self, state: object) -> int | None: ...

def start_run(
    plan: Plan,
    initial: object,
    resources: object,
    lease: object | None = None,
    token: CancellationToken | None = None,
    workflow_id: str | None = None,
) -> Run[Any]: ...
def check_split(
    state: str,
    strategy: str,
    value: float,
    branches: int,
    *,
    has_timeout: bool,
    bulkhead: int | None = None,
) -> None: ...
def _seconds(value: object, what: str) -> float: ...
def _count(value: object, what: str, min: int) -> int: ...
def _number(value: object, what: str, min: float, max: float) -> float: ...
def resume_run(
    plan: Plan,
    workflow_id: str,
    resources: object,
    lease: object | None = None,
    token: CancellationToken | None = None,
) -> Run[Any]: ...

@final
class ErrorStreak:
    def __new__(cls, tolerated: int) -> ErrorStreak: ...
    def failed(self) -> bool: ...
    def succeeded(self) -> None: ...
    @property
    def count(self) -> int: ...

@final
class Run(Generic[_S]):
    """A workflow run: a coroutine driven by the event loop."""

    def __await__(self) -> Generator[Any, None, _S]: ...
    def __next__(self) -> Any: ...
    def send(self, value: Any) -> Any: ...
    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any: ...
    def close(self) -> None: ...
    def _signal(self, kind: int) -> None: ...
    def _on_cancel(self) -> None: ...
    @property
    def __name__(self) -> str: ...
    @property
    def __qualname__(self) -> str: ...

# --- Checkpoint store (rust/bindings/src/store.rs) ---------------------------------------

__all__ += ["RedbCheckpointStore"]

@final
class RedbCheckpointStore:
    """The embedded, durable checkpoint store: one redb file per process."""

    def __new__(
        cls,
        path: str | _os.PathLike[str],
        *,
        durability: str = "immediate",
        read_only: bool = False,
        create: bool = True,
        repair: bool = False,
    ) -> RedbCheckpointStore: ...
    def append(self, row: _CheckpointRow) -> _asyncio.Future[None]: ...
    def _append_raw(
        self,
        workflow_id: str,
        sequence: int,
        state: str,
        task_id: str,
        kind: int,
        output: bytes | None,
        version: int,
    ) -> Awaitable[None]: ...
    def load_run(self, workflow_id: str) -> _asyncio.Future[list[_CheckpointRow]]: ...
    def clear(self, workflow_id: str) -> _asyncio.Future[None]: ...
    def list_runs(self) -> _asyncio.Future[list[str]]: ...
    def runs_summary(self) -> _asyncio.Future[list[_RunSummary]]: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def durability(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    @property
    def read_only(self) -> bool: ...
    @property
    def repair_report(self) -> dict[str, Any] | None: ...
    def __enter__(self) -> _Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: _TracebackType | None,
    ) -> None: ...
    def __aenter__(self) -> _asyncio.Future[_Self]: ...
    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: _TracebackType | None,
    ) -> _asyncio.Future[None]: ...

# --- Circuit breaker and rate limiters (rust/bindings/src/{circuit,rate_limit}.rs) --------

__all__ += [
    "CircuitBreaker",
    "CircuitPermit",
    "CircuitPolicy",
    "GuardedCall",
    "MultiRateLimiter",
    "RateLimiter",
    "WindowedRateLimiter",
]

_F = TypeVar("_F", bound=_Callable[..., Any])

@final
class CircuitPolicy:
    """When a breaker trips and how it recovers."""

    def __new__(
        cls,
        failure_threshold: int = 5,
        reset_timeout: float | _timedelta = 30.0,
        half_open_max_calls: int = 1,
    ) -> CircuitPolicy: ...
    @property
    def failure_threshold(self) -> int: ...
    @property
    def reset_timeout(self) -> float: ...
    @property
    def half_open_max_calls(self) -> int: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class CircuitBreaker:
    """A thread-safe circuit breaker, shared by every caller of one dependency."""

    def __new__(cls, policy: CircuitPolicy | None = None) -> CircuitBreaker: ...
    @property
    def state(self) -> _CircuitState: ...
    @property
    def policy(self) -> CircuitPolicy: ...
    @property
    def consecutive_failures(self) -> int: ...
    def try_acquire(self) -> CircuitPermit: ...
    def record_success(self, permit: CircuitPermit) -> None: ...
    def record_failure(self, permit: CircuitPermit) -> None: ...
    def __call__(self, func: _F) -> _F: ...

@final
class CircuitPermit:
    """Permission for one call; a context manager recording the call's outcome."""

    @property
    def recorded(self) -> bool: ...
    def __enter__(self) -> _Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None = None,
        traceback: _TracebackType | None = None,
    ) -> _Literal[False]: ...

@final
class GuardedCall:
    """A sync callable guarded by a breaker (what ``@breaker`` returns for a sync function)."""

    def __new__(cls, breaker: CircuitBreaker, func: _Callable[..., Any]) -> GuardedCall: ...
    @property
    def breaker(self) -> CircuitBreaker: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __get__(self, instance: object, owner: type | None = None, /) -> Any: ...

@final
class RateLimiter:
    """A token bucket: ``tokens`` per ``period`` seconds, holding up to ``tokens + burst``."""

    def __new__(cls, tokens: int, period: float | _timedelta, *, burst: int = 0) -> RateLimiter: ...
    @staticmethod
    def per_second(n: int) -> RateLimiter: ...
    def try_acquire(self, cost: int = 1) -> bool: ...
    def time_until(self, cost: int = 1) -> float: ...
    def acquire(self, cost: int = 1) -> _Coroutine[Any, Any, None]: ...
    @property
    def tokens(self) -> int: ...
    @property
    def period(self) -> float: ...
    @property
    def burst(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def available(self) -> float: ...

@final
class WindowedRateLimiter:
    """At most ``limit`` units per ``window`` seconds (a fixed window)."""

    def __new__(cls, limit: int, window: float | _timedelta) -> WindowedRateLimiter: ...
    def try_acquire(self, cost: int = 1) -> bool: ...
    def time_until(self, cost: int = 1) -> float: ...
    def acquire(self, cost: int = 1) -> _Coroutine[Any, Any, None]: ...
    @property
    def limit(self) -> int: ...
    @property
    def window(self) -> float: ...
    @property
    def used(self) -> int: ...
    @property
    def remaining(self) -> int: ...

@final
class MultiRateLimiter:
    """Several limiters charged together: all of them or none."""

    def __new__(cls) -> MultiRateLimiter: ...
    def with_tier(
        self, name: str, limiter: RateLimiter | WindowedRateLimiter, cost: int = 1
    ) -> MultiRateLimiter: ...
    def try_acquire(self, cost: int = 1) -> bool: ...
    def time_until(self, cost: int = 1) -> float: ...
    def acquire(self, cost: int = 1) -> _Coroutine[Any, Any, None]: ...
    @property
    def tiers(self) -> list[tuple[str, RateLimiter | WindowedRateLimiter, int]]: ...

# --- Scheduler value objects (rust/bindings/src/schedule.rs) --------------------------------
# (uses the `_timedelta` alias imported above)

__all__ += ["BackoffPolicy", "CronSchedule"]

@final
class CronSchedule:
    """A cron expression (six fields with seconds first, or seven with a year), in UTC."""

    def __new__(cls, expr: str) -> CronSchedule: ...
    @property
    def expression(self) -> str: ...
    def next_after(self, ts: float) -> float | None: ...

@final
class BackoffPolicy:
    """How long a failing scheduled flow rests before its next run, and when it trips."""

    def __new__(
        cls,
        initial: float | _timedelta = 1.0,
        multiplier: float = 2.0,
        max_delay: float | _timedelta = 300.0,
        jitter: float = 0.1,
        streak_limit: int | None = None,
    ) -> BackoffPolicy: ...
    @staticmethod
    def with_trip(streak_limit: int) -> BackoffPolicy: ...
    @property
    def initial(self) -> float: ...
    @property
    def multiplier(self) -> float: ...
    @property
    def max_delay(self) -> float: ...
    @property
    def jitter(self) -> float: ...
    @property
    def streak_limit(self) -> int | None: ...
    def compute_delay(self, streak: int) -> float: ...
    def is_tripped(self, streak: int) -> bool: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...
