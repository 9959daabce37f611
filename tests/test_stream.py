"""StreamTask: windows, cursor commits, error policies, item timeouts and the cancel drain.

Most tests drive the engine's stream driver directly (``_drive_stream(task, res, cursor,
commit)``, exactly what ``register_stream`` calls) so they can record every commit; the last
section runs streams through a workflow.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from typing import Any

import cano
import pytest
from cano.stream import _drive_stream


class S(enum.Enum):
    START = enum.auto()
    DONE = enum.auto()
    STOPPED = enum.auto()


RES = cano.Resources.empty()
Event = tuple[Any, ...]


class Script(cano.StreamTask[S, int, int, int]):
    """Streams ``items`` (from ``cursor + 1`` on a resume); output ``item * 10``, cursor
    ``item``. Every hook appends to ``log``; ``fail`` items raise, ``slow`` items sleep."""

    def __init__(
        self,
        items: Iterable[int],
        *,
        window: cano.StreamWindow | None = None,
        policy: cano.StreamErrorPolicy | None = None,
        config: cano.TaskConfig | None = None,
        fail: Iterable[int] = (),
        slow: dict[int, float] | None = None,
        gaps: dict[int, float] | None = None,
        hang_after: bool = False,
        stop_when: int | None = None,
    ) -> None:
        self.items = list(items)
        self._window = window
        self._policy = policy
        self._config = config
        self.fail = set(fail)
        self.slow = slow or {}
        self.gaps = gaps or {}  # seconds the source waits before yielding an item
        self.hang_after = hang_after  # the source never ends after its items
        self.stop_when = stop_when  # Stop when a window's outputs sum to at least this
        self.log: list[Event] = []
        self.source_closed = False
        self.opened_with: list[int | None] = []

    def config(self) -> cano.TaskConfig:
        return self._config if self._config is not None else super().config()

    def window(self) -> cano.StreamWindow:
        return self._window if self._window is not None else super().window()

    def on_item_error(self) -> cano.StreamErrorPolicy:
        return self._policy if self._policy is not None else super().on_item_error()

    async def open(self, res: cano.Resources, cursor: int | None) -> AsyncIterator[int]:
        self.opened_with.append(cursor)
        try:
            for item in self.items:
                if cursor is not None and item <= cursor:
                    continue
                if item in self.gaps:
                    await asyncio.sleep(self.gaps[item])
                yield item
            if self.hang_after:
                await asyncio.Event().wait()
        finally:
            self.source_closed = True

    async def process_item(self, res: cano.Resources, item: int) -> tuple[int, int]:
        self.log.append(("process", item))
        try:
            if item in self.slow:
                await asyncio.sleep(self.slow[item])
        except asyncio.CancelledError:
            self.log.append(("process cancelled", item))
            raise
        if item in self.fail:
            self.log.append(("failed", item))
            raise ValueError(f"bad item {item}")
        self.log.append(("processed", item))
        return item * 10, item

    async def flush_window(
        self, res: cano.Resources, outputs: list[int]
    ) -> cano.Continue | cano.Stop[S]:
        self.log.append(("flush", outputs))
        if self.stop_when is not None and sum(outputs) >= self.stop_when:
            return cano.Stop(S.STOPPED)
        return cano.Continue()

    async def on_close(self, res: cano.Resources, reason: cano.CloseReason) -> S:
        self.log.append(("close", reason))
        return S.DONE


class Commits:
    """A recording ``commit``: what the engine would persist."""

    def __init__(self, log: list[Event] | None = None) -> None:
        self.cursors: list[int] = []
        self.log = log

    async def __call__(self, cursor: int) -> None:
        self.cursors.append(cursor)
        if self.log is not None:
            self.log.append(("commit", cursor))


async def drive(task: Script, cursor: int | None = None) -> tuple[S, Commits]:
    commits = Commits(task.log)
    state = await _drive_stream(task, RES, cursor, commits)
    return state, commits


def flushes(log: list[Event]) -> list[list[int]]:
    return [e[1] for e in log if e[0] == "flush"]


def only(log: list[Event], *kinds: str) -> list[Event]:
    return [e for e in log if e[0] in kinds]


# --------------------------------------------------------------------------------------------
# Value objects
# --------------------------------------------------------------------------------------------


def test_value_objects() -> None:
    assert cano.Continue() == cano.Continue()
    assert repr(cano.Continue()) == "Continue()"
    assert cano.Stop(S.DONE).state is S.DONE
    assert cano.Stop(S.DONE) == cano.Stop(S.DONE)
    assert [r.name for r in cano.CloseReason] == ["EXHAUSTED", "CANCELLED"]
    assert isinstance(cano.CloseReason.CANCELLED, enum.Enum)


def test_stream_window_validates_and_clamps() -> None:
    assert cano.StreamWindow.count(5).size == 5
    assert cano.StreamWindow.count(1).size == 1
    assert cano.StreamWindow.duration(0).interval == 0.001
    assert cano.StreamWindow.duration(timedelta(milliseconds=250)).interval == 0.25
    assert cano.StreamWindow.duration(2).size is None
    assert repr(cano.StreamWindow.count(3)) == "StreamWindow.count(3)"
    for bad in (0, -1, 1.5, True, "3"):  # 0 is refused, not silently made 1
        with pytest.raises(cano.ConfigurationError, match=r"StreamWindow.count\(n\)"):
            cano.StreamWindow.count(bad)  # type: ignore[arg-type]
    for bad_d in (-0.5, float("nan"), timedelta(seconds=-1), "1s"):
        with pytest.raises(cano.ConfigurationError):
            cano.StreamWindow.duration(bad_d)  # type: ignore[arg-type]


def test_stream_error_policy_validates() -> None:
    assert cano.StreamErrorPolicy.retry_on_error(3).max_errors == 3
    assert cano.StreamErrorPolicy.fail_fast().kind == "fail_fast"
    assert cano.StreamErrorPolicy.skip_and_continue() == cano.StreamErrorPolicy.skip_and_continue()
    assert cano.StreamErrorPolicy.fail_fast() != cano.StreamErrorPolicy.skip_and_continue()
    assert repr(cano.StreamErrorPolicy.retry_on_error(2)) == "StreamErrorPolicy.retry_on_error(2)"
    for bad in (-1, 1.5, None):
        with pytest.raises(cano.ConfigurationError):
            cano.StreamErrorPolicy.retry_on_error(bad)  # type: ignore[arg-type]


def test_stream_task_defaults() -> None:
    class T(cano.StreamTask[S, int, int, int]):
        pass

    t = T()
    assert t.window() == cano.StreamWindow.count(1)
    assert t.on_item_error() == cano.StreamErrorPolicy.fail_fast()
    assert t.config().retry_mode == cano.TaskConfig.minimal().retry_mode
    assert t.config().attempt_timeout is None
    assert t.name() == "test_stream_task_defaults.<locals>.T"
    assert t.cursor_type is None


async def test_missing_open_is_a_configuration_error() -> None:
    class T(cano.StreamTask[S, int, int, int]):
        pass

    with pytest.raises(cano.ConfigurationError, match="open"):
        await _drive_stream(T(), RES, None, Commits())


# --------------------------------------------------------------------------------------------
# Windows and commits
# --------------------------------------------------------------------------------------------


async def test_count_window_flushes_and_commits_the_last_cursor_of_each_window() -> None:
    task = Script(range(7), window=cano.StreamWindow.count(3))
    state, commits = await drive(task)
    assert state is S.DONE
    assert flushes(task.log) == [[0, 10, 20], [30, 40, 50], [60]]
    assert commits.cursors == [2, 5, 6]
    assert only(task.log, "flush", "commit", "close") == [
        ("flush", [0, 10, 20]),
        ("commit", 2),
        ("flush", [30, 40, 50]),
        ("commit", 5),
        ("flush", [60]),
        ("close", cano.CloseReason.EXHAUSTED),
        ("commit", 6),
    ]
    assert task.source_closed


async def test_default_window_flushes_after_every_item() -> None:
    task = Script(range(3))
    _, commits = await drive(task)
    assert flushes(task.log) == [[0], [10], [20]]
    assert commits.cursors == [0, 1, 2]


async def test_exact_multiple_has_no_empty_final_flush() -> None:
    task = Script(range(4), window=cano.StreamWindow.count(2))
    _, commits = await drive(task)
    assert flushes(task.log) == [[0, 10], [20, 30]]
    assert commits.cursors == [1, 3]
    assert task.log[-1] == ("close", cano.CloseReason.EXHAUSTED)


async def test_empty_source_closes_without_flush_or_commit() -> None:
    task = Script([])
    state, commits = await drive(task)
    assert state is S.DONE
    assert task.log == [("close", cano.CloseReason.EXHAUSTED)]
    assert commits.cursors == []


async def test_resumed_cursor_is_passed_to_open() -> None:
    task = Script(range(5), window=cano.StreamWindow.count(10))
    _, commits = await drive(task, cursor=2)
    assert task.opened_with == [2]
    assert flushes(task.log) == [[30, 40]]
    assert commits.cursors == [4]


async def test_duration_window_groups_items_and_skips_empty_windows() -> None:
    # 0 and 1 arrive at once; 2 arrives after several empty windows have gone by.
    task = Script(range(3), window=cano.StreamWindow.duration(0.02), gaps={2: 0.15})
    _, commits = await drive(task)
    assert flushes(task.log) == [[0, 10], [20]]  # no flush for the empty windows
    assert commits.cursors == [1, 2]


async def test_duration_window_flushes_while_the_source_is_idle() -> None:
    task = Script(range(2), window=cano.StreamWindow.duration(0.02), hang_after=True)
    driver = asyncio.ensure_future(drive(task))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if flushes(task.log):
            break
    # The window flushed on its own, without waiting for more items or the end.
    assert flushes(task.log) == [[0, 10]]
    driver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await driver


# --------------------------------------------------------------------------------------------
# Stop vs Continue, on_close
# --------------------------------------------------------------------------------------------


async def test_stop_on_a_full_window_returns_its_state_without_on_close() -> None:
    task = Script(range(10), window=cano.StreamWindow.count(2), stop_when=50)
    state, commits = await drive(task)
    assert state is S.STOPPED
    assert flushes(task.log) == [[0, 10], [20, 30]]
    assert commits.cursors == [1, 3]  # the stopping window's cursor is committed too
    assert not only(task.log, "close")
    assert task.source_closed  # the generator's finally ran


async def test_stop_on_the_final_partial_window_skips_on_close() -> None:
    task = Script(range(3), window=cano.StreamWindow.count(5), stop_when=1)
    state, commits = await drive(task)
    assert state is S.STOPPED
    assert flushes(task.log) == [[0, 10, 20]]
    assert commits.cursors == [2]
    assert not only(task.log, "close")


async def test_on_close_error_on_exhaustion_fails_and_commits_nothing() -> None:
    class Bad(Script):
        async def on_close(self, res: cano.Resources, reason: cano.CloseReason) -> S:
            raise RuntimeError("close failed")

    task = Bad(range(2), window=cano.StreamWindow.count(5))
    commits = Commits()
    with pytest.raises(RuntimeError, match="close failed"):
        await _drive_stream(task, RES, None, commits)
    assert commits.cursors == []


async def test_flush_error_fails_without_commit() -> None:
    class Bad(Script):
        async def flush_window(
            self, res: cano.Resources, outputs: list[int]
        ) -> cano.Continue | cano.Stop[S]:
            raise OSError("sink down")

    task = Bad(range(3))
    commits = Commits()
    with pytest.raises(OSError, match="sink down"):
        await _drive_stream(task, RES, None, commits)
    assert commits.cursors == []
    assert task.source_closed


async def test_open_may_return_an_async_iterator_from_a_coroutine() -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def __aiter__(self) -> Counter:
            return self

        async def __anext__(self) -> int:
            self.n += 1
            if self.n > 3:
                raise StopAsyncIteration
            return self.n

    class FromCoroutine(Script):
        async def open(  # type: ignore[override]
            self, res: cano.Resources, cursor: int | None
        ) -> AsyncIterator[int]:
            return Counter()

    task = FromCoroutine([])
    _, commits = await drive(task)
    assert flushes(task.log) == [[10], [20], [30]]
    assert commits.cursors == [1, 2, 3]


async def test_open_returning_something_else_is_a_type_error() -> None:
    class Bad(Script):
        async def open(  # type: ignore[override]
            self, res: cano.Resources, cursor: int | None
        ) -> AsyncIterator[int]:
            return [1, 2]  # type: ignore[return-value]

    with pytest.raises(TypeError, match="async iterator"):
        await drive(Bad([]))


async def test_bad_return_values_are_type_errors() -> None:
    class BadSignal(Script):
        async def flush_window(
            self, res: cano.Resources, outputs: list[int]
        ) -> cano.Continue | cano.Stop[S]:
            return S.DONE  # type: ignore[return-value]

    class BadItem(Script):
        async def process_item(self, res: cano.Resources, item: int) -> tuple[int, int]:
            return item  # type: ignore[return-value]

    with pytest.raises(TypeError, match="flush_window returned"):
        await drive(BadSignal([1]))
    with pytest.raises(TypeError, match="process_item returned"):
        await drive(BadItem([1]))


# --------------------------------------------------------------------------------------------
# Item error policies and the per-item timeout
# --------------------------------------------------------------------------------------------


async def test_fail_fast_raises_the_raw_item_error() -> None:
    task = Script(range(5), window=cano.StreamWindow.count(2), fail={3})
    commits = Commits()
    with pytest.raises(ValueError, match="bad item 3"):
        await _drive_stream(task, RES, None, commits)
    assert flushes(task.log) == [[0, 10]]
    assert commits.cursors == [1]
    assert not only(task.log, "close")
    assert task.source_closed


async def test_skip_and_continue_drops_the_item_and_its_cursor() -> None:
    task = Script(
        range(6),
        window=cano.StreamWindow.count(2),
        policy=cano.StreamErrorPolicy.skip_and_continue(),
        fail={1, 4, 5},
    )
    state, commits = await drive(task)
    assert state is S.DONE
    # Windows count successful items only; failed items' cursors are never committed.
    assert flushes(task.log) == [[0, 20], [30]]
    assert commits.cursors == [2, 3]


async def test_retry_on_error_tolerates_n_consecutive_failures() -> None:
    task = Script(
        range(8),
        window=cano.StreamWindow.count(10),
        policy=cano.StreamErrorPolicy.retry_on_error(2),
        fail={1, 2, 4, 5},  # never more than 2 in a row: the count resets on success
    )
    state, commits = await drive(task)
    assert state is S.DONE
    assert flushes(task.log) == [[0, 30, 60, 70]]
    assert commits.cursors == [7]
    # Failed items are dropped, not pulled again.
    assert [e[1] for e in only(task.log, "process")] == list(range(8))


async def test_retry_on_error_fails_on_one_failure_too_many() -> None:
    task = Script(
        range(8),
        policy=cano.StreamErrorPolicy.retry_on_error(2),
        fail={2, 3, 4},
    )
    commits = Commits()
    with pytest.raises(ValueError, match="bad item 4"):
        await _drive_stream(task, RES, None, commits)
    assert commits.cursors == [0, 1]


async def test_item_timeout_is_a_task_timeout_error_under_fail_fast() -> None:
    task = Script(
        range(3),
        config=cano.TaskConfig.minimal().with_attempt_timeout(0.03),
        slow={1: 5.0},
    )
    commits = Commits()
    with pytest.raises(cano.TaskTimeoutError, match="attempt_timeout"):
        await _drive_stream(task, RES, None, commits)
    assert ("process cancelled", 1) in task.log
    assert commits.cursors == [0]


async def test_item_timeout_is_governed_by_the_error_policy() -> None:
    task = Script(
        range(4),
        window=cano.StreamWindow.count(10),
        config=cano.TaskConfig.minimal().with_attempt_timeout(0.03),
        policy=cano.StreamErrorPolicy.skip_and_continue(),
        slow={1: 5.0, 2: 0.001},
    )
    state, commits = await drive(task)
    assert state is S.DONE
    assert flushes(task.log) == [[0, 20, 30]]
    assert commits.cursors == [3]


async def test_retries_in_the_config_are_not_applied() -> None:
    task = Script(range(3), config=cano.TaskConfig(), fail={1})
    with pytest.raises(ValueError):
        await drive(task)
    assert task.opened_with == [None]  # opened once: no outer retry inside the driver


# --------------------------------------------------------------------------------------------
# Cancellation drain
# --------------------------------------------------------------------------------------------


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition never became true"
        await asyncio.sleep(0.001)


async def test_cancel_waits_for_the_item_then_flush_close_commit_and_reraise() -> None:
    task = Script(range(5), window=cano.StreamWindow.count(10), slow={1: 0.05})
    commits = Commits(task.log)
    driver = asyncio.ensure_future(_drive_stream(task, RES, None, commits))
    await wait_for(lambda: ("process", 1) in task.log)
    driver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await driver
    assert task.log == [
        ("process", 0),
        ("processed", 0),
        ("process", 1),
        ("processed", 1),  # not interrupted
        ("flush", [0, 10]),
        ("close", cano.CloseReason.CANCELLED),
        ("commit", 1),
    ]
    assert driver.cancelled()
    assert task.source_closed


async def test_cancel_while_waiting_for_the_source() -> None:
    task = Script(range(2), window=cano.StreamWindow.count(10), hang_after=True)
    commits = Commits(task.log)
    driver = asyncio.ensure_future(_drive_stream(task, RES, None, commits))
    await wait_for(lambda: ("processed", 1) in task.log)
    await asyncio.sleep(0.01)
    driver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await driver
    assert only(task.log, "flush", "close", "commit") == [
        ("flush", [0, 10]),
        ("close", cano.CloseReason.CANCELLED),
        ("commit", 1),
    ]
    assert task.source_closed


async def test_cancel_with_an_empty_window_only_closes() -> None:
    task = Script(range(2), hang_after=True)  # count(1): everything already flushed
    commits = Commits(task.log)
    driver = asyncio.ensure_future(_drive_stream(task, RES, None, commits))
    await wait_for(lambda: ("commit", 1) in task.log)
    await asyncio.sleep(0.01)
    driver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await driver
    assert only(task.log, "flush", "close", "commit")[-2:] == [
        ("commit", 1),
        ("close", cano.CloseReason.CANCELLED),
    ]


async def test_cancel_during_a_flush_lets_it_finish() -> None:
    class SlowFlush(Script):
        async def flush_window(
            self, res: cano.Resources, outputs: list[int]
        ) -> cano.Continue | cano.Stop[S]:
            self.log.append(("flush start", outputs))
            await asyncio.sleep(0.05)
            return await super().flush_window(res, outputs)

    task = SlowFlush(range(5), window=cano.StreamWindow.count(2))
    commits = Commits(task.log)
    driver = asyncio.ensure_future(_drive_stream(task, RES, None, commits))
    await wait_for(lambda: ("flush start", [0, 10]) in task.log)
    driver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await driver
    assert only(task.log, "flush", "close", "commit") == [
        ("flush", [0, 10]),
        ("commit", 1),
        ("close", cano.CloseReason.CANCELLED),
    ]


async def test_drain_flush_failure_still_closes_and_commits_nothing() -> None:
    class FlushFailsOnDrain(Script):
        async def flush_window(
            self, res: cano.Resources, outputs: list[int]
        ) -> cano.Continue | cano.Stop[S]:
            self.log.append(("flush", outputs))
            raise OSError("sink down")

        async def on_close(self, res: cano.Resources, reason: cano.CloseReason) -> S:
            self.log.append(("close", reason))
            raise RuntimeError("dropped")

    task = FlushFailsOnDrain(range(2), window=cano.StreamWindow.count(10), hang_after=True)
    commits = Commits(task.log)
    driver = asyncio.ensure_future(_drive_stream(task, RES, None, commits))
    await wait_for(lambda: ("processed", 1) in task.log)
    driver.cancel()
    with pytest.raises(OSError, match="sink down"):
        await driver
    assert only(task.log, "flush", "close", "commit") == [
        ("flush", [0, 10]),
        ("close", cano.CloseReason.CANCELLED),
    ]
    assert commits.cursors == []


async def test_on_close_error_during_drain_propagates() -> None:
    class CloseFails(Script):
        async def on_close(self, res: cano.Resources, reason: cano.CloseReason) -> S:
            self.log.append(("close", reason))
            raise RuntimeError("cleanup failed")

    task = CloseFails(range(1), window=cano.StreamWindow.count(10), hang_after=True)
    commits = Commits(task.log)
    driver = asyncio.ensure_future(_drive_stream(task, RES, None, commits))
    await wait_for(lambda: ("processed", 0) in task.log)
    driver.cancel()
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await driver
    assert commits.cursors == []


async def test_cancel_during_open_propagates_without_on_close() -> None:
    class SlowOpen(Script):
        async def open(  # type: ignore[override]
            self, res: cano.Resources, cursor: int | None
        ) -> AsyncIterator[int]:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    task = SlowOpen([1])
    driver = asyncio.ensure_future(_drive_stream(task, RES, None, Commits()))
    await asyncio.sleep(0.01)
    driver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await driver
    assert task.log == []


async def test_item_timeout_bounds_the_drain() -> None:
    task = Script(
        range(3),
        window=cano.StreamWindow.count(10),
        config=cano.TaskConfig.minimal().with_attempt_timeout(0.05),
        policy=cano.StreamErrorPolicy.skip_and_continue(),
        slow={1: 10.0},
    )
    commits = Commits(task.log)
    driver = asyncio.ensure_future(_drive_stream(task, RES, None, commits))
    await wait_for(lambda: ("process", 1) in task.log)
    driver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(driver, 2)
    assert only(task.log, "flush", "close", "commit", "process cancelled") == [
        ("process cancelled", 1),
        ("flush", [0]),
        ("close", cano.CloseReason.CANCELLED),
        ("commit", 0),
    ]


# --------------------------------------------------------------------------------------------
# Through a workflow (register_stream)
# --------------------------------------------------------------------------------------------


def stream_workflow(task: Script) -> cano.Workflow[S]:
    return cano.Workflow.bare().register_stream(S.START, task).add_exit_states([S.DONE, S.STOPPED])


async def test_register_stream_runs_to_the_on_close_state() -> None:
    task = Script(range(5), window=cano.StreamWindow.count(2))
    assert await stream_workflow(task).orchestrate(S.START) is S.DONE
    assert flushes(task.log) == [[0, 10], [20, 30], [40]]


async def test_register_stream_stop_moves_on() -> None:
    task = Script(range(5), window=cano.StreamWindow.count(2), stop_when=1)
    assert await stream_workflow(task).orchestrate(S.START) is S.STOPPED


async def test_register_stream_cancelled_by_token_drains() -> None:
    token, handle = cano.CancellationToken.new()
    task = Script(range(3), window=cano.StreamWindow.count(10), hang_after=True)
    run = asyncio.ensure_future(stream_workflow(task).orchestrate(S.START, cancel=token))
    await wait_for(lambda: ("processed", 2) in task.log)
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await run
    assert only(task.log, "flush", "close") == [
        ("flush", [0, 10, 20]),
        ("close", cano.CloseReason.CANCELLED),
    ]


async def test_register_stream_total_timeout_drains() -> None:
    task = Script(range(2), window=cano.StreamWindow.count(10), hang_after=True)
    wf = stream_workflow(task).with_total_timeout(0.05)
    with pytest.raises(cano.WorkflowTimeoutError):
        await wf.orchestrate(S.START)
    assert only(task.log, "flush", "close") == [
        ("flush", [0, 10]),
        ("close", cano.CloseReason.CANCELLED),
    ]


async def test_register_stream_item_error_fails_the_run() -> None:
    task = Script(range(3), fail={1})
    with pytest.raises(cano.TaskError) as info:
        await stream_workflow(task).orchestrate(S.START)
    assert isinstance(info.value.__cause__, ValueError)
