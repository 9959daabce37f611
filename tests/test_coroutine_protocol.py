"""The run object returned by ``orchestrate()``: a coroutine driven by the event loop."""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import contextvars
import enum
import gc
import os
import traceback
import weakref
from typing import Any

import cano
import pytest

# --------------------------------------------------------------------------------------------
# helpers

GUARD = 10.0


class Step(enum.Enum):
    A = enum.auto()
    B = enum.auto()
    DONE = enum.auto()


MINIMAL = cano.TaskConfig.minimal()


def single(fn: Any, *, config: cano.TaskConfig = MINIMAL, resources: Any = None) -> Any:
    """A workflow running ``fn`` in A and ending in DONE (or whatever fn returns)."""
    wf: cano.Workflow[Step] = (
        cano.Workflow(resources) if resources is not None else cano.Workflow.bare()
    )
    return wf.register(Step.A, cano.task(fn, config=config)).add_exit_states([Step.B, Step.DONE])


async def done() -> Step:
    return Step.DONE


async def yield_once() -> Step:
    await asyncio.sleep(0)
    return Step.DONE


class Ticking:
    """An awaitable that yields a bare ``None`` once (like ``asyncio.sleep(0)``)."""

    def __await__(self) -> Any:
        yield None


# --------------------------------------------------------------------------------------------
# it is a coroutine


async def test_run_is_a_coroutine() -> None:
    run = single(done).orchestrate(Step.A)
    try:
        assert asyncio.iscoroutine(run)
        assert isinstance(run, collections.abc.Coroutine)
        assert isinstance(run, collections.abc.Awaitable)
    finally:
        run.close()


async def test_await() -> None:
    assert await single(yield_once).orchestrate(Step.A) is Step.DONE


def test_asyncio_run() -> None:
    assert asyncio.run(single(yield_once).orchestrate(Step.A)) is Step.DONE


def test_run_sync() -> None:
    assert single(yield_once).run_sync(Step.A) is Step.DONE


async def test_create_task() -> None:
    task = asyncio.create_task(single(yield_once).orchestrate(Step.A))
    assert await task is Step.DONE
    assert task.done() and not task.cancelled()


async def test_ensure_future() -> None:
    fut = asyncio.ensure_future(single(yield_once).orchestrate(Step.A))
    assert await fut is Step.DONE


async def test_gather_many_runs_concurrently_in_order() -> None:
    n_states = 10
    in_flight = 0
    peak = 0

    def make(i: int) -> Any:
        async def work() -> int:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            for _ in range(n_states - i):
                await asyncio.sleep(0)
            in_flight -= 1
            return 100 + i

        return cano.task(work, name=f"work{i}", config=MINIMAL)

    wf: cano.Workflow[int] = cano.Workflow.bare()
    for i in range(n_states):
        wf.register(i, make(i)).add_exit_state(100 + i)
    initials = [k % n_states for k in range(200)]
    results = await asyncio.gather(*(wf.orchestrate(i) for i in initials))
    assert results == [100 + i for i in initials]
    assert peak > 1, "runs did not interleave"


async def test_tuple_result_is_not_unpacked() -> None:
    wf: cano.Workflow[Any] = cano.Workflow.bare()

    async def to_tuple() -> Any:
        return ("x", 1)

    wf.register("start", cano.task(to_tuple, config=MINIMAL)).add_exit_state(("x", 1))
    assert await wf.orchestrate("start") == ("x", 1)


# --------------------------------------------------------------------------------------------
# send / throw / close


async def test_close_on_a_suspended_run_closes_the_user_coroutine() -> None:
    log: list[str] = []

    async def suspended() -> Step:
        try:
            await Ticking()
            log.append("resumed")
            return Step.DONE
        except GeneratorExit:
            log.append("exit")
            raise
        finally:
            log.append("finally")

    run = single(suspended).orchestrate(Step.A)
    assert run.send(None) is None  # suspended at the bare yield
    run.close()
    assert log == ["exit", "finally"]
    run.close()  # a second close is a no-op
    with pytest.raises(RuntimeError):
        run.send(None)


async def test_close_on_an_unstarted_run() -> None:
    started: list[bool] = []

    async def body() -> Step:
        started.append(True)
        return Step.DONE

    run = single(body).orchestrate(Step.A)
    run.close()
    run.close()
    assert started == []


