"""Retry modes, TaskConfig, durations, and the retry loop as seen through workflow runs."""

from __future__ import annotations

import asyncio
import enum
from datetime import timedelta
from typing import Any

import cano
import pytest

# --------------------------------------------------------------------------------------------
# helpers


class Step(enum.Enum):
    WORK = enum.auto()
    DONE = enum.auto()


class Scripted(cano.Task[Step]):
    """A task whose n-th attempt (1-based) follows ``script[n - 1]``.

    A script entry is an exception instance (raised), the string ``"hang"`` (waits forever),
    ``("sleep", seconds)`` then succeeds, or ``None`` (returns DONE at once). Attempts past
    the script's end succeed.
    """

    def __init__(self, config: cano.TaskConfig, script: list[Any], name: str = "scripted") -> None:
        self._config = config
        self._script = script
        self._name = name
        self.attempts = 0
        self.raised: list[BaseException] = []
        self.log: list[str] = []

    def config(self) -> cano.TaskConfig:
        return self._config

    def name(self) -> str:
        return self._name

    async def run(self, res: cano.Resources) -> Step:
        self.attempts += 1
        n = self.attempts
        self.log.append(f"start{n}")
        try:
            action = self._script[n - 1] if n <= len(self._script) else None
            if isinstance(action, BaseException):
                self.raised.append(action)
                raise action
            if action == "hang":
                await asyncio.Event().wait()
            if isinstance(action, tuple):
                await asyncio.sleep(action[1])
            return Step.DONE
        except asyncio.CancelledError:
            self.log.append(f"cancelled{n}")
            raise
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits
            self.log.append(f"end{n}")


class Retries(cano.WorkflowObserver):
    def __init__(self) -> None:
        self.retries: list[tuple[str, int]] = []

    def on_retry(self, task_id: str, attempt: int) -> None:
        self.retries.append((task_id, attempt))


def workflow(task: object, *observers: object) -> cano.Workflow[Step]:
    wf: cano.Workflow[Step] = cano.Workflow.bare().register(Step.WORK, task)
    wf.add_exit_state(Step.DONE)
    for o in observers:
        wf.with_observer(o)
    return wf


FAST = cano.TaskConfig().with_fixed_retry(2, 0.001)  # 3 attempts, 1 ms apart

BAD_DURATIONS = [-0.5, -1, float("nan"), timedelta(seconds=-1)]


# --------------------------------------------------------------------------------------------
# RetryMode


def test_none_mode_allows_one_attempt_and_no_delay() -> None:
    mode = cano.RetryMode.none()
    assert mode.max_attempts == 1
    assert mode.delay_for_attempt(0) is None
    assert mode.delay_for_attempt(1) is None


def test_fixed_mode_constant_delay_then_none() -> None:
    mode = cano.RetryMode.fixed(3, 0.25)
    assert mode.max_attempts == 4
    delays = [mode.delay_for_attempt(k) for k in range(3)]
    assert delays == [0.25, 0.25, 0.25]
    assert all(type(d) is float for d in delays)
    assert mode.delay_for_attempt(3) is None  # after the last retry
    assert mode.delay_for_attempt(10) is None


def test_fixed_zero_retries_is_a_single_attempt() -> None:
    mode = cano.RetryMode.fixed(0, 0.5)
    assert mode.max_attempts == 1
    assert mode.delay_for_attempt(0) is None


@pytest.mark.parametrize(
    ("delay", "expected"),
    [(0.25, 0.25), (1, 1.0), (2, 2.0), (timedelta(milliseconds=250), 0.25), (0, 0.0)],
)
def test_fixed_mode_accepts_float_int_timedelta(delay: Any, expected: float) -> None:
    d = cano.RetryMode.fixed(1, delay).delay_for_attempt(0)
    assert type(d) is float
    assert d == pytest.approx(expected)


