"""Circuit breakers and rate limiters inside the retry loop (TaskConfig.with_*)."""

from __future__ import annotations

import asyncio
import enum

import cano
import pytest
from cano.testing import RecordingObserver


class Step(enum.Enum):
    CALL = enum.auto()
    DONE = enum.auto()


def flow(task: cano.Task[Step], observer: object | None = None) -> cano.Workflow[Step]:
    wf = cano.Workflow[Step].bare().register(Step.CALL, task).add_exit_state(Step.DONE)
    return wf if observer is None else wf.with_observer(observer)


class Flaky(cano.Task[Step]):
    def __init__(self, config: cano.TaskConfig, failures: int) -> None:
        self._config = config
        self.failures = failures
        self.calls = 0

    def config(self) -> cano.TaskConfig:
        return self._config

    async def run(self, res: cano.Resources) -> Step:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"down (call {self.calls})")
        return Step.DONE


async def test_a_breaker_that_opens_mid_loop_ends_the_retries_at_once() -> None:
    breaker = cano.CircuitBreaker(cano.CircuitPolicy(failure_threshold=2, reset_timeout=60))
    task = Flaky(cano.TaskConfig().with_fixed_retry(5, 0).with_circuit_breaker(breaker), 10)
    rec = RecordingObserver()
    with pytest.raises(cano.CircuitOpenError) as caught:
        await flow(task, rec).orchestrate(Step.CALL)
    assert task.calls == 2  # the third attempt was refused, no retry consumed
    assert breaker.state is cano.CircuitState.OPEN
    assert caught.value.state == "CALL" and caught.value.attempt == 0
    assert ("on_circuit_open", ("Flaky",)) in rec.events
    failures = [args for name, args in rec.events if name == "on_task_failure"]
    assert len(failures) == 1 and isinstance(failures[0][1], cano.CircuitOpenError)


async def test_an_open_breaker_refuses_before_the_task_runs() -> None:
    breaker = cano.CircuitBreaker(cano.CircuitPolicy(failure_threshold=1, reset_timeout=60))
    permit = breaker.try_acquire()
    breaker.record_failure(permit)
    task = Flaky(cano.TaskConfig().with_circuit_breaker(breaker), 0)
    with pytest.raises(cano.CircuitOpenError):
        await flow(task).orchestrate(Step.CALL)
    assert task.calls == 0


async def test_successful_attempts_keep_the_breaker_closed() -> None:
    breaker = cano.CircuitBreaker(cano.CircuitPolicy(failure_threshold=2, reset_timeout=60))
    task = Flaky(cano.TaskConfig().with_fixed_retry(3, 0).with_circuit_breaker(breaker), 1)
    assert await flow(task).orchestrate(Step.CALL) is Step.DONE
    assert task.calls == 2
    assert breaker.state is cano.CircuitState.CLOSED  # the success reset the failure count


async def test_a_breaker_shared_by_two_workflows() -> None:
    breaker = cano.CircuitBreaker(cano.CircuitPolicy(failure_threshold=1, reset_timeout=60))
    first = Flaky(cano.TaskConfig.minimal().with_circuit_breaker(breaker), 1)
    second = Flaky(cano.TaskConfig.minimal().with_circuit_breaker(breaker), 0)
    with pytest.raises(cano.TaskError):
        await flow(first).orchestrate(Step.CALL)
    with pytest.raises(cano.CircuitOpenError):
        await flow(second).orchestrate(Step.CALL)
    assert second.calls == 0


async def test_the_rate_limiter_is_acquired_before_every_attempt() -> None:
    limiter = cano.RateLimiter(2, 60.0)  # 2 tokens, refilling slowly: the 3rd call waits
    task = Flaky(cano.TaskConfig().with_fixed_retry(3, 0).with_rate_limiter(limiter), 1)
    assert await flow(task).orchestrate(Step.CALL) is Step.DONE
    assert task.calls == 2
    assert limiter.try_acquire() is False  # both tokens went to the two attempts


async def test_an_attempt_waits_for_the_limiter() -> None:
    limiter = cano.RateLimiter(1, 0.05)
    assert limiter.try_acquire()
    task = Flaky(cano.TaskConfig.minimal().with_rate_limiter(limiter), 0)
    run = asyncio.create_task(flow(task).orchestrate(Step.CALL))
    for _ in range(5):  # several loop turns: the run is parked on the limiter, not failing
        await asyncio.sleep(0)
    assert not run.done() and task.calls == 0
    assert await run is Step.DONE  # it ran once the bucket refilled
    assert task.calls == 1


async def test_cancelling_while_throttled() -> None:
    limiter = cano.RateLimiter(1, 3600.0)
    assert limiter.try_acquire()
    task = Flaky(cano.TaskConfig.minimal().with_rate_limiter(limiter), 0)
    token, handle = cano.CancellationToken.new()
    asyncio.get_running_loop().call_later(0.02, handle.cancel)
    with pytest.raises(cano.WorkflowCancelledError):
        await flow(task).orchestrate(Step.CALL, cancel=token)
    assert task.calls == 0


def test_a_cost_the_limiter_can_never_grant_is_refused_at_configuration() -> None:
    with pytest.raises(cano.ConfigurationError, match="capacity"):
        cano.TaskConfig().with_rate_limiter(cano.RateLimiter(2, 1.0), 3)
    with pytest.raises(cano.ConfigurationError):
        cano.TaskConfig().with_rate_limiter(object())  # type: ignore[arg-type]


def test_configs_expose_what_guards_them() -> None:
    breaker = cano.CircuitBreaker()
    limiter = cano.WindowedRateLimiter(10, 1.0)
    config = cano.TaskConfig().with_circuit_breaker(breaker).with_rate_limiter(limiter)
    assert config.circuit_breaker is breaker
    assert config.rate_limiter is limiter
    assert cano.TaskConfig().circuit_breaker is None