def _thrower(log: list[Any]) -> Any:
    async def catcher() -> Step:
        try:
            await Ticking()
        except ValueError as e:
            log.append(e)
            return Step.B
        return Step.DONE

    return catcher


@pytest.mark.parametrize("form", ["instance", "class", "three-args"])
async def test_throw_into_a_suspended_run_reaches_the_user_coroutine(form: str) -> None:
    seen: list[Any] = []
    run = single(_thrower(seen)).orchestrate(Step.A)
    assert run.send(None) is None
    exc = ValueError("thrown")
    with pytest.raises(StopIteration) as info:
        if form == "instance":
            run.throw(exc)
        elif form == "class":
            run.throw(ValueError)
        else:
            run.throw(ValueError, exc, None)
    assert info.value.value is Step.B
    assert len(seen) == 1
    assert isinstance(seen[0], ValueError)
    if form != "class":
        assert seen[0] is exc


async def test_throw_that_the_user_does_not_catch_fails_the_task() -> None:
    run = single(_thrower([])).orchestrate(Step.A)
    assert run.send(None) is None
    key = KeyError("k")
    with pytest.raises(cano.TaskError) as info:
        run.throw(key)
    assert info.value.__cause__ is key


async def test_awaiting_a_finished_run_again_raises_runtime_error() -> None:
    run = single(yield_once).orchestrate(Step.A)
    assert await run is Step.DONE
    with pytest.raises(RuntimeError):
        await run


async def test_awaiting_a_failed_run_again_raises_runtime_error() -> None:
    async def boom() -> Step:
        raise ValueError("x")

    run = single(boom).orchestrate(Step.A)
    with pytest.raises(cano.TaskError):
        await run
    with pytest.raises(RuntimeError):
        await run


# --------------------------------------------------------------------------------------------
# exceptions, context, current task


def _deep_helper() -> None:
    raise ValueError("deep")


async def user_function_that_fails() -> Step:
    await asyncio.sleep(0)
    _deep_helper()
    return Step.DONE


async def test_user_traceback_is_kept() -> None:
    with pytest.raises(cano.TaskError) as info:
        await single(user_function_that_fails).orchestrate(Step.A)
    cause = info.value.__cause__
    assert isinstance(cause, ValueError)
    names = [frame.name for frame in traceback.extract_tb(cause.__traceback__)]
    assert "user_function_that_fails" in names
    assert "_deep_helper" in names


async def test_user_traceback_is_kept_after_retries() -> None:
    cfg = cano.TaskConfig().with_fixed_retry(1, 0.001)
    with pytest.raises(cano.RetryExhaustedError) as info:
        await single(user_function_that_fails, config=cfg).orchestrate(Step.A)
    cause = info.value.__cause__
    assert cause is not None
    names = [frame.name for frame in traceback.extract_tb(cause.__traceback__)]
    assert "user_function_that_fails" in names


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")


async def test_callers_contextvars_are_visible_in_tasks() -> None:
    seen: list[str] = []

    async def reads() -> Step:
        seen.append(request_id.get("unset"))
        await asyncio.sleep(0)
        seen.append(request_id.get("unset"))
        if len(seen) < 4:
            raise ValueError("retry me")
        return Step.DONE

    cfg = cano.TaskConfig().with_fixed_retry(1, 0.001)
    token = request_id.set("req-42")
    try:
        assert await single(reads, config=cfg).orchestrate(Step.A) is Step.DONE
        assert seen == ["req-42"] * 4
        seen.clear()
        assert await asyncio.create_task(single(reads, config=cfg).orchestrate(Step.A)) is Step.DONE
        assert seen == ["req-42"] * 4
    finally:
        request_id.reset(token)


async def test_current_task_inside_a_task_is_the_awaiting_task() -> None:
    seen: list[asyncio.Task[Any] | None] = []

    async def who() -> Step:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())
        return Step.DONE

    await single(who).orchestrate(Step.A)
    me = asyncio.current_task()
    assert seen == [me, me]
    seen.clear()
    task = asyncio.create_task(single(who).orchestrate(Step.A))
    await task
    assert seen == [task, task]


async def test_many_bare_sleep_zero_awaits() -> None:
    count = 0

    async def spins() -> Step:
        nonlocal count
        for _ in range(5000):
            await asyncio.sleep(0)
            count += 1
        return Step.DONE

    assert await single(spins).orchestrate(Step.A) is Step.DONE
    assert count == 5000