def test_exponential_without_jitter_doubles() -> None:
    mode = cano.RetryMode.exponential(4, base_delay=0.1, multiplier=2.0, jitter=0.0)
    assert mode.max_attempts == 5
    delays = [mode.delay_for_attempt(k) for k in range(4)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert all(type(d) is float for d in delays)
    assert mode.delay_for_attempt(4) is None


def test_exponential_is_capped_at_max_delay() -> None:
    mode = cano.RetryMode.exponential(6, base_delay=0.1, multiplier=3.0, max_delay=0.5, jitter=0.0)
    delays = [mode.delay_for_attempt(k) for k in range(6)]
    assert delays == pytest.approx([0.1, 0.3, 0.5, 0.5, 0.5, 0.5])


def test_exponential_default_cap_is_30_seconds() -> None:
    mode = cano.RetryMode.exponential(20, jitter=0.0)
    assert mode.delay_for_attempt(0) == pytest.approx(0.1)
    assert mode.delay_for_attempt(15) == pytest.approx(30.0)


def test_exponential_accepts_timedelta_and_int_delays() -> None:
    mode = cano.RetryMode.exponential(
        3, base_delay=timedelta(milliseconds=200), max_delay=1, jitter=0.0
    )
    assert [mode.delay_for_attempt(k) for k in range(3)] == pytest.approx([0.2, 0.4, 0.8])
    capped = cano.RetryMode.exponential(5, base_delay=1, max_delay=timedelta(seconds=3), jitter=0)
    assert capped.delay_for_attempt(4) == pytest.approx(3.0)


def test_exponential_jitter_stays_in_band_and_varies() -> None:
    mode = cano.RetryMode.exponential(3)  # 100 ms, x2, +-10 %
    first = [mode.delay_for_attempt(0) for _ in range(300)]
    third = [mode.delay_for_attempt(2) for _ in range(300)]
    assert all(d is not None and 0.09 - 1e-9 <= d <= 0.11 + 1e-9 for d in first)
    assert all(d is not None and 0.36 - 1e-9 <= d <= 0.44 + 1e-9 for d in third)
    assert len(set(first)) > 1, "jitter is not applied"
    assert mode.delay_for_attempt(3) is None


def test_exponential_jitter_is_applied_after_the_cap() -> None:
    mode = cano.RetryMode.exponential(5, base_delay=1.0, multiplier=2.0, max_delay=2.0, jitter=0.5)
    samples = [mode.delay_for_attempt(4) for _ in range(300)]  # 16 s capped to 2 s, then +-50 %
    assert all(d is not None and 1.0 - 1e-9 <= d <= 3.0 + 1e-9 for d in samples)
    assert any(d is not None and d > 2.0 for d in samples), "jitter was clamped by the cap"


def test_exponential_delays_are_whole_milliseconds() -> None:
    mode = cano.RetryMode.exponential(6, base_delay=0.0123, multiplier=1.7, jitter=0.3)
    for _ in range(200):
        for k in range(6):
            d = mode.delay_for_attempt(k)
            assert d is not None
            assert abs(d * 1000 - round(d * 1000)) < 1e-6, d


def test_exponential_delay_is_floored_at_one_millisecond() -> None:
    # jitter 1.0 scales a 1 ms delay by U[0, 2]: without the floor some delays would be 0.
    mode = cano.RetryMode.exponential(2, base_delay=0.001, jitter=1.0)
    samples = [mode.delay_for_attempt(k) for _ in range(300) for k in range(2)]
    assert all(d is not None and d >= 0.001 - 1e-9 for d in samples)


def test_retry_mode_is_frozen() -> None:
    mode = cano.RetryMode.fixed(2, 0.1)
    with pytest.raises(AttributeError):
        mode.max_attempts = 9  # type: ignore[misc]
    assert mode.max_attempts == 3


@pytest.mark.parametrize("bad", BAD_DURATIONS)
def test_retry_modes_reject_negative_or_nan_delays(bad: Any) -> None:
    with pytest.raises(cano.ConfigurationError):
        cano.RetryMode.fixed(1, bad)
    with pytest.raises(cano.ConfigurationError):
        cano.RetryMode.exponential(1, base_delay=bad)
    with pytest.raises(cano.ConfigurationError):
        cano.RetryMode.exponential(1, max_delay=bad)


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        cano.RetryMode.fixed(1, -1.0)


# --------------------------------------------------------------------------------------------
# TaskConfig


def test_task_config_defaults() -> None:
    cfg = cano.TaskConfig()
    assert cfg.retry_mode.max_attempts == 4
    assert cfg.retry_mode == cano.RetryMode.exponential(3)
    assert cfg.attempt_timeout is None
    assert cfg.circuit_breaker is None
    d0 = cfg.retry_mode.delay_for_attempt(0)
    assert d0 is not None and 0.09 - 1e-9 <= d0 <= 0.11 + 1e-9
    assert cfg.retry_mode.delay_for_attempt(3) is None


def test_minimal_config_has_no_retries() -> None:
    cfg = cano.TaskConfig.minimal()
    assert cfg.retry_mode.max_attempts == 1
    assert cfg.retry_mode == cano.RetryMode.none()
    assert cfg.attempt_timeout is None


def test_builders_return_new_configs_and_leave_the_original_alone() -> None:
    base = cano.TaskConfig()
    fixed = base.with_fixed_retry(1, 0.5)
    timed = base.with_attempt_timeout(1.5)
    none = base.with_retry(cano.RetryMode.none())
    expo = base.with_exponential_retry(5)
    only = base.with_retry_on(ValueError)
    for new in (fixed, timed, none, expo, only):
        assert new is not base
    assert base.retry_mode.max_attempts == 4
    assert base.attempt_timeout is None
    assert fixed.retry_mode == cano.RetryMode.fixed(1, 0.5)
    assert fixed.retry_mode.max_attempts == 2
    assert timed.attempt_timeout == 1.5
    assert none.retry_mode.max_attempts == 1
    assert expo.retry_mode.max_attempts == 6


def test_builders_chain_and_keep_other_fields() -> None:
    cfg = cano.TaskConfig().with_attempt_timeout(2).with_fixed_retry(1, 0.1)
    assert cfg.attempt_timeout == 2.0
    assert cfg.retry_mode.max_attempts == 2
    cfg2 = cfg.with_retry(cano.RetryMode.none())
    assert cfg2.attempt_timeout == 2.0
    assert cfg.retry_mode.max_attempts == 2


def test_task_config_is_frozen() -> None:
    cfg = cano.TaskConfig()
    with pytest.raises(AttributeError):
        cfg.attempt_timeout = 3.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cfg.retry_mode = cano.RetryMode.none()  # type: ignore[misc]
    assert cfg.attempt_timeout is None


@pytest.mark.parametrize(
    ("value", "expected"), [(1.5, 1.5), (2, 2.0), (timedelta(milliseconds=1500), 1.5)]
)
def test_attempt_timeout_accepts_durations_and_returns_float_seconds(
    value: Any, expected: float
) -> None:
    got = cano.TaskConfig().with_attempt_timeout(value).attempt_timeout
    assert type(got) is float
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("bad", BAD_DURATIONS)
def test_config_builders_reject_negative_or_nan_durations(bad: Any) -> None:
    with pytest.raises(cano.ConfigurationError):
        cano.TaskConfig().with_attempt_timeout(bad)
    with pytest.raises(cano.ConfigurationError):
        cano.TaskConfig().with_fixed_retry(1, bad)
    with pytest.raises(cano.ConfigurationError):
        cano.Workflow.bare().with_total_timeout(bad)


def test_total_timeout_accepts_durations() -> None:
    for value in (0.5, 1, timedelta(seconds=2)):
        wf: cano.Workflow[Step] = cano.Workflow.bare()
        assert wf.with_total_timeout(value) is wf


# --------------------------------------------------------------------------------------------
# the retry loop, through runs


async def test_flaky_task_succeeds_on_a_later_attempt() -> None:
    t = Scripted(FAST, [ValueError("1"), ValueError("2")])
    assert await workflow(t).orchestrate(Step.WORK) is Step.DONE
    assert t.attempts == 3


async def test_exhausted_retries_raise_retry_exhausted_with_the_users_cause() -> None:
    errors = [ValueError("first"), ValueError("second"), ValueError("third")]
    t = Scripted(FAST, list(errors), name="flaky")
    with pytest.raises(cano.RetryExhaustedError) as info:
        await workflow(t).orchestrate(Step.WORK)
    err = info.value
    assert isinstance(err, cano.TaskError)
    assert err.attempts == 3
    assert t.attempts == 3
    assert err.__cause__ is errors[-1]
    assert err.state == "WORK"
    assert err.attempt == 3
    assert err.path == ["WORK"]
    assert "WORK" in str(err) and "flaky" in str(err)


@pytest.mark.parametrize(
    "config",
    [cano.TaskConfig.minimal(), cano.TaskConfig().with_fixed_retry(0, 0.001)],
    ids=["minimal", "fixed-0"],
)
async def test_single_attempt_failure_is_a_task_error(config: cano.TaskConfig) -> None:
    boom = RuntimeError("boom")
    t = Scripted(config, [boom])
    with pytest.raises(cano.TaskError) as info:
        await workflow(t).orchestrate(Step.WORK)
    assert not isinstance(info.value, cano.RetryExhaustedError)
    assert info.value.__cause__ is boom
    assert info.value.attempt == 1
    assert t.attempts == 1


async def test_retry_on_retries_listed_types_including_subclasses() -> None:
    cfg = FAST.with_retry_on(ValueError)
    t = Scripted(cfg, [ValueError("v"), UnicodeError("sub")])  # UnicodeError < ValueError
    assert await workflow(t).orchestrate(Step.WORK) is Step.DONE
    assert t.attempts == 3


async def test_retry_on_fails_at_once_for_other_types() -> None:
    key = KeyError("k")
    t = Scripted(FAST.with_retry_on(ValueError), [key])
    with pytest.raises(cano.TaskError) as info:
        await workflow(t).orchestrate(Step.WORK)
    assert not isinstance(info.value, cano.RetryExhaustedError)
    assert info.value.__cause__ is key
    assert t.attempts == 1


async def test_retry_on_stops_at_an_unlisted_type_after_retries() -> None:
    key = KeyError("k")
    obs = Retries()
    t = Scripted(FAST.with_retry_on(ValueError), [ValueError("v"), key], name="t")
    with pytest.raises(cano.TaskError) as info:
        await workflow(t, obs).orchestrate(Step.WORK)
    assert not isinstance(info.value, cano.RetryExhaustedError)
    assert info.value.__cause__ is key
    assert t.attempts == 2
    assert obs.retries == [("t", 1)]


async def test_retry_on_listed_type_exhausts() -> None:
    t = Scripted(FAST.with_retry_on(ValueError, KeyError), [KeyError("a"), ValueError("b")] * 2)
    with pytest.raises(cano.RetryExhaustedError) as info:
        await workflow(t).orchestrate(Step.WORK)
    assert info.value.attempts == 3
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize(
    "config",
    [FAST, FAST.with_retry_on(asyncio.CancelledError), FAST.with_retry_on(BaseException)],
    ids=["default", "listed", "base-exception"],
)
async def test_cancelled_error_from_a_task_is_never_retried_or_wrapped(
    config: cano.TaskConfig,
) -> None:
    obs = Retries()
    t = Scripted(config, [asyncio.CancelledError("user")] * 3)
    with pytest.raises(asyncio.CancelledError) as info:
        await workflow(t, obs).orchestrate(Step.WORK)
    assert info.value is t.raised[0]
    assert t.attempts == 1
    assert obs.retries == []


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_are_never_retried_or_wrapped(
    exc_type: type[BaseException],
) -> None:
    # Run in a private loop: these exceptions escape asyncio's event loop by design.
    exc = exc_type()
    t = Scripted(FAST.with_retry_on(BaseException), [exc] * 3)
    with pytest.raises(exc_type) as info:
        asyncio.run(workflow(t).orchestrate(Step.WORK))  # type: ignore[arg-type]
    assert info.value is exc
    assert t.attempts == 1


async def test_attempt_timeout_raises_task_timeout_error() -> None:
    t = Scripted(cano.TaskConfig.minimal().with_attempt_timeout(0.01), ["hang"])
    with pytest.raises(cano.TaskTimeoutError) as info:
        await workflow(t).orchestrate(Step.WORK)
    err = info.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, cano.TaskError)
    assert not isinstance(err, cano.RetryExhaustedError)
    assert err.state == "WORK"
    assert t.attempts == 1
    # the attempt saw the cancellation and its (awaiting) finally block completed
    assert t.log == ["start1", "cancelled1", "end1"]


