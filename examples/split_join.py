"""Split / join: ask three price sources at once and go on as soon as two have answered.

The ``FETCH`` state splits into one branch per source. Each branch is its own asyncio task
with its own retries. ``JoinStrategy.quorum(2)`` decides the join as soon as two sources
answered: the slow third one is cancelled (its ``finally`` runs) and the run moves to
``AGGREGATE``, whose task reads what every branch did from the ``SplitResult``. The join
timeout bounds the whole fan-out: if two answers had not arrived within it, the run would
fail with ``WorkflowError`` listing the branch errors.

Run it with ``python examples/split_join.py``.
"""

from __future__ import annotations

import asyncio
import enum
import statistics

import cano


class Quote(enum.Enum):
    FETCH = enum.auto()
    AGGREGATE = enum.auto()
    DONE = enum.auto()


class PriceSource(cano.Task[Quote]):
    """One mock price API. Branches share data through resources: each one stores its price
    under ``price:<name>``; what a branch returns is only recorded in the SplitResult."""

    def __init__(self, name: str, price: float, *, delay: float, failures: int = 0) -> None:
        self.source = name
        self.price = price
        self.delay = delay
        self.failures = failures  # how many calls fail before the API answers
        self.calls = 0

    def name(self) -> str:
        return self.source  # observers see the branch as "<name>[<index>]"

    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig.minimal().with_fixed_retry(2, 0.01).with_attempt_timeout(5.0)

    async def run(self, res: cano.Resources) -> Quote:
        self.calls += 1
        try:
            await asyncio.sleep(self.delay)  # the network call
            if self.calls <= self.failures:
                raise ConnectionError(f"{self.source}: connection reset")
        except asyncio.CancelledError:
            print(f"  {self.source}: cancelled, the quorum was already reached")
            raise
        res.get("prices", cano.MemoryStore).put(f"price:{self.source}", self.price)
        return Quote.AGGREGATE


SOURCES = [
    PriceSource("exchange-a", 101.20, delay=0.01),
    PriceSource("exchange-b", 100.80, delay=0.02, failures=1),  # fails once, then answers
    PriceSource("exchange-c", 99.90, delay=30.0),  # far too slow: will be cancelled
]


class Aggregate(cano.Task[Quote]):
    """The join state's task: reads the SplitResult and averages the prices it got."""

    def __init__(self) -> None:
        self.price: float | None = None

    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig.minimal()

    async def run(self, res: cano.Resources) -> Quote:
        result = res.get(cano.SPLIT_RESULT_KEY, cano.SplitResult)
        prices = res.get("prices", cano.MemoryStore)
        answered = [SOURCES[i].source for i, _ in result.successes]
        quotes = [float(prices.get(f"price:{name}")) for name in answered]
        self.price = statistics.mean(quotes)
        print(f"  answered: {', '.join(answered)}")
        print(f"  failed: {[(SOURCES[i].source, repr(e)) for i, e in result.errors]}")
        print(f"  cancelled: {[SOURCES[i].source for i in result.cancelled]}")
        print(f"  {result.completed_count} of {result.total_count} branches finished")
        return Quote.DONE


class Printer(cano.WorkflowObserver):
    """Shows each branch as the engine sees it."""

    def on_task_start(self, task_id: str) -> None:
        print(f"  start   {task_id}")

    def on_retry(self, task_id: str, attempt: int) -> None:
        print(f"  retry   {task_id} after failed attempt {attempt}")

    def on_task_success(self, task_id: str) -> None:
        print(f"  success {task_id}")

    def on_task_failure(self, task_id: str, error: BaseException) -> None:
        print(f"  failure {task_id}: {type(error).__name__}")


def build(aggregate: Aggregate) -> cano.Workflow[Quote]:
    resources: cano.Resources = cano.Resources().insert("prices", cano.MemoryStore())
    join = cano.JoinConfig(cano.JoinStrategy.quorum(2), Quote.AGGREGATE, timeout=2.0)
    return (
        cano.Workflow[Quote](resources)
        .register_split(Quote.FETCH, SOURCES, join)
        .register(Quote.AGGREGATE, aggregate)
        .add_exit_state(Quote.DONE)
        .with_observer(Printer())
    )


async def main() -> None:
    aggregate = Aggregate()
    workflow = build(aggregate)
    workflow.validate()
    print("fetching prices from 3 sources, quorum of 2, join timeout 2 s:")
    final = await workflow.orchestrate(Quote.FETCH)
    assert final is Quote.DONE and aggregate.price is not None
    print(f"finished in {final.name}: price {aggregate.price:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