async def test_other_tasks_progress_while_a_run_is_suspended() -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async def waits() -> Step:
        for _ in range(10):
            await asyncio.sleep(0)
        return Step.DONE

    bg = asyncio.create_task(ticker())
    assert await single(waits).orchestrate(Step.A) is Step.DONE
    stop.set()
    await bg
    assert ticks >= 5


async def test_failed_future_is_thrown_into_the_user_coroutine() -> None:
    loop = asyncio.get_running_loop()
    err = ConnectionError("lost")

    async def awaits_failing_future() -> Step:
        fut: asyncio.Future[None] = loop.create_future()
        loop.call_soon(fut.set_exception, err)
        await fut
        return Step.DONE

    with pytest.raises(cano.TaskError) as info:
        await single(awaits_failing_future).orchestrate(Step.A)
    assert info.value.__cause__ is err


async def test_user_can_catch_a_failed_future_and_continue() -> None:
    loop = asyncio.get_running_loop()
    caught: list[BaseException] = []

    async def catches() -> Step:
        fut: asyncio.Future[None] = loop.create_future()
        loop.call_soon(fut.set_exception, ConnectionError("lost"))
        try:
            await fut
        except ConnectionError as e:
            caught.append(e)
        await asyncio.sleep(0)
        return Step.B

    assert await single(catches).orchestrate(Step.A) is Step.B
    assert len(caught) == 1


async def test_failed_future_is_retried() -> None:
    loop = asyncio.get_running_loop()
    calls = 0

    async def flaky() -> Step:
        nonlocal calls
        calls += 1
        fut: asyncio.Future[None] = loop.create_future()
        if calls == 1:
            loop.call_soon(fut.set_exception, ConnectionError("lost"))
        else:
            loop.call_soon(fut.set_result, None)
        await fut
        return Step.DONE

    cfg = cano.TaskConfig().with_fixed_retry(1, 0.001)
    assert await single(flaky, config=cfg).orchestrate(Step.A) is Step.DONE
    assert calls == 2


async def test_user_asyncio_timeout_inside_a_task() -> None:
    async def uses_timeout() -> Step:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.Event().wait()
        except TimeoutError:
            return Step.B
        return Step.DONE

    assert await single(uses_timeout).orchestrate(Step.A) is Step.B
    me = asyncio.current_task()
    assert me is not None and me.cancelling() == 0


