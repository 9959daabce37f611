"""cano.contrib.prometheus against the real prometheus_client (a fresh CollectorRegistry)."""

from __future__ import annotations

import asyncio
import enum

import cano
import pytest
from cano.testing import InMemoryCheckpointStore, panic_on_attempt

pytest.importorskip("prometheus_client")

from cano.contrib.prometheus import PrometheusObserver
from prometheus_client import CollectorRegistry, generate_latest

FAST = cano.TaskConfig().with_fixed_retry(3, 0)
MINIMAL = cano.TaskConfig.minimal()


class Step(enum.Enum):
    FETCH = enum.auto()
    FAN = enum.auto()
    PARSE = enum.auto()
    DONE = enum.auto()


async def fetch() -> Step:
    return Step.PARSE


async def parse() -> Step:
    await asyncio.sleep(0.01)
    return Step.DONE


def pipeline(first: cano.Task[Step], obs: PrometheusObserver) -> cano.Workflow[Step]:
    return (
        cano.Workflow.bare()
        .register(Step.FETCH, first)
        .register(Step.PARSE, cano.task(name="parse", config=MINIMAL)(parse))
        .add_exit_state(Step.DONE)
        .with_observer(obs)
    )


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_counts_states_tasks_and_retries(registry: CollectorRegistry) -> None:
    obs = PrometheusObserver(registry)
    flaky = panic_on_attempt(2, Step.PARSE).with_config(FAST)
    wf = pipeline(flaky, obs)
    assert await wf.orchestrate(Step.FETCH) is Step.DONE

    for state in ("FETCH", "PARSE", "DONE"):
        assert sample(registry, "cano_state_enters_total", state=state) == 1
    assert sample(registry, "cano_task_retries_total", task="PanicOnAttempt") == 2
    assert (
        sample(
            registry, "cano_observed_task_runs_total", task="PanicOnAttempt", outcome="completed"
        )
        == 1
    )
    assert sample(registry, "cano_observed_task_runs_total", task="parse", outcome="completed") == 1
    # Task duration: one observation, about the 10 ms parse sleeps.
    labels = {"task": "parse", "outcome": "completed"}
    assert sample(registry, "cano_observed_task_duration_seconds_count", **labels) == 1
    total = sample(registry, "cano_observed_task_duration_seconds_sum", **labels)
    assert total is not None and 0.009 <= total < 1.0
    assert sample(registry, "cano_observed_task_duration_seconds_bucket", le="0.005", **labels) == 0
    assert sample(registry, "cano_observed_task_duration_seconds_bucket", le="1.0", **labels) == 1


async def test_failures_and_cancelled_branches(registry: CollectorRegistry) -> None:
    async def boom() -> Step:
        raise ValueError("no")

    async def quick() -> Step:
        return Step.PARSE

    async def slow() -> Step:
        await asyncio.sleep(5)
        return Step.PARSE

    wf = (
        cano.Workflow.bare()
        .register_split(
            Step.FAN,
            [
                cano.task(name="boom", config=MINIMAL)(boom),
                cano.task(name="quick", config=MINIMAL)(quick),
                cano.task(name="slow", config=MINIMAL)(slow),
                cano.task(name="slow", config=MINIMAL)(slow),
            ],
            cano.JoinConfig(cano.JoinStrategy.ANY, Step.PARSE),
        )
        .register(Step.PARSE, panic_on_attempt(9, Step.DONE).with_config(FAST))
        .add_exit_state(Step.DONE)
        .with_observer(PrometheusObserver(registry))
    )
    with pytest.raises(cano.RetryExhaustedError):
        await wf.orchestrate(Step.FAN)

    runs = "cano_observed_task_runs_total"
    assert sample(registry, runs, task="boom", outcome="failed") == 1
    assert sample(registry, runs, task="quick", outcome="completed") == 1
    # Branch ids are "slow[2]" and "slow[3]": one series, outcome "cancelled".
    assert sample(registry, runs, task="slow", outcome="cancelled") == 2
    assert sample(registry, runs, task="PanicOnAttempt", outcome="failed") == 1
    assert sample(registry, "cano_task_retries_total", task="PanicOnAttempt") == 3
    text = generate_latest(registry).decode()
    assert "slow[" not in text
    assert 'task="slow"' in text