async def test_attempt_timeout_is_retried_then_exhausted() -> None:
    obs = Retries()
    t = Scripted(FAST.with_attempt_timeout(0.01), ["hang"] * 3, name="slow")
    with pytest.raises(cano.RetryExhaustedError) as info:
        await workflow(t, obs).orchestrate(Step.WORK)
    assert info.value.attempts == 3
    assert isinstance(info.value.__cause__, cano.TaskTimeoutError)
    assert t.attempts == 3
    assert obs.retries == [("slow", 1), ("slow", 2)]
    # every attempt's cleanup finished before the next attempt started
    assert t.log == [f"{step}{n}" for n in (1, 2, 3) for step in ("start", "cancelled", "end")]


async def test_attempt_timeout_then_success() -> None:
    t = Scripted(FAST.with_attempt_timeout(0.01), ["hang"])
    assert await workflow(t).orchestrate(Step.WORK) is Step.DONE
    assert t.attempts == 2
    assert t.log == ["start1", "cancelled1", "end1", "start2", "end2"]
    # the engine's own timeout left no pending cancellation on the caller's task
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.02)  # would raise CancelledError if a stray timeout fired


async def test_each_attempt_gets_a_fresh_timeout() -> None:
    # Four attempts of 0.1 s each under a 0.3 s attempt timeout: only a shared budget fails.
    calls = 0

    async def slow_then_fail() -> Step:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        if calls < 4:
            raise ValueError(f"attempt {calls}")
        return Step.DONE

    cfg = cano.TaskConfig().with_fixed_retry(3, 0.001).with_attempt_timeout(0.3)
    assert await workflow(cano.task(slow_then_fail, config=cfg)).orchestrate(Step.WORK) is Step.DONE
    assert calls == 4