async def test_task_awaiting_another_task_and_gather() -> None:
    async def child(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    async def fan_out() -> Step:
        a = await asyncio.create_task(child(1))
        b, c = await asyncio.gather(child(2), child(3))
        return Step.DONE if (a, b, c) == (2, 4, 6) else Step.B

    assert await single(fan_out).orchestrate(Step.A) is Step.DONE


async def test_two_state_run_with_awaits_in_each_state() -> None:
    order: list[str] = []

    async def a() -> Step:
        order.append("a")
        await asyncio.sleep(0)
        return Step.B

    async def b() -> Step:
        await asyncio.sleep(0)
        order.append("b")
        return Step.DONE

    wf: cano.Workflow[Step] = cano.Workflow.bare()
    wf.register(Step.A, cano.task(a, config=MINIMAL))
    wf.register(Step.B, cano.task(b, config=MINIMAL)).add_exit_state(Step.DONE)
    assert await wf.orchestrate(Step.A) is Step.DONE
    assert order == ["a", "b"]


# --------------------------------------------------------------------------------------------
# garbage collection and memory


class Payload:
    """A resource whose lifetime we watch."""

    held: Any = None


def _build_unawaited() -> weakref.ref[Payload]:
    payload = Payload()

    async def uses() -> Step:
        assert payload is not None
        return Step.DONE

    wf = single(uses, resources=cano.Resources().insert("payload", payload))
    run = wf.orchestrate(Step.A)
    assert asyncio.iscoroutine(run)
    return weakref.ref(payload)


async def test_never_awaited_run_leaks_nothing_and_warns_as_a_coroutine_would() -> None:
    with pytest.warns(RuntimeWarning, match="coroutine 'Workflow.orchestrate' was never awaited"):
        ref = _build_unawaited()
        gc.collect()
    assert ref() is None


async def test_a_closed_or_awaited_run_does_not_warn() -> None:
    wf = single(done)
    run = wf.orchestrate(Step.A)
    run.close()
    del run
    assert await wf.orchestrate(Step.A) is Step.DONE
    gc.collect()  # no warning: the suite turns warnings into errors


def _build_suspended(log: list[str]) -> tuple[weakref.ref[Payload], weakref.ref[Payload]]:
    captured = Payload()

    async def suspends() -> Step:
        local = Payload()
        local_ref.append(weakref.ref(local))
        try:
            await Ticking()
            return Step.DONE
        finally:
            log.append("finally")

    local_ref: list[weakref.ref[Payload]] = []
    wf = single(suspends, resources=cano.Resources().insert("payload", captured))
    run = wf.orchestrate(Step.A)
    assert run.send(None) is None
    return weakref.ref(captured), local_ref[0]


async def test_dropped_suspended_run_is_finalised() -> None:
    log: list[str] = []
    captured, local = _build_suspended(log)
    gc.collect()
    assert captured() is None
    assert local() is None
    assert log == ["finally"]


def _build_cycle() -> weakref.ref[Payload]:
    holder = Payload()
    wf = single(done, resources=cano.Resources().insert("holder", holder))
    holder.held = wf.orchestrate(Step.A)  # run -> resources -> holder -> run
    return weakref.ref(holder)


async def test_reference_cycle_through_a_run_is_collected() -> None:
    with pytest.warns(RuntimeWarning, match="never awaited"):
        ref = _build_cycle()
        gc.collect()
    assert ref() is None


def _build_suspended_cycle() -> weakref.ref[Payload]:
    holder = Payload()

    async def suspends() -> Step:
        await Ticking()
        return Step.DONE

    wf = single(suspends, resources=cano.Resources().insert("holder", holder))
    run = wf.orchestrate(Step.A)
    assert run.send(None) is None
    holder.held = run
    return weakref.ref(holder)


async def test_reference_cycle_through_a_suspended_run_is_collected() -> None:
    ref = _build_suspended_cycle()
    gc.collect()
    assert ref() is None


def _build_finished_run() -> tuple[Any, weakref.ref[Payload]]:
    payload = Payload()

    async def uses() -> Step:
        assert payload is not None
        return Step.DONE

    wf = single(uses)
    return wf.orchestrate(Step.A), weakref.ref(payload)


async def test_finished_run_releases_the_workflow_snapshot_resources() -> None:
    run, ref = _build_finished_run()
    assert await run is Step.DONE
    del run
    gc.collect()
    assert ref() is None


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


LEAK_MARGIN = 20 * 1024 * 1024  # 90k runs x ~230 B; a 1 KB/run leak adds ~90 MB


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
@pytest.mark.timeout(60)
async def test_memory_stays_flat_over_100k_runs() -> None:
    async def a() -> Step:
        await asyncio.sleep(0)
        return Step.B

    async def b() -> Step:
        return Step.DONE

    wf: cano.Workflow[Step] = cano.Workflow.bare()
    wf.register(Step.A, cano.task(a, config=MINIMAL))
    wf.register(Step.B, cano.task(b, config=MINIMAL)).add_exit_state(Step.DONE)

    for _ in range(10_000):
        assert await wf.orchestrate(Step.A) is Step.DONE
    gc.collect()
    after_10k = _rss()
    for _ in range(90_000):
        await wf.orchestrate(Step.A)
    gc.collect()
    after_100k = _rss()
    growth = after_100k - after_10k
    assert growth < LEAK_MARGIN, f"RSS grew {growth / 1e6:.1f} MB over 90k runs"


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
@pytest.mark.timeout(60)
async def test_memory_stays_flat_over_failing_runs() -> None:
    async def fails() -> Step:
        await asyncio.sleep(0)
        raise ValueError("x" * 100)

    wf = single(fails)

    async def batch(n: int) -> None:
        for _ in range(n):
            with contextlib.suppress(cano.TaskError):
                await wf.orchestrate(Step.A)

    await batch(5_000)
    gc.collect()
    before = _rss()
    await batch(45_000)
    gc.collect()
    growth = _rss() - before
    assert growth < LEAK_MARGIN, f"RSS grew {growth / 1e6:.1f} MB over 45k failing runs"
