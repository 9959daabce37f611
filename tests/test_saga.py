"""Sagas (``register_with_compensation``): persisted outputs, LIFO drain, failures.

API §2, §7 and §13.7; upstream §10. Tests that touch a log run on ``RedbCheckpointStore``,
``InMemoryCheckpointStore`` and a dict store defined here. A real crash after a completion
row (SIGKILL) is in ``tests/crash/``; here a crash is a log written as the engine writes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from typing import Any

import cano
import orjson
import pytest
from cano.store import (
    CheckpointRow,
    RowKind,
)


class S(enum.Enum):
    RESERVE = enum.auto()
    CHARGE = enum.auto()
    SHIP = enum.auto()
    DONE = enum.auto()


WID = "order-1"
Journal = list[tuple[Any, ...]]


class Step(cano.CompensatableTask[S, Any]):
    """A saga step that journals ``("do", name)`` and ``("undo", name, output)``."""

    def __init__(
        self,
        name: str,
        nxt: S,
        output: Any,
        journal: Journal,
        *,
        undo_error: BaseException | None = None,
        undo_sleep: float = 0,
        config: cano.TaskConfig | None = None,
        output_type: Any = None,
    ) -> None:
        self._name, self.nxt, self.output, self.journal = name, nxt, output, journal
        self.undo_error, self.undo_sleep = undo_error, undo_sleep
        self._config = config or cano.TaskConfig.minimal()
        self.output_type = output_type

    def name(self) -> str:
        return self._name

    def config(self) -> cano.TaskConfig:
        return self._config

    async def run(self, res: cano.Resources[Any]) -> tuple[S, Any]:
        self.journal.append(("do", self._name))
        return self.nxt, self.output

    async def compensate(self, res: cano.Resources[Any], output: Any) -> None:
        self.journal.append(("undo", self._name, output))
        if self.undo_sleep:
            await asyncio.sleep(self.undo_sleep)
        if self.undo_error is not None:
            raise self.undo_error


class Ship:
    """The plain last step: fails while ``fail`` is set."""

    def __init__(self, journal: Journal, store: Any = None, fail: bool = True) -> None:
        self.journal, self.store, self.fail = journal, store, fail
        self.seen: list[CheckpointRow] = []

    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig.minimal()

    async def run(self, res: cano.Resources[Any]) -> S:
        self.journal.append(("do", "ship"))
        if self.store is not None:
            self.seen = await self.store.load_run(WID)
        if self.fail:
            raise RuntimeError("carrier down")
        return S.DONE


def saga(
    journal: Journal,
    store: Any = None,
    *,
    reserve: Step | None = None,
    charge: Step | None = None,
    ship: Ship | None = None,
) -> cano.Workflow[S]:
    wf: cano.Workflow[S] = cano.Workflow.bare()
    wf.register_with_compensation(
        S.RESERVE, reserve or Step("reserve", S.CHARGE, {"hold": "h-1"}, journal)
    )
    wf.register_with_compensation(
        S.CHARGE, charge or Step("charge", S.SHIP, {"charge": "ch-1", "cents": 1250}, journal)
    )
    wf.register(S.SHIP, ship or Ship(journal, store)).add_exit_state(S.DONE)
    if store is not None:
        wf.with_checkpoint_store(store).with_workflow_id(WID)
    return wf


def undos(journal: Journal) -> list[tuple[Any, ...]]:
    return [e for e in journal if e[0] == "undo"]


# --------------------------------------------------------------------------------------------
# forward: outputs are persisted


async def test_each_output_is_persisted_after_its_step(store: Any) -> None:
    journal: Journal = []
    ship = Ship(journal, store, fail=False)
    assert await saga(journal, store, ship=ship).orchestrate(S.RESERVE) is S.DONE
    assert [(r.sequence, r.state, r.task_id, r.kind, r.output) for r in ship.seen] == [
        (0, "RESERVE", "reserve", RowKind.STATE_ENTRY, None),
        (1, "RESERVE", "reserve", RowKind.COMPENSATION, b'{"hold":"h-1"}'),
        (2, "CHARGE", "charge", RowKind.STATE_ENTRY, None),
        (3, "CHARGE", "charge", RowKind.COMPENSATION, b'{"charge":"ch-1","cents":1250}'),
        (4, "SHIP", "Ship", RowKind.STATE_ENTRY, None),
    ]
    assert undos(journal) == []  # success discards the stack
    assert await store.load_run(WID) == []


async def test_a_forward_retry_writes_one_completion_row(store: Any) -> None:
    journal: Journal = []
    attempts = 0

    class Flaky(Step):
        async def run(self, res: cano.Resources[Any]) -> tuple[S, Any]:
            nonlocal attempts
            attempts += 1
            if attempts < 3:
                raise ConnectionError("retry me")
            return await super().run(res)

    reserve = Flaky(
        "reserve",
        S.CHARGE,
        {"hold": "h-1"},
        journal,
        config=cano.TaskConfig().with_fixed_retry(2, 0),
    )
    ship = Ship(journal, store, fail=False)
    await saga(journal, store, reserve=reserve, ship=ship).orchestrate(S.RESERVE)
    assert [r.kind for r in ship.seen].count(RowKind.COMPENSATION) == 2
    assert attempts == 3


# --------------------------------------------------------------------------------------------
# the drain


async def test_a_later_failure_undoes_completed_steps_last_first(store: Any) -> None:
    journal: Journal = []
    with pytest.raises(cano.TaskError) as info:
        await saga(journal, store).orchestrate(S.RESERVE)
    # A clean rollback raises the original error (not CompensationFailedError).
    assert type(info.value) is cano.TaskError
    assert info.value.state == "SHIP"
    assert isinstance(info.value.__cause__, RuntimeError)
    assert journal == [
        ("do", "reserve"),
        ("do", "charge"),
        ("do", "ship"),
        ("undo", "charge", {"charge": "ch-1", "cents": 1250}),
        ("undo", "reserve", {"hold": "h-1"}),
    ]
    assert await store.load_run(WID) == []  # nothing is left to resume


async def test_without_a_store_the_drain_works_the_same() -> None:
    journal: Journal = []
    with pytest.raises(cano.TaskError):
        await saga(journal).orchestrate(S.RESERVE)
    assert [e[1] for e in undos(journal)] == ["charge", "reserve"]


async def test_a_failing_saga_step_is_not_compensated_itself() -> None:
    journal: Journal = []

    class Broken(Step):
        async def run(self, res: cano.Resources[Any]) -> tuple[S, Any]:
            raise RuntimeError("card declined")

    charge = Broken("charge", S.SHIP, None, journal)
    with pytest.raises(cano.TaskError):
        await saga(journal, charge=charge).orchestrate(S.RESERVE)
    assert undos(journal) == [("undo", "reserve", {"hold": "h-1"})]


@dataclasses.dataclass
class Hold:
    hold: str
    items: list[int]


async def test_compensate_receives_a_json_output_unchanged(store: Any) -> None:
    journal: Journal = []
    reserve = Step("reserve", S.CHARGE, {"hold": "h-9", "items": [1, 2]}, journal)
    charge = Step("charge", S.SHIP, ["ch-9", 3], journal)
    with pytest.raises(cano.TaskError):
        await saga(journal, store, reserve=reserve, charge=charge).orchestrate(S.RESERVE)
    assert undos(journal) == [
        ("undo", "charge", ["ch-9", 3]),
        ("undo", "reserve", {"hold": "h-9", "items": [1, 2]}),
    ]


@pytest.mark.parametrize("output", [Hold("h-9", [1, 2]), ("ch-9", 3), {"amount": float("nan")}])
async def test_an_output_that_would_change_in_a_round_trip_is_refused(
    store: Any, output: Any
) -> None:
    # compensate() would get another value than the step returned: refused (set output_type
    # to rebuild a dataclass), and the step's failure undoes what came before it.
    journal: Journal = []
    charge = Step("charge", S.SHIP, output, journal)
    with pytest.raises(cano.CheckpointError, match="output of task 'charge'"):
        await saga(journal, store, charge=charge).orchestrate(S.RESERVE)
    assert [u[1] for u in undos(journal)] == ["reserve"]


async def test_output_type_rebuilds_the_output(store: Any) -> None:
    journal: Journal = []
    reserve = Step("reserve", S.CHARGE, Hold("h-9", [1]), journal, output_type=Hold)
    with pytest.raises(cano.TaskError):
        await saga(journal, store, reserve=reserve).orchestrate(S.RESERVE)
    got = undos(journal)[-1][2]
    assert type(got) is Hold
    assert got == Hold("h-9", [1])


async def test_compensate_is_never_retried() -> None:
    journal: Journal = []
    charge = Step(
        "charge",
        S.SHIP,
        1,
        journal,
        undo_error=RuntimeError("refund failed"),
        config=cano.TaskConfig().with_fixed_retry(5, 0),
    )
    with pytest.raises(cano.CompensationFailedError):
        await saga(journal, charge=charge).orchestrate(S.RESERVE)
    assert [e[1] for e in undos(journal)] == ["charge", "reserve"]


# --------------------------------------------------------------------------------------------
# CompensationFailedError


async def test_a_failing_compensation_is_collected_and_the_drain_goes_on(store: Any) -> None:
    journal: Journal = []
    refund = ValueError("refund failed")
    charge = Step("charge", S.SHIP, {"charge": "ch-1"}, journal, undo_error=refund)
    with pytest.raises(cano.CompensationFailedError) as info:
        await saga(journal, store, charge=charge).orchestrate(S.RESERVE)
    errors = info.value.errors
    assert errors is not None
    assert len(errors) == 2
    original, second = errors
    assert type(original) is cano.TaskError
    assert original.state == "SHIP"
    assert isinstance(original.__cause__, RuntimeError)
    assert second is refund
    assert [e[1] for e in undos(journal)] == ["charge", "reserve"]  # reserve still undone
    # Something could not be undone: the log is kept for inspection.
    kinds = [r.kind for r in await store.load_run(WID)]
    assert kinds.count(RowKind.COMPENSATION) == 2


async def test_compensation_errors_are_listed_in_drain_order(store: Any) -> None:
    journal: Journal = []
    e_charge, e_reserve = RuntimeError("refund"), OSError("release")
    reserve = Step("reserve", S.CHARGE, 1, journal, undo_error=e_reserve)
    charge = Step("charge", S.SHIP, 2, journal, undo_error=e_charge)
    with pytest.raises(cano.CompensationFailedError) as info:
        await saga(journal, store, reserve=reserve, charge=charge).orchestrate(S.RESERVE)
    errors = info.value.errors
    assert errors is not None
    assert isinstance(errors[0], cano.TaskError)
    assert errors[1:] == [e_charge, e_reserve]


async def test_errors_0_is_what_the_run_raises_without_compensation() -> None:
    plain_journal: Journal = []

    async def start() -> S:
        return S.SHIP

    wf: cano.Workflow[S] = cano.Workflow.bare()
    wf.register(S.RESERVE, start).register(S.SHIP, Ship(plain_journal)).add_exit_state(S.DONE)
    with pytest.raises(cano.TaskError) as plain:
        await wf.orchestrate(S.RESERVE)

    journal: Journal = []
    reserve = Step("reserve", S.CHARGE, 1, journal, undo_error=RuntimeError("x"))
    with pytest.raises(cano.CompensationFailedError) as info:
        await saga(journal, reserve=reserve).orchestrate(S.RESERVE)
    assert info.value.errors is not None
    first = info.value.errors[0]
    assert type(first) is type(plain.value)
    assert (first.state, first.attempt) == (plain.value.state, plain.value.attempt)
    assert type(first.__cause__) is type(plain.value.__cause__)


# --------------------------------------------------------------------------------------------
# time limits on the drain


async def test_attempt_timeout_bounds_each_compensate() -> None:
    journal: Journal = []
    charge = Step(
        "charge",
        S.SHIP,
        1,
        journal,
        undo_sleep=30,
        config=cano.TaskConfig.minimal().with_attempt_timeout(0.05),
    )
    with pytest.raises(cano.CompensationFailedError) as info:
        await saga(journal, charge=charge).orchestrate(S.RESERVE)
    errors = info.value.errors
    assert errors is not None
    assert [type(e) for e in errors] == [cano.TaskError, cano.TaskTimeoutError]
    assert "charge" in str(errors[1])
    assert [e[1] for e in undos(journal)] == ["charge", "reserve"]


async def test_the_compensation_timeout_orphans_what_is_left(store: Any) -> None:
    journal: Journal = []
    charge = Step("charge", S.SHIP, {"charge": "ch-1"}, journal, undo_sleep=30)
    wf = saga(journal, store, charge=charge).with_compensation_timeout(0.05)
    with pytest.raises(cano.CompensationFailedError) as info:
        await wf.orchestrate(S.RESERVE)
    errors = info.value.errors
    assert errors is not None
    assert [type(e) for e in errors] == [
        cano.TaskError,  # the original
        cano.TaskTimeoutError,  # charge's compensate, cut at the deadline
        cano.OrphanedCompensationError,  # reserve, never started
        cano.TaskTimeoutError,  # "compensation deadline elapsed; 1 entries left unprocessed"
    ]
    orphan = errors[2]
    assert isinstance(orphan, cano.OrphanedCompensationError)
    assert (orphan.task_id, orphan.output) == ("reserve", b'{"hold":"h-1"}')
    assert "1 entries left unprocessed" in str(errors[3])
    assert [e[1] for e in undos(journal)] == ["charge"]
    assert len(await store.load_run(WID)) == 5  # kept


def test_with_compensation_timeout_validates() -> None:
    wf: cano.Workflow[S] = cano.Workflow.bare()
    with pytest.raises(cano.ConfigurationError):
        wf.with_compensation_timeout(-1)


# --------------------------------------------------------------------------------------------
# resume: the stack comes back from the log


def row(seq: int, state: str, task: str, out: Any = None) -> CheckpointRow:
    if out is None:
        return CheckpointRow(WID, seq, state, task, RowKind.STATE_ENTRY, None, 0)
    return CheckpointRow(WID, seq, state, task, RowKind.COMPENSATION, orjson.dumps(out), 0)


CRASHED_IN_SHIP = [
    row(0, "RESERVE", "reserve"),
    row(1, "RESERVE", "reserve", {"hold": "h-old"}),
    row(2, "CHARGE", "charge"),
    row(3, "CHARGE", "charge", {"charge": "ch-old"}),
    row(4, "SHIP", "Ship"),
]


async def test_resume_compensates_steps_completed_before_the_crash(store: Any) -> None:
    for r in CRASHED_IN_SHIP:
        await store.append(r)
    journal: Journal = []
    with pytest.raises(cano.TaskError):
        await saga(journal, store).resume_from(WID)
    assert journal == [
        ("do", "ship"),  # only the interrupted state ran again
        ("undo", "charge", {"charge": "ch-old"}),  # outputs from the log, last first
        ("undo", "reserve", {"hold": "h-old"}),
    ]
    assert await store.load_run(WID) == []


async def test_resume_then_success_does_not_compensate(store: Any) -> None:
    for r in CRASHED_IN_SHIP:
        await store.append(r)
    journal: Journal = []
    wf = saga(journal, store, ship=Ship([], fail=False))
    assert await wf.resume_from(WID) is S.DONE
    assert journal == []
    assert await store.load_run(WID) == []


async def test_a_crash_right_after_a_completion_row_reruns_that_step(store: Any) -> None:
    # The log ends in charge's completion row: charge re-runs like any resumed state, and its
    # first, durable output stays on the stack: a later failure undoes both charges and the
    # reserve (never "charge twice, refund once").
    for r in CRASHED_IN_SHIP[:4]:
        await store.append(r)
    journal: Journal = []
    with pytest.raises(cano.TaskError):
        await saga(journal, store).resume_from(WID)
    assert journal == [
        ("do", "charge"),
        ("do", "ship"),
        ("undo", "charge", {"charge": "ch-1", "cents": 1250}),
        ("undo", "charge", {"charge": "ch-old"}),
        ("undo", "reserve", {"hold": "h-old"}),
    ]


async def test_resumed_compensate_gets_the_same_value_as_in_process(store: Any) -> None:
    journal: Journal = []
    reserve = Step("reserve", S.CHARGE, Hold("h-2", [7]), journal, output_type=Hold)
    with pytest.raises(cano.TaskError):
        await saga(journal, reserve=reserve).orchestrate(S.RESERVE)
    in_process = undos(journal)[-1][2]

    blob = orjson.dumps(Hold("h-2", [7]))
    for r in [
        row(0, "RESERVE", "reserve"),
        CheckpointRow(WID, 1, "RESERVE", "reserve", RowKind.COMPENSATION, blob, 0),
        row(2, "SHIP", "Ship"),
    ]:
        await store.append(r)
    journal2: Journal = []
    reserve2 = Step("reserve", S.CHARGE, None, journal2, output_type=Hold)
    with pytest.raises(cano.TaskError):
        await saga(journal2, store, reserve=reserve2).resume_from(WID)
    assert undos(journal2)[-1][2] == in_process
    assert type(in_process) is Hold


async def test_a_compensation_whose_task_is_gone_is_orphaned(store: Any) -> None:
    for r in CRASHED_IN_SHIP:
        await store.append(r)
    journal: Journal = []
    renamed = Step("reserve-v2", S.CHARGE, {"hold": "h-1"}, journal)
    with pytest.raises(cano.CompensationFailedError) as info:
        await saga(journal, store, reserve=renamed).resume_from(WID)
    errors = info.value.errors
    assert errors is not None
    assert [type(e) for e in errors] == [cano.TaskError, cano.OrphanedCompensationError]
    orphan = errors[1]
    assert isinstance(orphan, cano.OrphanedCompensationError)
    assert orphan.task_id == "reserve"
    assert orphan.output == b'{"hold":"h-old"}'  # raw JSON, for compensating by hand
    assert undos(journal) == [("undo", "charge", {"charge": "ch-old"})]
    assert len(await store.load_run(WID)) > 0  # kept


# --------------------------------------------------------------------------------------------
# what an output may be; odd returns; interruptions


async def test_a_non_serialisable_output_is_a_checkpoint_error(store: Any) -> None:
    journal: Journal = []

    class Socket:
        pass

    charge = Step("charge-card", S.SHIP, Socket(), journal)
    with pytest.raises(cano.CheckpointError) as info:
        await saga(journal, store, charge=charge).orchestrate(S.RESERVE)
    assert "charge-card" in str(info.value)
    assert "Socket" in str(info.value)
    assert ("do", "ship") not in journal
    # The step before it is still rolled back.
    assert ("undo", "reserve", {"hold": "h-1"}) in journal


async def test_a_non_serialisable_output_fails_even_without_a_store() -> None:
    journal: Journal = []
    charge = Step("charge-card", S.SHIP, {1, object()}, journal)
    with pytest.raises(cano.CheckpointError, match="charge-card"):
        await saga(journal, charge=charge).orchestrate(S.RESERVE)


async def test_an_output_checkpoint_error_carries_the_state() -> None:
    journal: Journal = []
    charge = Step("charge-card", S.SHIP, object(), journal)
    with pytest.raises(cano.CheckpointError) as info:
        await saga(journal, charge=charge).orchestrate(S.RESERVE)
    assert (info.value.state, info.value.path) == ("CHARGE", ["RESERVE", "CHARGE"])


async def test_run_must_return_a_pair() -> None:
    class Single(Step):
        async def run(self, res: cano.Resources[Any]) -> Any:
            return S.CHARGE

    with pytest.raises(cano.WorkflowError, match="next_state, output"):
        await saga([], reserve=Single("reserve", S.CHARGE, None, [])).orchestrate(S.RESERVE)


def test_compensatable_names_must_be_unique() -> None:
    journal: Journal = []
    wf = saga(journal, charge=Step("reserve", S.SHIP, 1, journal))
    with pytest.raises(cano.ConfigurationError, match="reserve"):
        wf.validate()


def test_register_with_compensation_needs_compensate() -> None:
    class NoUndo:
        async def run(self, res: cano.Resources[Any]) -> tuple[S, int]:
            return S.DONE, 1

    with pytest.raises(cano.ConfigurationError):
        cano.Workflow.bare().register_with_compensation(S.RESERVE, NoUndo())


async def test_cancel_rolls_back_and_raises_cancelled(store: Any) -> None:
    journal: Journal = []
    token, handle = cano.CancellationToken.new()
    parked = asyncio.Event()

    class Park(Ship):
        async def run(self, res: cano.Resources[Any]) -> S:
            parked.set()
            await asyncio.sleep(30)
            return S.DONE

    run = asyncio.ensure_future(
        saga(journal, store, ship=Park(journal)).orchestrate(S.RESERVE, cancel=token)
    )
    await asyncio.wait_for(parked.wait(), 5)
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await run
    assert [e[1] for e in undos(journal)] == ["charge", "reserve"]
    assert await store.load_run(WID) == []  # a clean rollback clears the log


async def test_total_timeout_never_interrupts_a_saga_step() -> None:
    journal: Journal = []

    class Slow(Step):
        async def run(self, res: cano.Resources[Any]) -> tuple[S, Any]:
            await asyncio.sleep(0.15)
            return await super().run(res)

    reserve = Slow("reserve", S.CHARGE, {"hold": "h-1"}, journal)
    wf = saga(journal, reserve=reserve).with_total_timeout(0.03)
    with pytest.raises(cano.WorkflowTimeoutError):
        await wf.orchestrate(S.RESERVE)
    # The step finished, the timeout took effect at the next boundary, the step was undone.
    assert journal == [("do", "reserve"), ("undo", "reserve", {"hold": "h-1"})]