async def test_retry_delay_is_waited_between_attempts() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def flaky() -> Step:
        starts.append(loop.time())
        if len(starts) < 2:
            raise ValueError("again")
        return Step.DONE

    wf = workflow(cano.task(flaky, config=cano.TaskConfig().with_fixed_retry(1, 0.05)))
    assert await wf.orchestrate(Step.WORK) is Step.DONE
    assert starts[1] - starts[0] >= 0.04


async def test_on_retry_reports_one_based_attempts_and_not_after_the_last() -> None:
    obs = Retries()
    t = Scripted(cano.TaskConfig().with_fixed_retry(3, 0.001), [ValueError()] * 3, name="job")
    assert await workflow(t, obs).orchestrate(Step.WORK) is Step.DONE
    assert obs.retries == [("job", 1), ("job", 2), ("job", 3)]

    obs2 = Retries()
    t2 = Scripted(FAST, [ValueError()] * 3, name="job")
    with pytest.raises(cano.RetryExhaustedError):
        await workflow(t2, obs2).orchestrate(Step.WORK)
    assert obs2.retries == [("job", 1), ("job", 2)]


async def test_function_task_name_is_used_for_retries() -> None:
    obs = Retries()
    calls = 0

    async def flaky_fn() -> Step:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("once")
        return Step.DONE

    wf = workflow(cano.task(flaky_fn, config=FAST), obs)
    assert await wf.orchestrate(Step.WORK) is Step.DONE
    assert obs.retries == [(flaky_fn.__qualname__, 1)]
