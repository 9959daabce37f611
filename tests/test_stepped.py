"""Stepped tasks (``register_stepped``): one attempt per step, every cursor persisted.

API §2 and §7, upstream §2.6. Checkpointing tests run on ``RedbCheckpointStore``,
``InMemoryCheckpointStore`` and a dict store defined here. A real crash mid-loop (SIGKILL)
is in ``tests/crash/``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import uuid
from typing import Any

import cano
import orjson
import pytest
from cano.store import (
    CheckpointRow,
    RowKind,
)


class S(enum.Enum):
    START = enum.auto()
    PAGES = enum.auto()
    AFTER = enum.auto()
    DONE = enum.auto()


WID = "job-1"


def cursor_rows(rows: list[CheckpointRow]) -> list[tuple[int, str, str, Any]]:
    return [
        (r.sequence, r.state, r.task_id, orjson.loads(r.output or b"null"))
        for r in rows
        if r.kind is RowKind.STEP_CURSOR
    ]


@dataclasses.dataclass(frozen=True)
class Page:
    number: int
    token: str


class Pages(cano.SteppedTask[S, Page]):
    """Walks pages 1..last; records every cursor it is given and the log at each step.

    ``fail`` maps a page number to how many attempts of that step fail (with ``RuntimeError``)
    in total; ``stop_at`` raises a non-retried error at that page (a "crash").
    """

    cursor_type = Page

    def __init__(
        self,
        store: Any,
        last: int = 4,
        *,
        fail: dict[int, int] | None = None,
        retries: int = 0,
        stop_at: int | None = None,
    ) -> None:
        self.store = store
        self.last = last
        self.fail = dict(fail or {})
        self.retries = retries
        self.stop_at = stop_at
        self.given: list[Page | None] = []
        self.logged: list[list[tuple[int, str, str, Any]]] = []

    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig().with_fixed_retry(self.retries, 0)

    async def step(
        self, res: cano.Resources[Any], cursor: Page | None
    ) -> cano.More[Page] | cano.Done[S]:
        self.given.append(cursor)
        if self.store is not None:
            self.logged.append(cursor_rows(await self.store.load_run(WID)))
        page = cursor.number + 1 if cursor else 1
        if self.stop_at == page:
            self.stop_at = None
            raise KeyboardInterrupt  # never retried: the run ends here, like a crash
        if self.fail.get(page, 0) > 0:
            self.fail[page] -= 1
            raise RuntimeError(f"page {page} unavailable")
        if page > self.last:
            return cano.Done(S.AFTER)
        return cano.More(Page(page, f"t{page}"))


def workflow(task: Any, store: Any = None, *, after: Any = None) -> cano.Workflow[S]:
    async def start() -> S:
        return S.PAGES

    async def finish() -> S:
        return S.DONE

    wf: cano.Workflow[S] = cano.Workflow.bare()
    wf.register(S.START, start).register_stepped(S.PAGES, task)
    wf.register(S.AFTER, after or finish).add_exit_state(S.DONE)
    if store is not None:
        wf.with_checkpoint_store(store).with_workflow_id(WID)
    return wf


# --------------------------------------------------------------------------------------------
# in memory (no store)


async def test_steps_run_until_done_starting_from_none() -> None:
    task = Pages(None, last=3)
    assert await workflow(task).orchestrate(S.START) is S.DONE
    assert task.given == [None, Page(1, "t1"), Page(2, "t2"), Page(3, "t3")]


async def test_without_a_store_the_cursor_is_the_same_object_and_need_not_serialise() -> None:
    marker = object()
    given: list[object] = []

    class Opaque(cano.SteppedTask[S, object]):
        async def step(self, res: cano.Resources[Any], cursor: object) -> Any:
            given.append(cursor)
            return cano.Done(S.AFTER) if cursor is marker else cano.More(marker)

    assert await workflow(Opaque()).orchestrate(S.START) is S.DONE
    assert given == [None, marker]


async def test_a_failed_step_is_retried_with_the_same_cursor() -> None:
    task = Pages(None, last=3, fail={2: 2}, retries=2)
    assert await workflow(task).orchestrate(S.START) is S.DONE
    # Step 2 (cursor page 1) ran three times; step 1 never re-ran.
    assert task.given == [
        None,
        Page(1, "t1"),
        Page(1, "t1"),
        Page(1, "t1"),
        Page(2, "t2"),
        Page(3, "t3"),
    ]


async def test_each_step_has_its_own_retry_budget() -> None:
    # One retry allowed; two different steps each fail once: both recover.
    task = Pages(None, last=3, fail={1: 1, 3: 1}, retries=1)
    assert await workflow(task).orchestrate(S.START) is S.DONE
    assert task.given.count(None) == 2
    assert task.given.count(Page(2, "t2")) == 2


async def test_retry_exhaustion_fails_the_state() -> None:
    task = Pages(None, last=3, fail={2: 5}, retries=2)
    with pytest.raises(cano.RetryExhaustedError) as info:
        await workflow(task).orchestrate(S.START)
    assert info.value.attempts == 3
    assert info.value.state == "PAGES"
    assert isinstance(info.value.__cause__, RuntimeError)


async def test_attempt_timeout_bounds_one_step() -> None:
    calls: list[int | None] = []

    class Slow(cano.SteppedTask[S, int]):
        def config(self) -> cano.TaskConfig:
            return cano.TaskConfig.minimal().with_attempt_timeout(0.5)

        async def step(self, res: cano.Resources[Any], cursor: int | None) -> Any:
            calls.append(cursor)
            n = cursor or 0
            if n == 3:
                await asyncio.sleep(10)
            await asyncio.sleep(0.15)  # 4 steps take longer than one attempt_timeout
            return cano.More(n + 1)

    with pytest.raises(cano.TaskTimeoutError):
        await workflow(Slow()).orchestrate(S.START)
    assert calls == [None, 1, 2, 3]


async def test_a_step_returning_something_else_is_a_workflow_error() -> None:
    class Wrong(cano.SteppedTask[S, int]):
        async def step(self, res: cano.Resources[Any], cursor: int | None) -> Any:
            return S.AFTER

    with pytest.raises(cano.WorkflowError, match="More"):
        await workflow(Wrong()).orchestrate(S.START)


async def test_a_reentered_stepped_state_starts_from_none() -> None:
    rounds = 0

    async def again() -> S:
        nonlocal rounds
        rounds += 1
        return S.PAGES if rounds < 2 else S.DONE

    task = Pages(None, last=1)
    assert await workflow(task, after=again).orchestrate(S.START) is S.DONE
    assert task.given == [None, Page(1, "t1"), None, Page(1, "t1")]


# --------------------------------------------------------------------------------------------
# with a store: every cursor persisted before the next step


async def test_every_cursor_is_persisted_before_the_next_step(store: Any) -> None:
    task = Pages(store, last=3)
    assert await workflow(task, store).orchestrate(S.START) is S.DONE
    assert task.logged == [
        [],
        [(2, "PAGES", "Pages", {"number": 1, "token": "t1"})],
        [
            (2, "PAGES", "Pages", {"number": 1, "token": "t1"}),
            (3, "PAGES", "Pages", {"number": 2, "token": "t2"}),
        ],
        [
            (2, "PAGES", "Pages", {"number": 1, "token": "t1"}),
            (3, "PAGES", "Pages", {"number": 2, "token": "t2"}),
            (4, "PAGES", "Pages", {"number": 3, "token": "t3"}),
        ],
    ]
    assert await store.load_run(WID) == []


async def test_done_writes_no_cursor_row_and_sequences_stay_dense(store: Any) -> None:
    task = Pages(store, last=2)
    with pytest.raises(cano.TaskError):

        async def boom() -> S:
            raise ValueError("after the loop")

        await workflow(
            task, store, after=cano.task(config=cano.TaskConfig.minimal())(boom)
        ).orchestrate(S.START)
    rows = await store.load_run(WID)
    assert [(r.sequence, r.state, r.kind.name) for r in rows] == [
        (0, "START", "STATE_ENTRY"),
        (1, "PAGES", "STATE_ENTRY"),
        (2, "PAGES", "STEP_CURSOR"),
        (3, "PAGES", "STEP_CURSOR"),
        (4, "AFTER", "STATE_ENTRY"),
    ]


async def test_a_retried_step_writes_one_cursor_row(store: Any) -> None:
    task = Pages(store, last=2, fail={2: 2}, retries=2)
    assert await workflow(task, store).orchestrate(S.START) is S.DONE
    assert task.given == [None, Page(1, "t1"), Page(1, "t1"), Page(1, "t1"), Page(2, "t2")]
    assert [len(log) for log in task.logged] == [0, 1, 1, 1, 2]


async def test_resume_continues_from_the_last_cursor_rebuilt_as_cursor_type(store: Any) -> None:
    task = Pages(store, last=5, fail={4: 1})
    wf = workflow(task, store)
    with pytest.raises(cano.TaskError):
        await wf.orchestrate(S.START)
    assert [c for *_, c in cursor_rows(await store.load_run(WID))] == [
        {"number": n, "token": f"t{n}"} for n in (1, 2, 3)
    ]
    task.given.clear()
    assert await wf.resume_from(WID) is S.DONE
    assert task.given == [Page(3, "t3"), Page(4, "t4"), Page(5, "t5")]
    assert type(task.given[0]) is Page
    assert await store.load_run(WID) == []


async def test_resume_after_retry_exhaustion_retries_the_same_cursor(store: Any) -> None:
    task = Pages(store, last=3, fail={3: 2}, retries=1)
    wf = workflow(task, store)
    with pytest.raises(cano.RetryExhaustedError):
        await wf.orchestrate(S.START)
    task.given.clear()
    assert await wf.resume_from(WID) is S.DONE
    assert task.given == [Page(2, "t2"), Page(3, "t3")]


async def test_resume_of_a_crash_before_the_first_cursor_starts_from_none(store: Any) -> None:
    task = Pages(store, last=2, stop_at=1)
    wf = workflow(task, store)
    with pytest.raises(KeyboardInterrupt):
        await wf.orchestrate(S.START)
    task.given.clear()
    assert await wf.resume_from(WID) is S.DONE
    assert task.given == [None, Page(1, "t1"), Page(2, "t2")]


async def test_the_latest_cursor_row_wins(store: Any) -> None:
    def row(seq: int, kind: RowKind, state: str, out: Any = None) -> CheckpointRow:
        blob = None if out is None else orjson.dumps(out)
        return CheckpointRow(WID, seq, state, "Pages", kind, blob, 0)

    rows = [
        row(0, RowKind.STATE_ENTRY, "START"),
        row(1, RowKind.STATE_ENTRY, "PAGES"),
        row(2, RowKind.STEP_CURSOR, "PAGES", {"number": 1, "token": "t1"}),
        row(3, RowKind.STEP_CURSOR, "PAGES", {"number": 4, "token": "t4"}),
    ]
    for r in rows:
        await store.append(r)
    task = Pages(store, last=5)
    assert await workflow(task, store).resume_from(WID) is S.DONE
    assert task.given == [Page(4, "t4"), Page(5, "t5")]


async def test_a_resume_that_crashes_at_once_keeps_the_visit_and_its_cursor(store: Any) -> None:
    task = Pages(store, last=5, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        await workflow(task, store).orchestrate(S.START)
    # The first resume "crashes" before its first step ends: it wrote no row of its own (the
    # visit's entry row is in the log already), so the second resume still continues from
    # the last cursor instead of mistaking the resume for a new visit of PAGES.
    again = Pages(store, last=5, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        await workflow(again, store).resume_from(WID)
    rows = await store.load_run(WID)
    assert [(r.state, r.kind) for r in rows][-1] == ("PAGES", RowKind.STEP_CURSOR)
    last = Pages(store, last=5)
    assert await workflow(last, store).resume_from(WID) is S.DONE
    assert last.given[0] == Page(2, "t2")


async def test_a_cursor_of_an_earlier_visit_is_not_resumed(store: Any) -> None:
    def row(seq: int, kind: RowKind, state: str, out: Any = None) -> CheckpointRow:
        blob = None if out is None else orjson.dumps(out)
        return CheckpointRow(WID, seq, state, "Pages", kind, blob, 0)

    # PAGES finished once (its cursor rows are from that visit), AFTER sent the run back to
    # PAGES, and the process died as the second visit began: it starts from scratch.
    for r in [
        row(0, RowKind.STATE_ENTRY, "START"),
        row(1, RowKind.STATE_ENTRY, "PAGES"),
        row(2, RowKind.STEP_CURSOR, "PAGES", {"number": 1, "token": "t1"}),
        row(3, RowKind.STATE_ENTRY, "AFTER"),
        row(4, RowKind.STATE_ENTRY, "PAGES"),
    ]:
        await store.append(r)
    task = Pages(store, last=2)
    assert await workflow(task, store).resume_from(WID) is S.DONE
    assert task.given[0] is None


async def test_cancel_between_steps_keeps_the_cursor_for_resume(store: Any) -> None:
    token, handle = cano.CancellationToken.new()

    class CancelAt2(Pages):
        async def step(self, res: cano.Resources[Any], cursor: Page | None) -> Any:
            out = await super().step(res, cursor)
            if cursor == Page(1, "t1"):
                handle.cancel()
            return out

    task = CancelAt2(store, last=3)
    wf = workflow(task, store)
    with pytest.raises(cano.WorkflowCancelledError):
        await wf.orchestrate(S.START, cancel=token)
    assert [c["number"] for *_, c in cursor_rows(await store.load_run(WID))] == [1, 2]
    task.given.clear()
    assert await wf.resume_from(WID) is S.DONE
    assert task.given == [Page(2, "t2"), Page(3, "t3")]


# --------------------------------------------------------------------------------------------
# what a cursor may be


class Plain(cano.SteppedTask[S, Any]):
    """Two steps: More(first), then Done; records the cursors it receives."""

    def __init__(self, first: Any, cursor_type: Any = None) -> None:
        self.first = first
        self.cursor_type = cursor_type
        self.given: list[Any] = []

    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig.minimal()

    async def step(self, res: cano.Resources[Any], cursor: Any) -> Any:
        self.given.append(cursor)
        if len(self.given) == 2 and not getattr(self, "resumed", False):
            self.resumed = True
            raise RuntimeError("crash after the first cursor")
        return cano.More(self.first) if cursor is None else cano.Done(S.AFTER)


async def resumed_cursor(store: Any, task: Plain) -> Any:
    wf = workflow(task, store)
    with pytest.raises(cano.TaskError):
        await wf.orchestrate(S.START)
    task.given.clear()
    assert await wf.resume_from(WID) is S.DONE
    return task.given[0]


async def test_without_cursor_type_a_json_cursor_comes_back_equal(store: Any) -> None:
    cursor = {"page": 3, "seen": [1, 2], "ratio": 0.5, "next": None, "done": False}
    task = Plain(cursor)
    assert task.given == []
    got = await resumed_cursor(store, task)
    assert got == cursor
    assert type(got["ratio"]) is float


class Colour(enum.Enum):
    RED = "red"


@pytest.mark.parametrize(
    ("cursor", "would_be"),
    [
        ({"seen": (1, 2)}, "[1, 2]"),
        ({"ratio": float("nan")}, "None"),
        ({"ratio": float("inf")}, "None"),
        ({"colour": Colour.RED}, "'red'"),
        ({"at": datetime.datetime(2024, 5, 1, 12, 0)}, "'2024-05-01T12:00:00'"),
        ({"at": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)}, "'2024-05-01"),
        ({"id": uuid.UUID(int=7)}, "'00000000"),
        ((1, 2), "[1, 2]"),
        ({1: "int key"}, "Dict key must be str"),
    ],
)
async def test_a_cursor_that_would_change_in_a_round_trip_is_refused(
    store: Any, cursor: Any, would_be: str
) -> None:
    # After a crash the step would see another value than before it: refused, naming the
    # task and what it would become, and nothing is written.
    task = Plain(cursor)
    with pytest.raises(cano.CheckpointError, match="Plain") as info:
        await workflow(task, store).orchestrate(S.START)
    assert would_be in str(info.value)
    assert [r.kind for r in await store.load_run(WID)] == [RowKind.STATE_ENTRY] * 2


async def test_a_set_cursor_is_refused(store: Any) -> None:
    with pytest.raises(cano.CheckpointError, match="set"):
        await workflow(Plain({"seen": {1, 2}}), store).orchestrate(S.START)


@dataclasses.dataclass
class Nested:
    offset: int
    tags: list[str]


async def test_cursor_type_rebuilds_a_dataclass(store: Any) -> None:
    task = Plain(Nested(5, ["a"]), cursor_type=Nested)
    got = await resumed_cursor(store, task)
    assert got == Nested(5, ["a"])
    assert type(got) is Nested


class Validated:
    """Quacks like a pydantic model: model_dump(mode=...) and model_validate(data)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        return {"offset": self.offset}

    @classmethod
    def model_validate(cls, data: Any) -> Validated:
        return cls(data["offset"] * 1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Validated) and other.offset == self.offset

    __hash__ = None  # type: ignore[assignment]