async def test_checkpoints_resumes_timeouts_and_cancellations(registry: CollectorRegistry) -> None:
    obs = PrometheusObserver(registry)
    store = InMemoryCheckpointStore()
    crash = panic_on_attempt(1, Step.DONE).with_config(MINIMAL)
    wf = (
        cano.Workflow.bare()
        .register(Step.FETCH, cano.task(name="fetch", config=MINIMAL)(fetch))
        .register(Step.PARSE, crash)
        .add_exit_state(Step.DONE)
        .with_checkpoint_store(store)
        .with_observer(obs)
    )
    with pytest.raises(cano.TaskError):
        await wf.orchestrate(Step.FETCH, workflow_id="w")
    assert await wf.resume_from("w") is Step.DONE
    assert sample(registry, "cano_checkpoints_observed_total") == 3  # 0, 1, then the exit's 2
    assert sample(registry, "cano_resumes_total") == 1

    async def hang() -> Step:
        await asyncio.Event().wait()
        return Step.PARSE

    slow = pipeline(cano.task(name="hang", config=MINIMAL)(hang), obs).with_total_timeout(0.02)
    with pytest.raises(cano.WorkflowTimeoutError):
        await slow.orchestrate(Step.FETCH)
    assert sample(registry, "cano_observed_workflow_timeouts_total") == 1
    assert sample(registry, "cano_observed_workflow_timeout_limit_seconds_count") == 1
    limit_sum = sample(registry, "cano_observed_workflow_timeout_limit_seconds_sum")
    assert limit_sum == pytest.approx(0.02)
    elapsed = sample(registry, "cano_observed_workflow_timeout_elapsed_seconds_sum")
    assert elapsed is not None and elapsed >= 0.02

    token, handle = cano.CancellationToken.new()
    asyncio.get_running_loop().call_later(0.02, handle.cancel)
    cancellable = pipeline(cano.task(name="hang", config=MINIMAL)(hang), obs)
    with pytest.raises(cano.WorkflowCancelledError):
        await cancellable.orchestrate(Step.FETCH, cancel=token)
    assert sample(registry, "cano_observed_cancellations_total") == 1
    assert sample(registry, "cano_observed_task_runs_total", task="hang", outcome="failed") == 2

    # The runs: a failure, its resume, a timeout (counted as failed) and a cancellation.
    runs = "cano_workflow_runs_total"
    assert sample(registry, runs, outcome="completed") == 1
    assert sample(registry, runs, outcome="failed") == 2
    assert sample(registry, runs, outcome="cancelled") == 1
    durations = "cano_workflow_duration_seconds_count"
    assert sample(registry, durations, outcome="failed") == 2
    assert sample(registry, durations, outcome="cancelled") == 1


def test_hooks_the_engine_rarely_fires(registry: CollectorRegistry) -> None:
    obs = PrometheusObserver(registry)
    obs.on_circuit_open("charge[0]")
    obs.on_checkpoint_clear_failed("w", cano.CheckpointError("disk full"))
    obs.on_unknown_resume_state("w", 2, "REMOVED")
    obs.on_task_failure("never-started", RuntimeError("x"))  # no start: counted, not timed
    obs.on_run_finish(None, RuntimeError("x"))  # likewise
    assert sample(registry, "cano_circuit_open_events_total", task="charge") == 1
    assert sample(registry, "cano_checkpoint_clears_total", result="err") == 1
    assert sample(registry, "cano_observed_unknown_resume_states_total") == 1
    assert (
        sample(registry, "cano_observed_task_runs_total", task="never-started", outcome="failed")
        == 1
    )
    assert (
        sample(
            registry,
            "cano_observed_task_duration_seconds_count",
            task="never-started",
            outcome="failed",
        )
        is None
    )
    assert sample(registry, "cano_workflow_runs_total", outcome="failed") == 1
    assert sample(registry, "cano_workflow_duration_seconds_count", outcome="failed") is None


async def test_concurrent_runs_are_timed_separately(registry: CollectorRegistry) -> None:
    async def sleepy() -> Step:
        await asyncio.sleep(0.02)
        return Step.PARSE

    wf = pipeline(cano.task(name="sleepy", config=MINIMAL)(sleepy), PrometheusObserver(registry))
    await asyncio.gather(*(wf.orchestrate(Step.FETCH) for _ in range(5)))
    labels = {"task": "sleepy", "outcome": "completed"}
    assert sample(registry, "cano_observed_task_duration_seconds_count", **labels) == 5
    total = sample(registry, "cano_observed_task_duration_seconds_sum", **labels)
    # Five overlapping 20 ms sleeps: each timed on its own (not 5 x the wall time).
    assert total is not None and 0.09 <= total < 0.5


async def test_run_counts_and_durations(registry: CollectorRegistry) -> None:
    obs = PrometheusObserver(registry)
    wf = pipeline(cano.task(name="fetch", config=MINIMAL)(fetch), obs)
    await asyncio.gather(*(wf.orchestrate(Step.FETCH) for _ in range(3)))
    failing = pipeline(panic_on_attempt(9, Step.PARSE).with_config(MINIMAL), obs)
    with pytest.raises(cano.TaskError):
        await failing.orchestrate(Step.FETCH)

    runs, count = "cano_workflow_runs_total", "cano_workflow_duration_seconds_count"
    assert sample(registry, runs, outcome="completed") == 3
    assert sample(registry, runs, outcome="failed") == 1
    assert sample(registry, count, outcome="completed") == 3
    assert sample(registry, count, outcome="failed") == 1
    # Three concurrent runs, each about 10 ms (the parse sleep): timed separately.
    total = sample(registry, "cano_workflow_duration_seconds_sum", outcome="completed")
    assert total is not None and 0.027 <= total < 0.5
    assert (
        sample(registry, "cano_workflow_duration_seconds_bucket", le="0.005", outcome="completed")
        == 0
    )


