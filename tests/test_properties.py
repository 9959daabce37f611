"""Property tests for what the engine persists: cursor/output round trips and state labels.

- A cursor or saga output is either refused with a ``CheckpointError`` or comes back from the
  log *exactly* (same types all the way down): never a silently different value.
- Any enum, whatever its member names, survives a crash: the run resumes in the state it
  was in, found again by its label.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import math
from typing import Any

import cano
from cano import _codec
from hypothesis import given, settings
from hypothesis import strategies as st


class Colour(enum.Enum):
    RED = "red"


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.binary(max_size=4),
    st.just(Colour.RED),
    st.datetimes(max_value=dt.datetime(2100, 1, 1)),
    st.sampled_from([math.nan, -0.0, 2**64, 1e308]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.frozensets(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
        st.dictionaries(st.integers(), inner, max_size=2),
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(value=values)
def test_a_persisted_value_comes_back_exactly_or_is_refused(value: Any) -> None:
    try:
        blob = _codec.encode(value, task="t", what="cursor")
    except cano.CheckpointError as err:
        assert "task 't'" in str(err)
        return
    back = _codec.decode(blob, None, task="t", what="cursor")
    assert _codec.same(value, back), (value, back)


names = st.lists(
    st.from_regex(r"[A-Za-z_\u00c0-\u024f][A-Za-z0-9_\u00c0-\u024f]{0,12}", fullmatch=True).filter(
        lambda n: not n.startswith("_")
    ),
    min_size=3,
    max_size=3,
    unique=True,
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(member_names=names)
def test_any_state_enum_survives_a_crash_and_a_resume(member_names: list[str]) -> None:
    states = enum.Enum("States", member_names)  # type: ignore[misc]
    first, middle, last = list(states)
    crash = {"now": True}

    async def go(res: cano.Resources) -> Any:
        return middle

    async def flaky(res: cano.Resources) -> Any:
        if crash["now"]:
            raise RuntimeError("the process died here")
        return last

    async def main() -> Any:
        store = cano.InMemoryCheckpointStore()
        wf = (
            cano.Workflow.bare()
            .register(first, go)
            .register(middle, cano.task(config=cano.TaskConfig.minimal())(flaky))
            .add_exit_state(last)
            .with_checkpoint_store(store)
        )
        try:
            await wf.orchestrate(first, workflow_id="run")
        except cano.TaskError as err:
            assert err.state == middle.name
        rows = await store.load_run("run")
        assert [r.state for r in rows] == [first.name, middle.name]
        crash["now"] = False
        return await wf.resume_from("run")

    assert asyncio.run(main()) is last
