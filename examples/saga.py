"""Sagas: undo the steps that succeeded when a later step fails.

A ``CompensatableTask`` returns ``(next_state, output)`` from ``run``; the engine keeps the
output (and, with a checkpoint store, persists it as JSON) so that ``compensate(res,
output)`` can undo the step if the run fails later, even in another process after a
resume. Compensations run last-first. If they all succeed the run raises the original
error and the checkpoint log is cleared; if one fails the run raises
``CompensationFailedError``, whose ``errors`` list the original error first, then each
compensation error in drain order.

Run it with ``python examples/saga.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from typing import Any

import cano


class Trip(enum.Enum):
    BOOK_FLIGHT = enum.auto()
    BOOK_HOTEL = enum.auto()
    CHARGE_CARD = enum.auto()
    BOOKED = enum.auto()


@dataclasses.dataclass(frozen=True)
class Booking:
    """A step's output: everything ``compensate`` needs, and nothing it can't rebuild."""

    reference: str
    amount_cents: int


class Agency:
    """Stands in for the partners' APIs; remembers what is currently booked."""

    def __init__(self, *, cancellations_fail: bool = False) -> None:
        self.booked: set[str] = set()
        self.cancellations_fail = cancellations_fail

    async def book(self, what: str) -> str:
        reference = f"{what}-{len(self.booked) + 1:03d}"
        self.booked.add(reference)
        print(f"  booked {reference}")
        return reference

    async def cancel(self, reference: str) -> None:
        if self.cancellations_fail and reference.startswith("hotel"):
            raise ConnectionError(f"hotel API unreachable while cancelling {reference}")
        self.booked.discard(reference)  # idempotent: cancelling twice is harmless
        print(f"  cancelled {reference}")


class BookFlight(cano.CompensatableTask[Trip, Booking]):
    output_type = Booking  # compensate() gets a Booking back, not a dict

    def __init__(self, agency: Agency) -> None:
        self.agency = agency

    async def run(self, res: cano.Resources[Any]) -> tuple[Trip, Booking]:
        return Trip.BOOK_HOTEL, Booking(await self.agency.book("flight"), 42_000)

    async def compensate(self, res: cano.Resources[Any], output: Booking) -> None:
        await self.agency.cancel(output.reference)


class BookHotel(cano.CompensatableTask[Trip, Booking]):
    output_type = Booking

    def __init__(self, agency: Agency) -> None:
        self.agency = agency

    async def run(self, res: cano.Resources[Any]) -> tuple[Trip, Booking]:
        return Trip.CHARGE_CARD, Booking(await self.agency.book("hotel"), 31_000)

    async def compensate(self, res: cano.Resources[Any], output: Booking) -> None:
        await self.agency.cancel(output.reference)


class CardDeclinedError(Exception):
    pass


@cano.task(config=cano.TaskConfig.minimal())  # no retries: a declined card stays declined
async def charge_card() -> Trip:
    raise CardDeclinedError("card declined: insufficient funds")


def trip(agency: Agency, store: cano.CheckpointStore) -> cano.Workflow[Trip]:
    wf: cano.Workflow[Trip] = cano.Workflow.bare()
    wf.register_with_compensation(Trip.BOOK_FLIGHT, BookFlight(agency))
    wf.register_with_compensation(Trip.BOOK_HOTEL, BookHotel(agency))
    wf.register(Trip.CHARGE_CARD, charge_card)
    wf.add_exit_state(Trip.BOOKED)
    wf.with_checkpoint_store(store).with_compensation_timeout(10.0)
    return wf


async def main() -> None:
    store = cano.InMemoryCheckpointStore()

    print("1. the card is declined: both bookings are cancelled, last first")
    agency = Agency()
    try:
        await trip(agency, store).orchestrate(Trip.BOOK_FLIGHT, workflow_id="trip-1")
    except cano.TaskError as err:
        print(f"  -> {type(err).__name__} in state {err.state}: {err.__cause__}")
    assert agency.booked == set()
    assert await store.load_run("trip-1") == []  # a clean rollback clears the log

    print("\n2. the card is declined and cancelling the hotel fails too")
    agency = Agency(cancellations_fail=True)
    try:
        await trip(agency, store).orchestrate(Trip.BOOK_FLIGHT, workflow_id="trip-2")
    except cano.CompensationFailedError as err:
        errors = err.errors or []
        print(f"  -> CompensationFailedError with {len(errors)} errors:")
        for e in errors:
            print(f"     {type(e).__name__}: {e}")
        assert isinstance(errors[0], cano.TaskError)  # the original failure comes first
        assert isinstance(errors[1], ConnectionError)
    assert agency.booked == {"hotel-002"}  # still booked: it needs a human
    rows = await store.load_run("trip-2")
    kept = [r.output for r in rows if r.kind is cano.RowKind.COMPENSATION]
    print(f"  the log is kept for inspection; saved outputs: {kept}")
    assert len(kept) == 2


if __name__ == "__main__":
    asyncio.run(main())
