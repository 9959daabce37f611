"""Split / join: run several tasks concurrently in one state and join their outcomes.

``workflow.register_split(state, tasks, JoinConfig(strategy, join_state))`` runs every task
as its own asyncio task, with its own retries and attempt timeout. The join strategy
decides when the split is over, as early as possible, and the branches still running are
cancelled (they see ``asyncio.CancelledError``). On success the run moves to
``join_state``, whose task can read every branch's outcome::

    result = res.get(cano.SPLIT_RESULT_KEY, cano.SplitResult)
    for index, state in result.successes: ...

On failure the run raises :class:`cano.WorkflowError` whose ``exceptions`` hold the branch
errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from cano._values import Duration, count, number, seconds
from cano.errors import ConfigurationError

__all__ = ["JoinConfig", "JoinStrategy", "SplitResult"]

S = TypeVar("S")


class JoinStrategy:
    """How the branches of a split are joined.

    ``ALL``: every branch must succeed (fails on the first failure). ``ANY``: one success.
    ``quorum(n)``: n successes. ``percentage(p)``: ``ceil(total * p)`` successes, p in
    (0, 1]. ``partial_results(min)``: min successes. ``PARTIAL_TIMEOUT``: wait for the join
    timeout, succeed if at least one branch finished before it.
    """

    __slots__ = ("kind", "value")

    ALL: ClassVar[JoinStrategy]
    ANY: ClassVar[JoinStrategy]
    PARTIAL_TIMEOUT: ClassVar[JoinStrategy]

    def __init__(self, kind: str, value: float = 0.0) -> None:
        self.kind = kind
        self.value = value

    @staticmethod
    def quorum(n: int) -> JoinStrategy:
        """At least ``n`` successful branches."""
        return JoinStrategy("quorum", count(n, "JoinStrategy.quorum(n)"))

    @staticmethod
    def percentage(p: float) -> JoinStrategy:
        """At least ``ceil(total * p)`` successful branches; ``p`` in (0, 1]."""
        value = number(p, "JoinStrategy.percentage(p)", 0.0, 1.0)
        if value == 0:
            raise ConfigurationError("JoinStrategy.percentage(p): expected p in (0, 1], got 0")
        return JoinStrategy("percentage", value)

    @staticmethod
    def partial_results(min: int) -> JoinStrategy:
        """At least ``min`` successful branches; the others are cancelled once reached."""
        return JoinStrategy("partial_results", count(min, "JoinStrategy.partial_results(min)"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JoinStrategy) and (other.kind, other.value) == (
            self.kind,
            self.value,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.value))

    def __repr__(self) -> str:
        if self.kind in ("all", "any", "partial_timeout"):
            return f"JoinStrategy.{self.kind.upper()}"
        shown = self.value if self.kind == "percentage" else int(self.value)
        return f"JoinStrategy.{self.kind}({shown})"


JoinStrategy.ALL = JoinStrategy("all")
JoinStrategy.ANY = JoinStrategy("any")
JoinStrategy.PARTIAL_TIMEOUT = JoinStrategy("partial_timeout")


class JoinConfig(Generic[S]):
    """The join of a split: strategy, the state to move to, an optional timeout (seconds)
    and an optional bulkhead (at most that many branches in flight)."""

    __slots__ = ("bulkhead", "join_state", "strategy", "timeout")

    def __init__(
        self,
        strategy: JoinStrategy,
        join_state: S,
        *,
        timeout: Duration | None = None,
        bulkhead: int | None = None,
    ) -> None:
        if not isinstance(strategy, JoinStrategy):
            raise ConfigurationError(
                f"JoinConfig(strategy): expected a JoinStrategy, got {strategy!r:.80}"
            )
        self.strategy = strategy
        self.join_state = join_state
        self.timeout = None if timeout is None else seconds(timeout, "JoinConfig(timeout)")
        self.bulkhead = None if bulkhead is None else count(bulkhead, "JoinConfig(bulkhead)", 1)
        if strategy.kind == "partial_timeout" and self.timeout is None:
            raise ConfigurationError("JoinStrategy.PARTIAL_TIMEOUT requires a timeout")

    def __repr__(self) -> str:
        return (
            f"JoinConfig({self.strategy!r}, {self.join_state!r}, timeout={self.timeout!r}, "
            f"bulkhead={self.bulkhead!r})"
        )


@dataclass(frozen=True)
class SplitResult:
    """What every branch of a split did, by branch index (the order tasks were given).

    ``successes``: ``(index, returned_value)``; ``errors``: ``(index, exception)``, the
    exception that branch would raise alone (``TaskError``, ``RetryExhaustedError``, ...);
    ``cancelled``: indices of branches stopped because the join was already decided.
    """

    successes: list[tuple[int, Any]] = field(default_factory=list)
    errors: list[tuple[int, BaseException]] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)

    @property
    def completed_count(self) -> int:
        """Branches that finished, successfully or not."""
        return len(self.successes) + len(self.errors)

    @property
    def total_count(self) -> int:
        """Every branch of the split."""
        return self.completed_count + len(self.cancelled)


def _split_message(
    state: str,
    strategy: str,
    total: int,
    succeeded: int,
    errors: list[tuple[int, BaseException]],
    timed_out: bool,
    timeout: float | None,
) -> str:
    """The message of a failed split: the counts and up to three branch errors."""
    if timed_out and strategy == "JoinStrategy.PARTIAL_TIMEOUT":
        head = f"split in state {state}: no branch finished before the {timeout}s timeout"
    elif timed_out:
        head = (
            f"split in state {state} timed out after {timeout}s: {succeeded} of {total} "
            f"branches succeeded, strategy {strategy}"
        )
    else:
        head = (
            f"split in state {state}: join condition not met: {succeeded} of {total} "
            f"branches succeeded, strategy {strategy}"
        )
    if not errors:
        return head
    shown = "; ".join(f"branch {i}: {_describe_error(e)}" for i, e in errors[:3])
    more = f"; and {len(errors) - 3} more error(s)" if len(errors) > 3 else ""
    return f"{head}; errors: {shown}{more}"


def _describe_error(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
