"""Scheduled ticks handed to a queue instead of run in-process (``Scheduler(client=...)``).

Each tick is enqueued as run ``"{flow_id}:{fire time, ISO 8601 UTC}"``; enqueuing is
idempotent per id, so any number of schedulers on one store fire each tick once, and Workers
run it. ``every`` flows fire on a grid aligned to the Unix epoch (whole multiples of the
interval, UTC), so schedulers started at different moments agree on the ticks.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cano._cancel import stop_if_cancelled
from cano._registration import state_label

if TYPE_CHECKING:
    from cano.runs import Client
    from cano.scheduler import Clock, _Flow

__all__ = ["enqueue_cron", "enqueue_every", "enqueue_tick", "tick_id"]

logger = logging.getLogger("cano")


def tick_id(flow_id: str, fire: datetime) -> str:
    """The run id of one tick of a flow."""
    return f"{flow_id}:{fire.astimezone(UTC).isoformat()}"


def next_on_grid(now: datetime, interval: float) -> datetime:
    """The first whole multiple of ``interval`` seconds (since the epoch) at or after now."""
    ticks = math.ceil(round(now.timestamp() / interval, 9))
    return datetime.fromtimestamp(ticks * interval, UTC)


async def enqueue_tick(client: Client, flow: _Flow, fire: datetime) -> Any:
    """Enqueues the run of ``flow`` for the tick at ``fire`` (once, whoever asks)."""
    run_id = tick_id(flow.id, fire)
    info = await client.enqueue(
        flow.workflow.name or "", state_label(flow.initial), workflow_id=run_id
    )
    flow.run_count += 1
    flow.last_run = fire
    logger.info("flow %r: tick %s enqueued as run %r", flow.id, fire.isoformat(), run_id)
    return info


async def enqueue_every(client: Client, flow: _Flow, clock: Clock, interval: float) -> None:
    """Enqueues the ticks of an ``every`` flow, on the epoch-aligned grid."""
    last: datetime | None = None
    while True:
        now = clock.now()
        fire = next_on_grid(now if last is None else max(now, last), interval)
        if last is not None and fire <= last:
            fire = datetime.fromtimestamp(last.timestamp() + interval, UTC)
        await clock.sleep(max(0.0, (fire - now).total_seconds()))
        last = fire
        await enqueue_tick(client, flow, fire)
        stop_if_cancelled()  # a cancellation the store's driver swallowed


async def enqueue_cron(client: Client, flow: _Flow, clock: Clock) -> None:
    """Enqueues the ticks of a ``cron`` flow."""
    assert flow.cron is not None
    last: datetime | None = None
    while True:
        now = clock.now()
        after = now if last is None else max(now, last)
        upcoming = flow.cron.next_after(after.timestamp())
        if upcoming is None:
            logger.info("flow %r: cron %r never fires again", flow.id, flow.cron.expression)
            return
        fire = datetime.fromtimestamp(upcoming, UTC)
        await clock.sleep(max(0.0, (fire - now).total_seconds()))
        last = fire
        await enqueue_tick(client, flow, fire)
        stop_if_cancelled()  # a cancellation the store's driver swallowed
