"""cano.contrib.opentelemetry against the real OpenTelemetry SDK (in-memory exporters)."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cano
import pytest
from cano.testing import InMemoryCheckpointStore, panic_on_attempt

pytest.importorskip("opentelemetry.sdk")

from cano.contrib.opentelemetry import OpenTelemetryObserver
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

FAST = cano.TaskConfig().with_fixed_retry(3, 0)
MINIMAL = cano.TaskConfig.minimal()


class Step(enum.Enum):
    FETCH = enum.auto()
    FAN = enum.auto()
    PARSE = enum.auto()
    DONE = enum.auto()


@dataclass
class Otel:
    exporter: InMemorySpanExporter
    tracer_provider: TracerProvider
    reader: InMemoryMetricReader
    meter_provider: MeterProvider

    def observer(self, name: str = "orders") -> OpenTelemetryObserver:
        return OpenTelemetryObserver(self.tracer_provider, self.meter_provider, workflow_name=name)

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        spans = list(self.exporter.get_finished_spans())
        return [s for s in spans if name is None or s.name == name]

    def runs(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name.startswith("invoke_workflow")]

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """metric name -> [(attributes, value or histogram count)]"""
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                assert sm.scope.name == "cano"
                for metric in sm.metrics:
                    points = out.setdefault(metric.name, [])
                    for p in metric.data.data_points:
                        value = p.value if hasattr(p, "value") else p.count
                        points.append((dict(p.attributes or {}), value))
        return out

    def value(self, name: str, **attrs: Any) -> Any:
        for a, v in self.metrics().get(name, []):
            if a == attrs:
                return v
        return None


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    yield Otel(exporter, tp, reader, mp)
    tp.shutdown()
    mp.shutdown()


async def fetch() -> Step:
    return Step.PARSE


async def parse() -> Step:
    return Step.DONE


def pipeline(first: cano.Task[Step], obs: OpenTelemetryObserver) -> cano.Workflow[Step]:
    return (
        cano.Workflow.bare()
        .register(Step.FETCH, first)
        .register(Step.PARSE, cano.task(config=MINIMAL)(parse))
        .add_exit_state(Step.DONE)
        .with_observer(obs)
    )


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


# --------------------------------------------------------------------------------------------
# spans


async def test_run_and_task_spans_with_retries_as_events(otel: Otel) -> None:
    flaky = panic_on_attempt(2, Step.PARSE).with_config(FAST)
    assert await pipeline(flaky, otel.observer()).orchestrate(Step.FETCH) is Step.DONE

    (run,) = otel.runs()
    assert run.name == "invoke_workflow orders"
    assert run.parent is None
    assert run.status.status_code is StatusCode.OK
    assert run.attributes is not None
    assert run.attributes["cano.workflow.name"] == "orders"
    assert run.attributes["cano.run.outcome"] == "completed"
    assert run.attributes["cano.state"] == "DONE"
    assert [e.attributes["cano.state"] for e in run.events if e.attributes] == [
        "FETCH",
        "PARSE",
        "DONE",
    ]

    (task,) = otel.spans("execute_task PanicOnAttempt")
    assert parent_id(task) == span_id(run)
    assert task.context is not None and run.context is not None
    assert task.context.trace_id == run.context.trace_id
    assert dict(task.attributes or {}) == {
        "cano.task": "PanicOnAttempt",
        "cano.workflow.name": "orders",
        "cano.state": "FETCH",
        "cano.task.attempts": 3,
        "cano.task.outcome": "completed",
    }
    assert [(e.name, dict(e.attributes or {})) for e in task.events] == [
        ("cano.task.retry", {"cano.task.attempt": 1}),
        ("cano.task.retry", {"cano.task.attempt": 2}),
    ]
    assert task.status.status_code is StatusCode.UNSET
    (parse_span,) = otel.spans("execute_task parse")
    assert dict(parse_span.attributes or {})["cano.state"] == "PARSE"
    # The run span encloses its tasks.
    assert run.start_time is not None and run.end_time is not None
    assert task.start_time is not None and parse_span.end_time is not None
    assert run.start_time <= task.start_time
    assert parse_span.end_time <= run.end_time


async def test_failure_sets_error_status_and_error_type(otel: Otel) -> None:
    flaky = panic_on_attempt(9, Step.PARSE).with_config(FAST)
    with pytest.raises(cano.RetryExhaustedError):
        await pipeline(flaky, otel.observer()).orchestrate(Step.FETCH)

    (task,) = otel.spans("execute_task PanicOnAttempt")
    assert task.status.status_code is StatusCode.ERROR
    assert task.status.description is not None
    assert task.status.description.startswith("RetryExhaustedError: ")
    attrs = dict(task.attributes or {})
    assert attrs["error.type"] == "RetryExhaustedError"
    assert attrs["cano.task.outcome"] == "failed"
    assert attrs["cano.task.attempts"] == 4
    names = [e.name for e in task.events]
    assert names == ["cano.task.retry"] * 3 + ["exception"]

    (run,) = otel.runs()
    assert run.status.status_code is StatusCode.ERROR
    run_attrs = dict(run.attributes or {})
    assert run_attrs["error.type"] == "RetryExhaustedError"
    assert run_attrs["cano.run.outcome"] == "failed"
    assert run_attrs["cano.state"] == "FETCH"
    # The run failed with its task's error: the exception is recorded on the task only.
    assert [e.name for e in run.events if e.name == "exception"] == []

    assert otel.value("cano_observed_task_runs_total", task="PanicOnAttempt", outcome="failed") == 1
    assert otel.value("cano_workflow_runs_total", outcome="failed") == 1
    assert otel.value("cano_task_retries_total", task="PanicOnAttempt") == 3


async def test_user_spans_nest_under_the_task_and_the_run_under_the_caller(otel: Otel) -> None:
    user_tracer = otel.tracer_provider.get_tracer("app")

    async def call_api() -> Step:
        with user_tracer.start_as_current_span("GET /orders"):
            await asyncio.sleep(0)
        return Step.PARSE

    wf = pipeline(cano.task(name="call_api", config=MINIMAL)(call_api), otel.observer())
    with user_tracer.start_as_current_span("handle request"):
        await wf.orchestrate(Step.FETCH)

    (request,) = otel.spans("handle request")
    (run,) = otel.runs()
    (task,) = otel.spans("execute_task call_api")
    (api,) = otel.spans("GET /orders")
    assert parent_id(run) == span_id(request)
    assert parent_id(task) == span_id(run)
    assert parent_id(api) == span_id(task)


async def test_split_branches_are_children_of_the_run(otel: Otel) -> None:
    async def slow() -> Step:
        await asyncio.sleep(5)
        return Step.PARSE

    async def boom() -> Step:
        raise ValueError("branch failed")

    async def quick() -> Step:
        return Step.PARSE

    M = MINIMAL
    wf = (
        cano.Workflow.bare()
        .register_split(
            Step.FAN,
            [
                cano.task(name="boom", config=M)(boom),
                cano.task(name="quick", config=M)(quick),
                cano.task(name="slow", config=M)(slow),
            ],
            cano.JoinConfig(cano.JoinStrategy.ANY, Step.PARSE),
        )
        .register(Step.PARSE, cano.task(config=M)(parse))
        .add_exit_state(Step.DONE)
        .with_observer(otel.observer())
    )
    assert await wf.orchestrate(Step.FAN) is Step.DONE

    (run,) = otel.runs()
    assert dict(run.attributes or {})["cano.run.outcome"] == "completed"
    branches = {
        dict(s.attributes or {})["cano.task"]: s for s in otel.spans() if "[" in str(s.attributes)
    }
    assert set(branches) == {"boom[0]", "quick[1]", "slow[2]"}
    for s in branches.values():
        assert parent_id(s) == span_id(run)
        assert dict(s.attributes or {})["cano.state"] == "FAN"
    assert branches["quick[1]"].name == "execute_task quick"  # low-cardinality name
    assert branches["boom[0]"].status.status_code is StatusCode.ERROR
    assert dict(branches["boom[0]"].attributes or {})["error.type"] == "TaskError"
    # A branch cancelled because the join was decided is not an error.
    slow_span = branches["slow[2]"]
    assert slow_span.status.status_code is StatusCode.UNSET
    assert dict(slow_span.attributes or {})["cano.task.outcome"] == "cancelled"

    assert otel.value("cano_observed_task_runs_total", task="slow", outcome="cancelled") == 1
    assert otel.value("cano_observed_task_runs_total", task="boom", outcome="failed") == 1
    assert otel.value("cano_observed_task_runs_total", task="quick", outcome="completed") == 1


async def test_concurrent_runs_get_separate_spans(otel: Otel) -> None:
    async def fetch_slowly() -> Step:
        await asyncio.sleep(0.01)
        return Step.PARSE

    wf = pipeline(cano.task(name="fetch_slowly", config=MINIMAL)(fetch_slowly), otel.observer())
    results = await asyncio.gather(*(wf.orchestrate(Step.FETCH) for _ in range(3)))
    assert results == [Step.DONE] * 3

    runs = otel.runs()
    assert len(runs) == 3
    run_ids = {span_id(r) for r in runs}
    tasks = [s for s in otel.spans() if s.name.startswith("execute_task")]
    assert len(tasks) == 6
    for r in runs:
        children = [t for t in tasks if parent_id(t) == span_id(r)]
        assert sorted(t.name for t in children) == [
            "execute_task fetch_slowly",
            "execute_task parse",
        ]
    assert {parent_id(t) for t in tasks} == run_ids


async def test_runs_awaited_one_after_another_in_one_task(otel: Otel) -> None:
    wf = pipeline(cano.task(config=MINIMAL)(fetch), otel.observer())
    await wf.orchestrate(Step.FETCH)
    await wf.orchestrate(Step.FETCH)
    first, second = sorted(otel.runs(), key=lambda s: s.start_time or 0)
    assert first.end_time is not None and second.start_time is not None
    assert first.end_time <= second.start_time
    for run in (first, second):
        assert dict(run.attributes or {})["cano.run.outcome"] == "completed"
        children = [s.name for s in otel.spans() if parent_id(s) == span_id(run)]
        assert sorted(children) == ["execute_task fetch", "execute_task parse"]


class Probe(cano.WorkflowObserver):
    """Attached after the observer under test: sees what it did at each run hook."""

    def __init__(self, otel: Otel) -> None:
        self.otel = otel
        self.seen: list[tuple[str, Any]] = []

    def on_run_start(self, workflow_id: str | None) -> None:
        current = trace.get_current_span()
        self.seen.append(("start", getattr(current, "name", None)))

    def on_run_finish(self, state: str | None, error: BaseException | None) -> None:
        self.seen.append(("finish", [s.name for s in self.otel.runs()]))


async def test_run_span_is_current_from_run_start_and_ends_at_run_finish(otel: Otel) -> None:
    probe = Probe(otel)
    wf = pipeline(cano.task(config=MINIMAL)(fetch), otel.observer()).with_observer(probe)
    task = asyncio.create_task(wf.orchestrate(Step.FETCH))
    assert await task is Step.DONE
    assert probe.seen == [
        ("start", "invoke_workflow orders"),  # the current span while the run goes on
        ("finish", ["invoke_workflow orders"]),  # already ended when on_run_finish returns
    ]
    # Once the run returned, the caller's context is back.
    assert not trace.get_current_span().get_span_context().is_valid


async def test_failed_join_ends_the_run_with_error(otel: Otel) -> None:
    async def boom() -> Step:
        raise ValueError("no")

    wf = (
        cano.Workflow.bare()
        .register_split(
            Step.FAN,
            [cano.task(config=MINIMAL)(boom)],
            cano.JoinConfig(cano.JoinStrategy.ALL, Step.DONE),
        )
        .add_exit_state(Step.DONE)
        .with_observer(otel.observer())
    )
    with pytest.raises(cano.WorkflowError) as info:
        await wf.orchestrate(Step.FAN)
    (run,) = otel.runs()
    assert run.status.status_code is StatusCode.ERROR
    attrs = dict(run.attributes or {})
    assert attrs["error.type"] == type(info.value).__qualname__
    assert attrs["cano.run.outcome"] == "failed"
    assert attrs["cano.state"] == "FAN"
    # The join's error is no task's: it is recorded on the run span.
    (event,) = [e for e in run.events if e.name == "exception"]
    assert dict(event.attributes or {})["exception.type"] == "cano.errors.WorkflowError"
    assert otel.value("cano_workflow_runs_total", outcome="failed") == 1
    assert otel.value("cano_workflow_duration_seconds", outcome="failed") == 1


async def test_checkpoints_resume_and_workflow_id(otel: Otel) -> None:
    store = InMemoryCheckpointStore()
    crash = panic_on_attempt(1, Step.DONE).with_config(MINIMAL)

    def build() -> cano.Workflow[Step]:
        return (
            cano.Workflow.bare()
            .register(Step.FETCH, cano.task(config=MINIMAL)(fetch))
            .register(Step.PARSE, crash)
            .add_exit_state(Step.DONE)
            .with_checkpoint_store(store)
            .with_observer(otel.observer())
        )

    with pytest.raises(cano.TaskError):
        await build().orchestrate(Step.FETCH, workflow_id="order-7")
    assert await build().resume_from("order-7") is Step.DONE

    failed, resumed = sorted(otel.runs(), key=lambda s: s.start_time or 0)
    assert dict(failed.attributes or {})["cano.workflow.id"] == "order-7"
    r_attrs = dict(resumed.attributes or {})
    assert r_attrs["cano.workflow.id"] == "order-7"
    assert r_attrs["cano.run.resumed"] is True
    assert r_attrs["cano.resume.sequence"] == 1
    assert r_attrs["cano.run.outcome"] == "completed"
    for t in otel.spans("execute_task PanicOnAttempt"):
        assert dict(t.attributes or {})["cano.workflow.id"] == "order-7"
    checkpoint_events = [e for e in resumed.events if e.name == "cano.checkpoint"]
    # The resumed state's entry row is already in the log: the resumed run writes the exit's.
    assert [
        e.attributes["cano.checkpoint.sequence"] for e in checkpoint_events if e.attributes
    ] == [2]
    assert otel.value("cano_resumes_total") == 1
    assert otel.value("cano_checkpoints_observed_total") == 3  # 0, 1, then the exit's 2


async def test_total_timeout_and_cancellation(otel: Otel) -> None:
    async def hang() -> Step:
        await asyncio.Event().wait()
        return Step.PARSE

    wf = pipeline(cano.task(config=MINIMAL)(hang), otel.observer()).with_total_timeout(0.02)
    with pytest.raises(cano.WorkflowTimeoutError):
        await wf.orchestrate(Step.FETCH)
    (run,) = otel.runs()
    attrs = dict(run.attributes or {})
    assert attrs["cano.run.outcome"] == "timed_out"
    assert attrs["error.type"] == "WorkflowTimeoutError"
    assert [e.name for e in run.events if e.name.startswith("cano.workflow")] == [
        "cano.workflow.timeout"
    ]
    assert otel.value("cano_observed_workflow_timeouts_total") == 1
    assert otel.value("cano_observed_workflow_timeout_limit_seconds") == 1  # histogram count
    assert otel.value("cano_observed_workflow_timeout_elapsed_seconds") == 1
    assert otel.value("cano_workflow_runs_total", outcome="failed") == 1  # a timeout fails

    otel.exporter.clear()
    token, handle = cano.CancellationToken.new()
    asyncio.get_running_loop().call_later(0.02, handle.cancel)
    wf2 = pipeline(cano.task(config=MINIMAL)(hang), otel.observer())
    with pytest.raises(cano.WorkflowCancelledError):
        await wf2.orchestrate(Step.FETCH, cancel=token)
    (run,) = otel.runs()
    assert run.status.status_code is StatusCode.ERROR
    attrs = dict(run.attributes or {})
    assert attrs["cano.run.outcome"] == "cancelled"
    assert attrs["error.type"] == "WorkflowCancelledError"
    assert otel.value("cano_observed_cancellations_total") == 1
    assert otel.value("cano_workflow_runs_total", outcome="cancelled") == 1


# --------------------------------------------------------------------------------------------
# metrics


async def test_metric_names_and_attributes(otel: Otel) -> None:
    flaky = panic_on_attempt(1, Step.PARSE).with_config(FAST)
    await pipeline(flaky, otel.observer()).orchestrate(Step.FETCH)
    metrics = otel.metrics()
    assert sorted(a["state"] for a, _ in metrics["cano_state_enters_total"]) == [
        "DONE",
        "FETCH",
        "PARSE",
    ]
    assert otel.value("cano_task_retries_total", task="PanicOnAttempt") == 1
    assert otel.value("cano_observed_task_runs_total", task="parse", outcome="completed") == 1
    assert otel.value("cano_observed_task_duration_seconds", task="parse", outcome="completed") == 1
    assert metrics["cano_workflow_runs_total"] == [({"outcome": "completed"}, 1)]
    assert metrics["cano_workflow_duration_seconds"] == [({"outcome": "completed"}, 1)]


def test_hooks_without_a_run_and_without_an_event_loop(otel: Otel) -> None:
    obs = otel.observer()
    obs.on_circuit_open("charge")
    obs.on_checkpoint_clear_failed("order-1", cano.CheckpointError("disk full"))
    obs.on_unknown_resume_state("order-1", 3, "REMOVED")
    obs.on_task_success("never-started")
    obs.on_retry("never-started", 1)
    obs.on_run_finish(None, RuntimeError("never started"))  # counted, no span, no duration
    assert otel.value("cano_circuit_open_events_total", task="charge") == 1
    assert otel.value("cano_checkpoint_clears_total", result="err") == 1
    assert otel.value("cano_observed_unknown_resume_states_total") == 1
    assert (
        otel.value("cano_observed_task_runs_total", task="never-started", outcome="completed") == 1
    )
    assert otel.value("cano_workflow_runs_total", outcome="failed") == 1
    assert otel.value("cano_workflow_duration_seconds", outcome="failed") is None
    assert otel.runs() == []

    # Driven by hand, outside an event loop: the hooks alone delimit the run.
    obs.on_run_start("by-hand")
    obs.on_state_enter("DONE")
    obs.on_run_finish("DONE", None)
    (run,) = otel.runs()
    assert dict(run.attributes or {})["cano.workflow.id"] == "by-hand"
    assert dict(run.attributes or {})["cano.state"] == "DONE"
    assert not trace.get_current_span().get_span_context().is_valid


async def test_works_with_the_global_noop_providers() -> None:
    wf = pipeline(cano.task(config=MINIMAL)(fetch), OpenTelemetryObserver())
    assert await wf.orchestrate(Step.FETCH) is Step.DONE
    with pytest.raises(cano.TaskError):
        failing = panic_on_attempt(1, Step.PARSE).with_config(MINIMAL)
        await pipeline(failing, OpenTelemetryObserver()).orchestrate(Step.FETCH)


# --------------------------------------------------------------------------------------------
# run boundaries


class SlowStore(InMemoryCheckpointStore):
    """Appends and clears that take a few event-loop iterations, like a real database."""

    async def append(self, row: cano.CheckpointRow) -> None:
        await asyncio.sleep(0.003)
        await super().append(row)

    async def clear(self, workflow_id: str) -> None:
        await asyncio.sleep(0.003)
        await super().clear(workflow_id)


async def fan_entry() -> Step:
    return Step.FAN


async def test_checkpointed_split_run_with_a_slow_store(otel: Otel) -> None:
    async def fan_branch() -> Step:
        await asyncio.sleep(0.005)
        return Step.PARSE

    wf = (
        cano.Workflow.bare()
        .register(Step.FETCH, cano.task(name="fetch", config=MINIMAL)(fan_entry))
        .register_split(
            Step.FAN,
            [cano.task(name="branch", config=MINIMAL)(fan_branch)] * 2,
            cano.JoinConfig(cano.JoinStrategy.ALL, Step.PARSE),
        )
        .register(Step.PARSE, cano.task(name="parse", config=MINIMAL)(parse))
        .add_exit_state(Step.DONE)
        .with_checkpoint_store(SlowStore())
        .with_observer(otel.observer())
    )
    assert await wf.orchestrate(Step.FETCH, workflow_id="slow-1") is Step.DONE
    (run,) = otel.runs()
    attrs = dict(run.attributes or {})
    assert attrs["cano.run.outcome"] == "completed"
    assert attrs["cano.workflow.id"] == "slow-1"
    states = [
        e.attributes["cano.state"]
        for e in run.events
        if e.name == "cano.state.enter" and e.attributes
    ]
    assert states == ["FETCH", "FAN", "PARSE", "DONE"]
    tasks = [s for s in otel.spans() if s.name.startswith("execute_task")]
    assert len(tasks) == 4
    assert all(parent_id(t) == span_id(run) for t in tasks)
    assert all(dict(t.attributes or {})["cano.workflow.id"] == "slow-1" for t in tasks)


@pytest.mark.parametrize("shared", [False, True], ids=["two observers", "one observer"])
async def test_a_workflow_awaited_inside_another_workflows_task(otel: Otel, shared: bool) -> None:
    outer_obs = otel.observer("outer")
    inner_obs = outer_obs if shared else otel.observer("inner")
    inner = pipeline(cano.task(name="fetch", config=MINIMAL)(fetch), inner_obs)

    async def call_inner() -> Step:
        assert await inner.orchestrate(Step.FETCH) is Step.DONE
        return Step.PARSE

    outer = pipeline(cano.task(name="call_inner", config=MINIMAL)(call_inner), outer_obs)
    assert await outer.orchestrate(Step.FETCH) is Step.DONE

    runs = sorted(otel.runs(), key=lambda s: s.start_time or 0)
    assert len(runs) == 2
    outer_run, inner_run = runs
    assert outer_run.name == "invoke_workflow outer"
    assert inner_run.name == ("invoke_workflow outer" if shared else "invoke_workflow inner")
    (call_span,) = otel.spans("execute_task call_inner")
    (outer_parse,) = [s for s in otel.spans("execute_task parse") if s.parent == outer_run.context]
    (inner_fetch,) = otel.spans("execute_task fetch")
    (inner_parse,) = [s for s in otel.spans("execute_task parse") if s.parent == inner_run.context]
    # outer run > call_inner > inner run > (fetch, parse); then the outer run goes on.
    assert parent_id(outer_run) is None
    assert parent_id(call_span) == span_id(outer_run)
    assert parent_id(inner_run) == span_id(call_span)
    assert parent_id(inner_fetch) == span_id(inner_run)
    assert parent_id(inner_parse) == span_id(inner_run)
    assert parent_id(outer_parse) == span_id(outer_run)
    # Each run span covers its own states, and ends inside its parent.
    for run, states in (
        (outer_run, ["FETCH", "PARSE", "DONE"]),
        (inner_run, ["FETCH", "PARSE", "DONE"]),
    ):
        attrs = dict(run.attributes or {})
        assert attrs["cano.run.outcome"] == "completed"
        assert [
            (e.attributes or {})["cano.state"] for e in run.events if e.name == "cano.state.enter"
        ] == states
    assert call_span.end_time is not None and inner_run.end_time is not None
    assert inner_run.end_time <= call_span.end_time
    assert otel.value("cano_workflow_runs_total", outcome="completed") == 2


async def test_a_failing_nested_workflow_fails_both_runs(otel: Otel) -> None:
    obs = otel.observer()
    inner = pipeline(panic_on_attempt(1, Step.PARSE).with_config(MINIMAL), obs)

    async def call_inner() -> Step:
        await inner.orchestrate(Step.FETCH)
        return Step.PARSE

    outer = pipeline(cano.task(name="call_inner", config=MINIMAL)(call_inner), obs)
    with pytest.raises(cano.TaskError):
        await outer.orchestrate(Step.FETCH)
    outer_run, inner_run = sorted(otel.runs(), key=lambda s: s.start_time or 0)
    assert parent_id(inner_run) == span_id(otel.spans("execute_task call_inner")[0])
    for run in (outer_run, inner_run):
        assert run.status.status_code is StatusCode.ERROR
        assert dict(run.attributes or {})["cano.run.outcome"] == "failed"
    assert otel.value("cano_workflow_runs_total", outcome="failed") == 2


async def test_task_cancelled_run(otel: Otel) -> None:
    started = asyncio.Event()

    async def hang() -> Step:
        started.set()
        await asyncio.Event().wait()
        return Step.PARSE

    wf = pipeline(cano.task(name="hang", config=MINIMAL)(hang), otel.observer())
    task = asyncio.create_task(wf.orchestrate(Step.FETCH))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (run,) = otel.runs()
    assert run.status.status_code is StatusCode.ERROR
    attrs = dict(run.attributes or {})
    assert attrs["cano.run.outcome"] == "cancelled"
    assert attrs["error.type"] == "CancelledError"
    (hang_span,) = otel.spans("execute_task hang")
    assert dict(hang_span.attributes or {})["cano.task.outcome"] == "cancelled"
    assert otel.value("cano_workflow_runs_total", outcome="cancelled") == 1


class FailingStore(SlowStore):
    """Refuses the third row: the run fails in the state it was entering."""

    def __init__(self) -> None:
        super().__init__()
        self.appends = 0

    async def append(self, row: cano.CheckpointRow) -> None:
        self.appends += 1
        if self.appends == 3:
            await asyncio.sleep(0.003)
            raise cano.CheckpointError("disk full")
        await super().append(row)


async def test_failures_outside_tasks_end_the_run_with_error(otel: Otel) -> None:
    async def back() -> Step:
        return Step.FETCH

    looping = (
        cano.Workflow.bare()
        .register(Step.FETCH, cano.task(name="fetch", config=MINIMAL)(fetch))
        .register(Step.PARSE, cano.task(name="back", config=MINIMAL)(back))
        .add_exit_state(Step.DONE)
        .with_max_transitions(3)
        .with_observer(otel.observer())
    )
    with pytest.raises(cano.WorkflowError, match="transitions") as guard:
        await looping.orchestrate(Step.FETCH)
    (run,) = otel.runs()
    attrs = dict(run.attributes or {})
    assert run.status.status_code is StatusCode.ERROR
    assert attrs["cano.run.outcome"] == "failed"
    assert attrs["error.type"] == type(guard.value).__qualname__
    assert [e.name for e in run.events].count("exception") == 1

    otel.exporter.clear()
    three_states = pipeline(cano.task(name="fetch", config=MINIMAL)(fetch), otel.observer())
    three_states.with_checkpoint_store(FailingStore())
    with pytest.raises(cano.CheckpointError):
        await three_states.orchestrate(Step.FETCH, workflow_id="full-disk")
    (run,) = otel.runs()
    attrs = dict(run.attributes or {})
    assert run.status.status_code is StatusCode.ERROR
    assert attrs["cano.run.outcome"] == "failed"
    assert attrs["error.type"] == "CheckpointError"
    assert attrs["cano.workflow.id"] == "full-disk"
    assert otel.value("cano_workflow_runs_total", outcome="failed") == 2


class Reserve(cano.CompensatableTask[Step, int]):
    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def config(self) -> cano.TaskConfig:
        return MINIMAL

    async def run(self, res: cano.Resources[Any]) -> tuple[Step, int]:
        return Step.PARSE, 1

    async def compensate(self, res: cano.Resources[Any], output: int) -> None:
        with self.tracer.start_as_current_span("release"):
            raise OSError("release failed")


async def test_a_failed_rollback_ends_the_run_with_error(otel: Otel) -> None:
    wf = (
        cano.Workflow.bare()
        .register_with_compensation(Step.FETCH, Reserve(otel.tracer_provider.get_tracer("app")))
        .register(Step.PARSE, panic_on_attempt(1, Step.DONE).with_config(MINIMAL))
        .add_exit_state(Step.DONE)
        .with_observer(otel.observer())
    )
    with pytest.raises(cano.CompensationFailedError):
        await wf.orchestrate(Step.FETCH)
    (run,) = otel.runs()
    assert dict(run.attributes or {})["error.type"] == "CompensationFailedError"
    assert [e.name for e in run.events].count("exception") == 1
    # A compensation runs while the run span is current: its spans are the run's children.
    (release,) = otel.spans("release")
    assert parent_id(release) == span_id(run)


def test_run_sync(otel: Otel) -> None:
    wf = pipeline(cano.task(name="fetch", config=MINIMAL)(fetch), otel.observer())
    assert wf.run_sync(Step.FETCH) is Step.DONE
    (run,) = otel.runs()
    assert dict(run.attributes or {})["cano.run.outcome"] == "completed"


async def test_a_subclass_calling_super(otel: Otel) -> None:
    seen: list[str] = []

    class Counting(OpenTelemetryObserver):
        def on_state_enter(self, state: str) -> None:
            seen.append(state)
            super().on_state_enter(state)

    obs = Counting(otel.tracer_provider, otel.meter_provider, workflow_name="orders")
    wf = pipeline(cano.task(name="fetch", config=MINIMAL)(fetch), obs)
    await wf.orchestrate(Step.FETCH)
    assert seen == ["FETCH", "PARSE", "DONE"]
    (run,) = otel.runs()
    assert dict(run.attributes or {})["cano.run.outcome"] == "completed"


async def test_circuit_breaker_rejection(otel: Otel) -> None:
    breaker = cano.CircuitBreaker(cano.CircuitPolicy(failure_threshold=1, reset_timeout=60))
    guarded = panic_on_attempt(5, Step.PARSE).with_config(MINIMAL.with_circuit_breaker(breaker))
    wf = pipeline(guarded, otel.observer())
    with pytest.raises(cano.TaskError):
        await wf.orchestrate(Step.FETCH)
    with pytest.raises(cano.CircuitOpenError):
        await wf.orchestrate(Step.FETCH)
    first, second = sorted(
        otel.spans("execute_task PanicOnAttempt"), key=lambda s: s.start_time or 0
    )
    assert [e.name for e in first.events] == ["exception"]
    assert [e.name for e in second.events] == ["cano.circuit_open", "exception"]
    assert dict(second.attributes or {})["error.type"] == "CircuitOpenError"
    assert otel.value("cano_circuit_open_events_total", task="PanicOnAttempt") == 1
    assert guarded.attempts == 1  # the rejected run never called the task


async def test_scheduled_runs_nest_under_flow_spans(otel: Otel) -> None:
    calls = {"n": 0}

    async def work() -> Step:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("first run fails")
        return Step.PARSE

    wf = pipeline(cano.task(name="work", config=MINIMAL)(work), otel.observer())
    scheduler = (
        cano.Scheduler()
        .manual("nightly", wf, Step.FETCH)
        .set_backoff("nightly", cano.BackoffPolicy(initial=0.001))
    )
    async with scheduler.running() as running:
        for _ in range(2):
            await running.trigger("nightly")
            await until(lambda: not running.has_running_flows())
            await asyncio.sleep(0.005)  # past the back-off

    flows = sorted(otel.spans("execute_flow nightly"), key=lambda s: s.start_time or 0)
    runs = sorted(otel.runs(), key=lambda s: s.start_time or 0)
    assert len(flows) == len(runs) == 2
    for flow, run in zip(flows, runs, strict=True):
        assert parent_id(run) == span_id(flow)
    failed, ok = flows
    assert dict(failed.attributes or {})["cano.flow.outcome"] == "failed"
    assert dict(failed.attributes or {})["error.type"] == "TaskError"
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(ok.attributes or {})["cano.flow.run"] == 2
    assert dict(ok.attributes or {})["cano.flow.outcome"] == "completed"
    assert dict(runs[1].attributes or {})["cano.run.outcome"] == "completed"
    assert otel.value("cano_scheduler_flow_runs_total", flow="nightly", outcome="failed") == 1
    assert otel.value("cano_scheduler_flow_runs_total", flow="nightly", outcome="completed") == 1
    assert otel.value("cano_scheduler_flow_backoff_total", flow="nightly") == 1
    assert otel.value("cano_scheduler_flow_duration_seconds", flow="nightly") == 2
    assert otel.value("cano_scheduler_active_flows") == 0


async def test_a_parked_run_ends_its_span_as_parked_and_resumes_in_another(otel: Otel) -> None:
    store = InMemoryCheckpointStore()

    class Approval(cano.WaitTask[Step]):
        signal = "approval"

        async def on_signal(self, res: cano.Resources[Any], payload: Any) -> Step:
            return Step.DONE

    async def fetch_it() -> Step:
        return Step.PARSE

    wf = (
        cano.Workflow[Step](cano.Resources.empty(), name="orders")
        .register(Step.FETCH, cano.task(config=MINIMAL)(fetch_it))
        .register_wait(Step.PARSE, Approval())
        .add_exit_state(Step.DONE)
        .with_checkpoint_store(store)
        .with_observer(otel.observer())
    )
    client = cano.Client(store)
    await client.enqueue("orders", Step.FETCH, workflow_id="order-9")
    async with cano.Worker(store, [wf], poll_interval=0.05, lease=5):
        await until(lambda: len(otel.runs()) == 1)  # parked: its span ended
        await client.signal("order-9", "approval", {})
        assert (await client.wait("order-9", timeout=10)).status is cano.RunStatus.COMPLETED
    parked, woken = sorted(otel.runs(), key=lambda s: s.start_time or 0)
    attrs = dict(parked.attributes or {})
    assert (attrs["cano.run.outcome"], attrs["cano.wait.signal"]) == ("parked", "approval")
    assert parked.status.status_code is not StatusCode.ERROR  # a wait, not a failure
    assert dict(woken.attributes or {})["cano.run.resumed"] is True
