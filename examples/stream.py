"""Consuming a stream: read a message queue in windows, skip poison messages, commit offsets.

A ``StreamTask`` opens a source at the last committed cursor, turns each item into an
output and a cursor with ``process_item``, and hands every window of outputs to
``flush_window``. After each flush the engine commits the cursor of the window's last item
(with a checkpoint store, a resumed run re-opens the source there). When the source ends,
``on_close(EXHAUSTED)`` picks the next state; if the run is cancelled, the partial window
is flushed and ``on_close(CANCELLED)`` runs before the run stops.

Run it with ``python examples/stream.py``.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import AsyncIterator

import cano


class Billing(enum.Enum):
    CONSUME = enum.auto()
    REPORT = enum.auto()
    DONE = enum.auto()


class FakeQueue:
    """Stands in for a partitioned log (Kafka, Redis streams): messages addressed by offset."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages

    async def read_from(self, offset: int) -> AsyncIterator[tuple[int, str]]:
        for position in range(offset, len(self.messages)):
            await asyncio.sleep(0.001)  # waiting for the broker
            yield position, self.messages[position]


class SumPayments(cano.StreamTask[Billing, tuple[int, str], float, int]):
    """Items are ``(offset, raw message)``, outputs payment amounts, the cursor an offset."""

    def __init__(self, queue: FakeQueue) -> None:
        self.queue = queue
        self.total = 0.0

    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig.minimal().with_attempt_timeout(1.0)  # bounds each item

    def window(self) -> cano.StreamWindow:
        return cano.StreamWindow.count(3)  # flush every three good messages

    def on_item_error(self) -> cano.StreamErrorPolicy:
        return cano.StreamErrorPolicy.skip_and_continue()  # a poison message is dropped

    async def open(self, res: cano.Resources, cursor: int | None) -> AsyncIterator[tuple[int, str]]:
        start = 0 if cursor is None else cursor + 1  # resume after the committed offset
        async for message in self.queue.read_from(start):
            yield message

    async def process_item(self, res: cano.Resources, item: tuple[int, str]) -> tuple[float, int]:
        offset, raw = item
        amount = float(json.loads(raw)["amount"])  # raises on a poison message
        return amount, offset

    async def flush_window(
        self, res: cano.Resources, outputs: list[float]
    ) -> cano.Continue | cano.Stop[Billing]:
        self.total += sum(outputs)
        print(f"window {outputs} -> running total {self.total:.2f}")
        return cano.Continue()

    async def on_close(self, res: cano.Resources, reason: cano.CloseReason) -> Billing:
        print(f"stream closed: {reason.name}")
        return Billing.REPORT


async def report(res: cano.Resources) -> Billing:
    return Billing.DONE


async def main() -> None:
    messages = [json.dumps({"amount": a}) for a in (10, 20, 5)]
    messages += ["{not json", json.dumps({"amount": 2.5}), json.dumps({"amount": 7})]
    task = SumPayments(FakeQueue(messages))
    workflow = (
        cano.Workflow[Billing]
        .bare()
        .register_stream(Billing.CONSUME, task)
        .register(Billing.REPORT, report)
        .add_exit_state(Billing.DONE)
    )
    final = await workflow.orchestrate(Billing.CONSUME)
    print(f"total {task.total:.2f}; finished in {final.name}")


if __name__ == "__main__":
    asyncio.run(main())