async def test_cursor_type_uses_model_validate(store: Any) -> None:
    got = await resumed_cursor(store, Plain(Validated(9), cursor_type=Validated))
    assert got == Validated(9)


async def test_cursor_type_rebuilds_a_pydantic_model(store: Any) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Cursor(pydantic.BaseModel):  # type: ignore[misc, name-defined]
        offset: int
        at: datetime.datetime

    when = datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC)
    got = await resumed_cursor(store, Plain(Cursor(offset=2, at=when), cursor_type=Cursor))
    assert type(got) is Cursor
    assert got == Cursor(offset=2, at=when)


async def test_a_non_serialisable_cursor_is_a_checkpoint_error(store: Any) -> None:
    class Handle:
        pass

    class Leaky(cano.SteppedTask[S, Any]):
        def name(self) -> str:
            return "leaky-walker"

        async def step(self, res: cano.Resources[Any], cursor: Any) -> Any:
            return cano.More(Handle())

    with pytest.raises(cano.CheckpointError) as info:
        await workflow(Leaky(), store).orchestrate(S.START)
    message = str(info.value)
    assert "leaky-walker" in message
    assert "Handle" in message
    # The step's row is kept; no cursor row was written.
    assert [r.kind for r in await store.load_run(WID)] == [RowKind.STATE_ENTRY] * 2


async def test_a_cursor_checkpoint_error_carries_the_state_and_path(store: Any) -> None:
    class Leaky(cano.SteppedTask[S, Any]):
        async def step(self, res: cano.Resources[Any], cursor: Any) -> Any:
            return cano.More(object())

    with pytest.raises(cano.CheckpointError) as info:
        await workflow(Leaky(), store).orchestrate(S.START)
    assert (info.value.state, info.value.path) == ("PAGES", ["START", "PAGES"])


async def test_a_cursor_that_cannot_be_rebuilt_is_refused_before_it_is_written(
    store: Any,
) -> None:
    task = Plain({"unexpected": 1}, cursor_type=Nested)
    with pytest.raises(cano.CheckpointError, match="Nested"):
        await workflow(task, store).orchestrate(S.START)
    assert [r.kind for r in await store.load_run(WID)] == [RowKind.STATE_ENTRY] * 2
