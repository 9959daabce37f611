"""Type stubs for the Rust extension ``cano._core`` (hand-written; checked by stubtest)."""

import asyncio as _asyncio
import os as _os
from collections.abc import Generator, Sequence
from types import TracebackType as _TracebackType
from typing import Any, Generic, TypeVar, final
from typing import Self as _Self

from cano.store import CheckpointRow as _CheckpointRow
from cano.store import RunSummary as _RunSummary

_S = TypeVar("_S")

__version__: str
__all__ = [
    "CancellationHandle",
    "CancellationToken",
    "Handler",
    "Plan",
    "RetryMode",
    "Run",
    "TaskConfig",
    "__version__",
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
        base_delay: float | Any | None = None,
        multiplier: float = 2.0,
        max_delay: float | Any | None = None,
        jitter: float = 0.1,
    ) -> RetryMode: ...
    @property
    def max_attempts(self) -> int: ...
    def delay_for_attempt(self, attempt: int) -> float | None: ...
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
    @property
    def retry_mode(self) -> RetryMode: ...
    @property
    def attempt_timeout(self) -> float | None: ...
    @property
    def retry_on(self) -> tuple[type[BaseException], ...] | None: ...
    @property
    def circuit_breaker(self) -> None: ...

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
    ) -> Handler: ...
    @property
    def name(self) -> str: ...

@final
class Plan:
    def __new__(
        cls,
        states: Sequence[object],
        labels: Sequence[str],
        exits: Sequence[int],
        handlers: Sequence[tuple[int, Handler]],
        *,
        support: object,
        hub: object | None = None,
        max_transitions: int | None = None,
        total_timeout: float | None = None,
        store: object | None = None,
        version: int = 0,
        compensation_timeout: float | None = None,
    ) -> Plan: ...
    def state_id(self, state: object) -> int | None: ...
    def start(
        self,
        initial: object,
        resources: object,
        lease: object | None = None,
        token: CancellationToken | None = None,
        workflow_id: str | None = None,
    ) -> Run[Any]: ...
    def resume(
        self,
        state: int,
        resources: object,
        lease: object | None,
        token: CancellationToken | None,
        workflow_id: str,
        sequence: int,
        path: Sequence[int],
        cursors: Sequence[tuple[int, object]],
        stack: Sequence[tuple[str, bytes]],
    ) -> Run[Any]: ...

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
        cls, path: str | _os.PathLike[str], *, durability: str = "immediate"
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
    ) -> _asyncio.Future[None]: ...
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
