"""The built-in stores agree on what ``append`` accepts, and give back exactly what they took.

Rows are generated with hostile field values; every store either stores the row and returns
it unchanged from ``load_run``, or refuses it with a ``CheckpointError`` naming the field.
The three stores must give the same answer for every row.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cano
from cano import CheckpointRow, RowKind
from hypothesis import given, settings
from hypothesis import strategies as st

texts = st.one_of(st.text(max_size=8), st.sampled_from(["", "\x00", "\ud800", "ß", "a" * 300]))
ids = st.one_of(texts, st.integers(), st.none())
ints = st.one_of(
    st.integers(min_value=-2, max_value=4),
    st.sampled_from([2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64]),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=2),
)
kinds = st.one_of(st.sampled_from(list(RowKind)), st.integers(min_value=-1, max_value=4))
outputs = st.one_of(st.none(), st.binary(max_size=16), st.text(max_size=4), st.integers())

rows = st.builds(
    CheckpointRow,
    workflow_id=ids,
    sequence=ints,
    state=st.one_of(texts, st.integers()),
    task_id=texts,
    kind=kinds,
    output=outputs,
    workflow_version=ints,
)


async def _answer(store: Any, row: CheckpointRow) -> tuple[str, object]:
    """``("stored", rows loaded back)`` or ``("refused", the field named)``."""
    try:
        await store.append(row)
    except cano.CheckpointError as err:
        message = str(err)
        field = next((f for f in _FIELDS if f"CheckpointRow.{f}" in message), None)
        assert field is not None, f"{type(store).__name__} refused without naming a field: {err}"
        return "refused", field
    loaded = await store.load_run(row.workflow_id)
    return "stored", loaded


_FIELDS = ("workflow_id", "sequence", "state", "task_id", "kind", "output", "workflow_version")

Opener = Callable[[Path], Any]
STORES: dict[str, Opener] = {
    "memory": lambda _dir: cano.InMemoryCheckpointStore(),
    "redb": lambda d: cano.RedbCheckpointStore(d / "rows.redb"),
    "sqlite": lambda d: cano.SqliteCheckpointStore(d / "rows.db"),
}


def _run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(row=rows)
def test_every_built_in_store_gives_the_same_answer(row: CheckpointRow) -> None:
    answers: dict[str, tuple[str, object]] = {}

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, open_store in STORES.items():
                store = open_store(Path(tmp))
                try:
                    answers[name] = await _answer(store, row)
                finally:
                    close = getattr(store, "close", None)
                    if close is not None:
                        close()

    _run(main)
    assert len({repr(a) for a in answers.values()}) == 1, answers
    outcome, detail = answers["memory"]
    if outcome == "stored":
        [stored] = detail  # type: ignore[misc]
        assert stored.workflow_id == row.workflow_id
        assert stored.sequence == row.sequence
        assert (stored.state, stored.task_id) == (row.state, row.task_id)
        assert stored.kind == RowKind(row.kind)
        assert stored.output == (None if row.output is None else bytes(row.output))  # type: ignore[arg-type]
        assert stored.workflow_version == row.workflow_version


def test_a_second_row_at_the_same_sequence_is_refused_by_every_store(tmp_path: Path) -> None:
    async def main() -> None:
        for open_store in STORES.values():
            store = open_store(tmp_path)
            first = CheckpointRow("w", 0, "A", "t", RowKind.STATE_ENTRY, None, 0)
            await store.append(first)
            try:
                await store.append(CheckpointRow("w", 0, "B", "u", RowKind.STATE_ENTRY, None, 0))
            except cano.CheckpointError as err:
                assert "sequence 0" in str(err)
            else:
                raise AssertionError(f"{type(store).__name__} took a second row at sequence 0")
            assert await store.load_run("w") == [first]
            close = getattr(store, "close", None)
            if close is not None:
                close()

    _run(main)