async def test_nested_runs_are_timed_separately(registry: CollectorRegistry) -> None:
    obs = PrometheusObserver(registry)
    inner = pipeline(cano.task(name="fetch", config=MINIMAL)(fetch), obs)

    async def call_inner() -> Step:
        await inner.orchestrate(Step.FETCH)
        await asyncio.sleep(0.05)
        return Step.PARSE

    outer = pipeline(cano.task(name="call_inner", config=MINIMAL)(call_inner), obs)
    await outer.orchestrate(Step.FETCH)
    count = "cano_workflow_duration_seconds_count"
    assert sample(registry, count, outcome="completed") == 2
    # inner: ~10 ms (< 50 ms); outer: inner + 50 ms + its own parse (>= 70 ms).
    assert (
        sample(registry, "cano_workflow_duration_seconds_bucket", le="0.05", outcome="completed")
        == 1
    )
    total = sample(registry, "cano_workflow_duration_seconds_sum", outcome="completed")
    assert total is not None and total >= 0.08


def test_observers_share_metrics_and_namespace(registry: CollectorRegistry) -> None:
    a = PrometheusObserver(registry)
    b = PrometheusObserver(registry)  # no "Duplicated timeseries" error
    a.on_state_enter("X")
    b.on_state_enter("X")
    assert sample(registry, "cano_state_enters_total", state="X") == 2

    PrometheusObserver(registry, namespace="shop").on_resume("w", 1)
    assert sample(registry, "shop_resumes_total") == 1
    PrometheusObserver(registry, namespace="").on_resume("w", 1)
    assert sample(registry, "resumes_total") == 1
    with pytest.raises(cano.ConfigurationError, match="namespace '9x'"):
        PrometheusObserver(registry, namespace="9x")


def test_metric_families(registry: CollectorRegistry) -> None:
    # Counter families are named without "_total"; their samples carry it.
    PrometheusObserver(registry)
    families = {f.name: f.type for f in registry.collect()}
    assert families == {
        "cano_state_enters": "counter",
        "cano_observed_task_runs": "counter",
        "cano_task_retries": "counter",
        "cano_circuit_open_events": "counter",
        "cano_checkpoints_observed": "counter",
        "cano_resumes": "counter",
        "cano_observed_workflow_timeouts": "counter",
        "cano_observed_cancellations": "counter",
        "cano_observed_unknown_resume_states": "counter",
        "cano_checkpoint_clears": "counter",
        "cano_workflow_runs": "counter",
        "cano_workflow_duration_seconds": "histogram",
        "cano_observed_task_duration_seconds": "histogram",
        "cano_observed_workflow_timeout_limit_seconds": "histogram",
        "cano_observed_workflow_timeout_elapsed_seconds": "histogram",
        "cano_scheduler_flow_runs": "counter",
        "cano_scheduler_flow_duration_seconds": "histogram",
        "cano_scheduler_flow_backoff": "counter",
        "cano_scheduler_flow_tripped": "counter",
        "cano_scheduler_active_flows": "gauge",
    }


def test_default_registry() -> None:
    from prometheus_client import REGISTRY

    obs = PrometheusObserver()
    assert obs.registry is REGISTRY
    PrometheusObserver()  # a second observer on the global registry shares the metrics


async def test_circuit_breaker_rejection(registry: CollectorRegistry) -> None:
    breaker = cano.CircuitBreaker(cano.CircuitPolicy(failure_threshold=1, reset_timeout=60))
    guarded = panic_on_attempt(5, Step.PARSE).with_config(MINIMAL.with_circuit_breaker(breaker))
    wf = pipeline(guarded, PrometheusObserver(registry))
    with pytest.raises(cano.TaskError):
        await wf.orchestrate(Step.FETCH)
    with pytest.raises(cano.CircuitOpenError):
        await wf.orchestrate(Step.FETCH)
    assert sample(registry, "cano_circuit_open_events_total", task="PanicOnAttempt") == 1
    runs = "cano_observed_task_runs_total"
    assert sample(registry, runs, task="PanicOnAttempt", outcome="failed") == 2


async def test_scheduler_flow_metrics(registry: CollectorRegistry) -> None:
    async def work() -> Step:
        raise RuntimeError("always fails")

    wf = pipeline(cano.task(name="work", config=MINIMAL)(work), PrometheusObserver(registry))
    scheduler = (
        cano.Scheduler()
        .manual("nightly", wf, Step.FETCH)
        .set_backoff("nightly", cano.BackoffPolicy(initial=0.001, streak_limit=2))
    )
    async with scheduler.running() as running:
        for _ in range(2):
            await running.trigger("nightly")
            while running.has_running_flows():
                await asyncio.sleep(0.001)
            assert sample(registry, "cano_scheduler_active_flows") == 0
            await asyncio.sleep(0.005)  # past the back-off
    flow = {"flow": "nightly"}
    assert sample(registry, "cano_scheduler_flow_runs_total", outcome="failed", **flow) == 2
    assert sample(registry, "cano_scheduler_flow_backoff_total", **flow) == 1
    assert sample(registry, "cano_scheduler_flow_tripped_total", **flow) == 1
    assert sample(registry, "cano_scheduler_flow_duration_seconds_count", **flow) == 2
