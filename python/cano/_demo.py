"""The workflow behind ``cano demo``: an order that survives a crash.

``RESERVE → CHARGE → PACK (one item per step, cursor checkpointed) → SHIP → DONE`` runs on
the embedded redb store. The first process is killed with SIGKILL while packing; a second
run resumes it: reserving and charging are not repeated, packing continues from the last
saved item.
"""

from __future__ import annotations

import enum
import json
import os
import signal
from pathlib import Path
from typing import Any

from cano import _core
from cano.resources import Resources
from cano.store import RedbCheckpointStore
from cano.tasks import Done, More, SteppedTask, Task
from cano.workflow import Workflow

__all__ = ["ITEMS", "WORKFLOW_ID", "Order", "build"]

WORKFLOW_ID = "order-1042"
ITEMS = ("book", "lamp", "mug", "plant", "poster")


class Order(enum.Enum):
    RESERVE = enum.auto()
    CHARGE = enum.auto()
    PACK = enum.auto()
    SHIP = enum.auto()
    DONE = enum.auto()


class Journal:
    """The demo's side effects, appended to a file so that every process sees them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, effect: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(effect + "\n")
        print(f"    {effect}", flush=True)

    def effects(self) -> list[str]:
        if not self.path.exists():
            return []
        return self.path.read_text(encoding="utf-8").splitlines()


class Reserve(Task[Order]):
    def config(self) -> _core.TaskConfig:
        return _core.TaskConfig.minimal()

    async def run(self, res: Resources[Any]) -> Order:
        res.get("journal", Journal).record("reserved stock for 5 items")
        return Order.CHARGE


class Charge(Task[Order]):
    def config(self) -> _core.TaskConfig:
        return _core.TaskConfig.minimal()

    async def run(self, res: Resources[Any]) -> Order:
        res.get("journal", Journal).record("charged the card 42.00 EUR")
        return Order.PACK


class Pack(SteppedTask[Order, int]):
    """Packs one item per step; the cursor is the number of items packed."""

    def __init__(self, crash_at: int | None) -> None:
        self.crash_at = crash_at

    def config(self) -> _core.TaskConfig:
        return _core.TaskConfig.minimal()

    async def step(self, res: Resources[Any], cursor: int | None) -> More[int] | Done[Order]:
        packed = cursor or 0
        if packed == len(ITEMS):
            return Done(Order.SHIP)
        if packed == self.crash_at:
            print(f"    (the process is killed while packing item {packed + 1})", flush=True)
            _die()
        res.get("journal", Journal).record(f"packed item {packed + 1}/5: {ITEMS[packed]}")
        return More(packed + 1)


class Ship(Task[Order]):
    def config(self) -> _core.TaskConfig:
        return _core.TaskConfig.minimal()

    async def run(self, res: Resources[Any]) -> Order:
        res.get("journal", Journal).record("handed the parcel to the carrier")
        return Order.DONE


def _die() -> None:
    kill = getattr(signal, "SIGKILL", None)
    if kill is not None:
        os.kill(os.getpid(), kill)
    os._exit(137)


def build(store: RedbCheckpointStore, journal: Journal, *, crash_at: int | None) -> Workflow[Order]:
    """The demo workflow, checkpointed in ``store``."""
    resources: Resources[Any] = Resources().insert("journal", journal)
    return (
        Workflow[Order](resources)
        .register(Order.RESERVE, Reserve())
        .register(Order.CHARGE, Charge())
        .register_stepped(Order.PACK, Pack(crash_at))
        .register(Order.SHIP, Ship())
        .add_exit_state(Order.DONE)
        .with_checkpoint_store(store)
        .with_workflow_id(WORKFLOW_ID)
    )


def describe_output(output: bytes | None) -> str:
    """A row's output as shown to people: decoded JSON when it is JSON."""
    if output is None:
        return ""
    try:
        return json.dumps(json.loads(output))
    except ValueError:
        return repr(output)
