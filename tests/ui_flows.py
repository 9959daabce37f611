"""Workflows the `cano ui` tests serve and draw (`cano ui --app ui_flows:flows`)."""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import cano

HOSTILE_STATE = '<img src=x onerror="window.__pwned=1">'
HOSTILE_ERROR = "<script>window.__pwned=1</script> & bad"


class Order(enum.Enum):
    PLACE = enum.auto()
    APPROVAL = enum.auto()
    SHIPPED = enum.auto()
    REJECTED = enum.auto()


class Step(enum.Enum):
    WORK = enum.auto()
    CHECK = enum.auto()
    DONE = enum.auto()


class Approval(cano.WaitTask[Order]):
    signal = "approval"

    async def on_signal(self, res: cano.Resources[Any], payload: Any) -> Order:
        return Order.SHIPPED if payload and payload.get("approved") else Order.REJECTED


ONCE = cano.TaskConfig.minimal()


def orders() -> cano.Workflow[Order]:
    async def place() -> Order:
        return Order.APPROVAL

    return (
        cano.Workflow[Order](cano.Resources.empty(), name="orders")
        .register(Order.PLACE, cano.task(name="place", config=ONCE)(place))
        .register_wait(Order.APPROVAL, Approval(), to=[Order.SHIPPED, Order.REJECTED])
        .add_exit_states([Order.SHIPPED, Order.REJECTED])
    )


def slow() -> cano.Workflow[Step]:
    """WORK takes an hour: a run of it stays RUNNING until cancelled."""

    async def work() -> Step:
        await asyncio.sleep(3600)
        return Step.DONE

    return (
        cano.Workflow[Step](cano.Resources.empty(), name="slow")
        .register(Step.WORK, cano.task(name="work", config=ONCE)(work))
        .add_exit_state(Step.DONE)
    )


def checked() -> cano.Workflow[Step]:
    """WORK then CHECK, which fails when the input says so."""

    async def work() -> Step:
        await asyncio.sleep(0.05)
        return Step.CHECK

    async def check() -> Step:
        await asyncio.sleep(0.02)
        if cano.current_run().input.get("fail"):
            raise ValueError("the parcel weighs -3 kg")
        return Step.DONE

    return (
        cano.Workflow[Step](cano.Resources.empty(), name="checked")
        .register(Step.WORK, cano.task(name="work", config=ONCE)(work))
        .register(Step.CHECK, cano.task(name="check", config=ONCE)(check), to=[Step.DONE])
        .add_exit_state(Step.DONE)
    )


def hostile() -> cano.Workflow[str]:
    """A state label and an error text made of HTML."""

    async def attack() -> str:
        raise RuntimeError(HOSTILE_ERROR)

    return (
        cano.Workflow[str](cano.Resources.empty(), name="hostile")
        .register(HOSTILE_STATE, cano.task(name="attack", config=ONCE)(attack))
        .add_exit_state("done")
    )


def flows() -> list[cano.Workflow[Any]]:
    return [orders(), slow(), checked(), hostile()]
