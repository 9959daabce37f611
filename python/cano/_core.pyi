"""Type stubs for the Rust extension ``cano._core`` (hand-written; checked by stubtest)."""

from collections.abc import Generator, Sequence
from typing import Any, Generic, TypeVar, final

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
        router: bool,
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
    ) -> Plan: ...
    def state_id(self, state: object) -> int | None: ...
    def start(
        self,
        initial: object,
        resources: object,
        lease: object | None = None,
        token: CancellationToken | None = None,
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
