"""Traces and metrics with OpenTelemetry: a flaky task's retries become span events.

Needs ``pip install 'cano[otel]' opentelemetry-sdk``. Run it with
``python examples/opentelemetry_tracing.py``. (The file is not called ``opentelemetry.py``:
a script of that name would shadow the ``opentelemetry`` package it imports.)

A real application would export to a collector instead of memory, e.g. with
``BatchSpanProcessor(OTLPSpanExporter())`` from ``opentelemetry-exporter-otlp``; nothing
on the cano side changes.
"""

from __future__ import annotations

import asyncio
import enum

import cano
from cano.contrib.opentelemetry import OpenTelemetryObserver
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class Order(enum.Enum):
    CHARGE = enum.auto()
    NOTIFY = enum.auto()
    DONE = enum.auto()


class Charge(cano.Task[Order]):
    """The payment API fails twice before it answers; two quick retries absorb that."""

    def __init__(self) -> None:
        self.calls = 0

    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig().with_fixed_retry(3, 0.01)

    async def run(self, res: cano.Resources) -> Order:
        self.calls += 1
        if self.calls < 3:
            raise ConnectionError("payment gateway timed out")
        return Order.NOTIFY


@cano.task(name="email", config=cano.TaskConfig.minimal())
async def email() -> Order:
    return Order.DONE


@cano.task(name="sms", config=cano.TaskConfig.minimal())
async def sms() -> Order:
    await asyncio.sleep(0.005)
    return Order.DONE


def print_tree(spans: list[ReadableSpan]) -> None:
    """Prints spans indented under their parents, with their events and key attributes."""
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent, []).append(span)

    def show(parent: int | None, depth: int) -> None:
        for span in children.get(parent, []):
            attrs = dict(span.attributes or {})
            took = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
            keys = ("cano.state", "cano.task", "cano.task.attempts", "cano.run.outcome")
            shown = ", ".join(f"{k}={attrs[k]}" for k in keys if k in attrs)
            print(f"{'  ' * depth}{span.name}  [{took:.1f} ms]  {shown}")
            for event in span.events:
                if event.name == "cano.task.retry":
                    attempt = dict(event.attributes or {})["cano.task.attempt"]
                    print(f"{'  ' * depth}  event: attempt {attempt} failed, retrying")
            if span.context is not None:
                show(span.context.span_id, depth + 1)

    show(None, 0)


async def main() -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])

    observer = OpenTelemetryObserver(tracer_provider, meter_provider, workflow_name="checkout")
    wf = (
        cano.Workflow.bare()
        .register(Order.CHARGE, Charge())
        .register_split(
            Order.NOTIFY, [email, sms], cano.JoinConfig(cano.JoinStrategy.ALL, Order.DONE)
        )
        .add_exit_state(Order.DONE)
        .with_observer(observer)
    )

    # Spans your code creates around a run (an HTTP handler, say) become its parents.
    with tracer_provider.get_tracer("shop").start_as_current_span("POST /checkout"):
        # The run span ends in on_run_finish, before orchestrate returns.
        assert await wf.orchestrate(Order.CHARGE) is Order.DONE

    print("spans:")
    print_tree(list(exporter.get_finished_spans()))

    print("\nmetrics:")
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = f"count={getattr(point, 'count', '?')}"
                    print(f"  {metric.name}{dict(point.attributes or {})} = {value}")

    tracer_provider.shutdown()
    meter_provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
