"""cano benchmark suite: every number is a ratio against a pure-asyncio floor.

Usage::

    python benches/run.py [--quick] [--json out.json] [--only W1,W2]

Workloads and targets are defined in ``BENCHMARKS.md``. Each workload measures cano and its
floor in the same process run, interleaved rep by rep so both share the machine's noise,
after one warm-up of each; ``gc.collect()`` runs before every measured rep. Absolute times
are context only; the ratio (median / median) decides PASS or MISS.

Adding a workload (W3..W6): write a ``setup_wN(n) -> Pair`` function returning two
zero-argument callables that each perform one full measured repetition and return the metric
in the workload's unit, then add a :class:`Workload` entry to :data:`WORKLOADS`. The runner
does warm-up, interleaving, gc, statistics, the table and the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import gc
import itertools
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import cano

# --------------------------------------------------------------------------------------------
# Framework
# --------------------------------------------------------------------------------------------

Direction = Literal["lower", "higher"]


@dataclass
class Pair:
    """One workload, ready to measure: each callable runs one repetition, returns the metric."""

    cano: Callable[[], float]
    floor: Callable[[], float]
    close: Callable[[], None] = lambda: None
    # More floors to measure and print beside the table (same unit, interleaved with the
    # others); the target still compares cano with ``floor``.
    extra_floors: dict[str, Callable[[], float]] = field(default_factory=dict)
    note: str = ""  # printed under the table, e.g. the shape of the workload


@dataclass(frozen=True)
class Workload:
    """A registry entry. ``direction`` says how the target reads.

    ``lower``: the metric is a cost (ns, bytes); PASS when cano/floor <= ``factor``.
    ``higher``: the metric is a throughput (runs/s); PASS when cano/floor >= ``factor``.
    """

    id: str
    name: str  # may contain "{n:,}", filled with the item count used
    unit: str
    direction: Direction
    factor: float
    setup: Callable[[int], Pair]  # receives the item count n
    n: int  # items in a full run
    n_quick: int  # items with --quick

    @property
    def target(self) -> str:
        op = "≤" if self.direction == "lower" else "≥"
        return f"{op} {self.factor:g}x floor"


@dataclass
class Result:
    id: str
    workload: str
    unit: str
    direction: Direction
    factor: float
    target: str
    cano: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    extra_floors: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""

    @property
    def cano_median(self) -> float:
        return statistics.median(self.cano)

    @property
    def floor_median(self) -> float:
        return statistics.median(self.floor)

    def best(self, values: list[float]) -> float:
        return min(values) if self.direction == "lower" else max(values)

    @property
    def ratio(self) -> float:
        return self.cano_median / self.floor_median

    @property
    def passed(self) -> bool:
        if self.direction == "lower":
            return self.ratio <= self.factor
        return self.ratio >= self.factor


def measure(w: Workload, quick: bool, reps: int) -> Result:
    n = w.n_quick if quick else w.n
    pair = w.setup(n)
    res = Result(w.id, w.name.format(n=n), w.unit, w.direction, w.factor, w.target)
    res.note = pair.note
    res.extra_floors = {name: [] for name in pair.extra_floors}
    try:
        gc.collect()
        pair.cano()  # warm-up
        gc.collect()
        pair.floor()  # warm-up
        for fn in pair.extra_floors.values():
            gc.collect()
            fn()  # warm-up
        for i in range(reps):
            # Alternate which side goes first so neither always runs on a "cooler" machine.
            order = [("cano", pair.cano), ("floor", pair.floor), *pair.extra_floors.items()]
            if i % 2:
                order = order[::-1]
            for side, fn in order:
                gc.collect()
                value = fn()
                if side == "cano":
                    res.cano.append(value)
                elif side == "floor":
                    res.floor.append(value)
                else:
                    res.extra_floors[side].append(value)
    finally:
        pair.close()
    return res


def fmt(v: float) -> str:
    if v >= 100_000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(results: list[Result]) -> str:
    head = [
        "id",
        "workload",
        "unit",
        "cano median",
        "cano best",
        "floor median",
        "floor best",
        "ratio",
        "target",
        "result",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = [
            r.id,
            r.workload,
            r.unit,
            fmt(r.cano_median),
            fmt(r.best(r.cano)),
            fmt(r.floor_median),
            fmt(r.best(r.floor)),
            f"{r.ratio:.2f}x",
            r.target,
            "PASS" if r.passed else "MISS",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cano": cano.__version__,
    }


class Loop:
    """One event loop per workload, reused across reps (so loop creation is never timed)."""

    def __init__(self) -> None:
        self._runner = asyncio.Runner()

    def run(self, coro: Coroutine[Any, Any, float]) -> float:
        return self._runner.run(coro)

    def close(self) -> None:
        self._runner.close()


# --------------------------------------------------------------------------------------------
# Shared task shapes
# --------------------------------------------------------------------------------------------


class Step(cano.Task[enum.Enum]):
    """Base of the benchmark tasks: ``run`` returns a bare state (never a TaskResult)."""

    async def run(self, res: cano.Resources[Any]) -> enum.Enum:
        raise NotImplementedError


class Goto(Step):
    """A no-op state task: returns the next state. Default ``TaskConfig()`` (retries armed)."""

    def __init__(self, nxt: enum.Enum) -> None:
        self.nxt = nxt

    async def run(self, res: cano.Resources[Any]) -> enum.Enum:
        return self.nxt


class ParkThenGoto(Step):
    """Counts itself as parked, waits on a shared event, then returns the next state."""

    def __init__(self, nxt: enum.Enum, event: asyncio.Event, parked: Callable[[], None]) -> None:
        self.nxt = nxt
        self.event = event
        self.parked = parked

    async def run(self, res: cano.Resources[Any]) -> enum.Enum:
        self.parked()
        await self.event.wait()
        return self.nxt


Handlers = dict[enum.Enum, Step]


async def floor_walk(
    handlers: Handlers, state: enum.Enum, end: enum.Enum, res: cano.Resources[Any]
) -> enum.Enum:
    """The floor: the minimal hand-written state loop (dict keyed by Enum member)."""
    while state is not end:
        state = await handlers[state].run(res)
    return state


def chain_workflow(
    members: list[enum.Enum], handlers: Handlers, res: cano.Resources[Any]
) -> cano.Workflow[enum.Enum]:
    wf: cano.Workflow[enum.Enum] = cano.Workflow(res)
    for state, task in handlers.items():
        wf.register(state, task)
    wf.add_exit_state(members[-1])
    wf.validate()
    return wf


ABC = enum.Enum("ABC", ["A", "B", "C"])
A, B, C = ABC.A, ABC.B, ABC.C


# --------------------------------------------------------------------------------------------
# W1: one run walking N no-op states
# --------------------------------------------------------------------------------------------


def setup_w1(n: int) -> Pair:
    states = enum.Enum("Chain", [f"S{i}" for i in range(n + 1)])  # type: ignore[misc]
    members: list[enum.Enum] = list(states)
    handlers: Handlers = {a: Goto(b) for a, b in itertools.pairwise(members)}
    res: cano.Resources[Any] = cano.Resources.empty()
    wf = chain_workflow(members, handlers, res)
    first, end = members[0], members[-1]
    loop = Loop()

    async def run_cano() -> float:
        t0 = time.perf_counter_ns()
        out = await wf.orchestrate(first)
        dt = time.perf_counter_ns() - t0
        assert out is end, out
        return dt / n

    async def run_floor() -> float:
        t0 = time.perf_counter_ns()
        out = await floor_walk(handlers, first, end, res)
        dt = time.perf_counter_ns() - t0
        assert out is end, out
        return dt / n

    return Pair(lambda: loop.run(run_cano()), lambda: loop.run(run_floor()), loop.close)


class _CountingObserver(cano.WorkflowObserver):
    """An observer with real work per hook: what W1o pays for observability."""

    def __init__(self) -> None:
        self.entered = 0

    def on_state_enter(self, state: str) -> None:
        self.entered += 1

    def on_task_success(self, task_id: str) -> None:
        self.entered += 0


def setup_w1o(n: int) -> Pair:
    """W1 with one observer attached: the cost of observability per transition. The floor
    is W1 without an observer, so the ratio is the price of attaching one (W1 itself shows
    that an unobserved workflow pays nothing for the feature)."""
    states = enum.Enum("Chain", [f"S{i}" for i in range(n + 1)])  # type: ignore[misc]
    members: list[enum.Enum] = list(states)
    handlers: Handlers = {a: Goto(b) for a, b in itertools.pairwise(members)}
    res: cano.Resources[Any] = cano.Resources.empty()
    plain = chain_workflow(members, handlers, res)
    observed = chain_workflow(members, handlers, res).with_observer(_CountingObserver())
    first, end = members[0], members[-1]
    loop = Loop()

    def runner(wf: cano.Workflow[Any]) -> Callable[[], float]:
        async def run() -> float:
            t0 = time.perf_counter_ns()
            out = await wf.orchestrate(first)
            assert out is end, out
            return (time.perf_counter_ns() - t0) / n

        return lambda: loop.run(run())

    return Pair(runner(observed), runner(plain), loop.close)


# --------------------------------------------------------------------------------------------
# W2: N separate runs of a 3-state workflow
# --------------------------------------------------------------------------------------------


def setup_w2(n: int) -> Pair:
    handlers: Handlers = {A: Goto(B), B: Goto(C)}
    res: cano.Resources[Any] = cano.Resources.empty()
    wf = chain_workflow([A, B, C], handlers, res)
    loop = Loop()

    async def run_cano() -> float:
        orchestrate = wf.orchestrate
        t0 = time.perf_counter()
        for _ in range(n):
            await orchestrate(A)
        return n / (time.perf_counter() - t0)

    async def run_floor() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await floor_walk(handlers, A, C, res)
        return n / (time.perf_counter() - t0)

    return Pair(lambda: loop.run(run_cano()), lambda: loop.run(run_floor()), loop.close)


# --------------------------------------------------------------------------------------------
# W3: one state splitting into N no-op branches, join ALL
# --------------------------------------------------------------------------------------------

Fan = enum.Enum("Fan", ["SPLIT", "DONE"])
SPLIT, DONE = Fan.SPLIT, Fan.DONE


def setup_w3(n: int) -> Pair:
    # N distinct task objects (the usual shape: one per source / shard / item), each a
    # no-op with the default TaskConfig, so every branch arms its own retry loop.
    branches = [Goto(DONE) for _ in range(n)]
    res: cano.Resources[Any] = cano.Resources.empty()
    wf: cano.Workflow[enum.Enum] = cano.Workflow(res)
    wf.register_split(SPLIT, branches, cano.JoinConfig(cano.JoinStrategy.ALL, DONE))
    wf.add_exit_state(DONE).validate()
    loop = Loop()

    async def run_cano() -> float:
        t0 = time.perf_counter_ns()
        out = await wf.orchestrate(SPLIT)
        dt = time.perf_counter_ns() - t0
        assert out is DONE, out
        return dt / 1e6

    async def run_floor() -> float:
        # The floor: every branch's coroutine gathered (one asyncio task each), all must
        # succeed, then the join state.
        t0 = time.perf_counter_ns()
        results = await asyncio.gather(*[b.run(res) for b in branches])
        dt = time.perf_counter_ns() - t0
        assert len(results) == n and results[-1] is DONE
        return dt / 1e6

    return Pair(lambda: loop.run(run_cano()), lambda: loop.run(run_floor()), loop.close)


# --------------------------------------------------------------------------------------------
# W4 / W4c: durable checkpoints on RedbCheckpointStore(durability="immediate")
# --------------------------------------------------------------------------------------------

RECORD = b"r" * 64  # about the size of one state-entry row
SQLITE_FLOOR = "sqlite3 INSERT (journal DELETE, synchronous FULL)"


def bench_dir() -> str:
    """A fresh directory on the disk being measured: ``$CANO_BENCH_DIR`` or the temp dir."""
    return tempfile.mkdtemp(prefix="cano-bench-", dir=os.environ.get("CANO_BENCH_DIR"))


def fsync_seconds(path: str, count: int) -> float:
    """The raw durability floor: seconds per (write one small record + ``os.fsync``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        for _ in range(count):
            os.write(fd, RECORD)
            os.fsync(fd)
        return (time.perf_counter() - t0) / count
    finally:
        os.close(fd)


def sqlite_floor(path: str, count: int) -> tuple[Callable[[], float], Callable[[], None]]:
    """µs per committed INSERT of one checkpoint row (autocommit: a transaction each)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS checkpoints (workflow_id TEXT, sequence INTEGER, "
        "state TEXT, task_id TEXT, kind INTEGER, output BLOB, workflow_version INTEGER, "
        "PRIMARY KEY (workflow_id, sequence))"
    )
    reps = itertools.count()

    def run() -> float:
        wid = f"floor-{next(reps)}"
        insert = "INSERT INTO checkpoints VALUES (?, ?, ?, 'Goto', 0, NULL, 0)"
        t0 = time.perf_counter_ns()
        for i in range(count):
            conn.execute(insert, (wid, i, f"S{i}"))
        dt = time.perf_counter_ns() - t0
        conn.execute("DELETE FROM checkpoints WHERE workflow_id = ?", (wid,))  # not timed
        return dt / count / 1_000

    return run, conn.close


def durable_chain(name: str, n: int, store: Any) -> cano.Workflow[enum.Enum]:
    """N no-op states (default TaskConfig) plus an exit state, checkpointed in ``store``."""
    states = enum.Enum(name, [f"S{i}" for i in range(n + 1)])  # type: ignore[misc]
    members: list[enum.Enum] = list(states)
    handlers: Handlers = {a: Goto(b) for a, b in itertools.pairwise(members)}
    wf = chain_workflow(members, handlers, cano.Resources.empty())
    wf.with_checkpoint_store(store)
    wf.validate()
    return wf


def durable_run_us(name: str, n: int, store: Any) -> Callable[[], Coroutine[Any, Any, float]]:
    """One repetition of W4/W10: a fresh run of ``n`` durable states, in µs per transition."""
    wf = durable_chain(name, n, store)
    first, end = min(wf.registered_states, key=lambda s: s.value), next(iter(wf.exit_states))
    reps = itertools.count()

    async def run() -> float:
        wid = f"{name}-{next(reps)}"
        t0 = time.perf_counter_ns()
        out = await wf.orchestrate(first, workflow_id=wid)
        dt = time.perf_counter_ns() - t0
        assert out is end, out
        return dt / n / 1_000

    return run


def setup_w4(n: int) -> Pair:
    tmp = bench_dir()
    store = cano.RedbCheckpointStore(os.path.join(tmp, "w4.redb"), durability="immediate")
    run_cano = durable_run_us("Durable", n, store)
    loop = Loop()

    fsync_path = os.path.join(tmp, "fsync.bin")
    sqlite_run, sqlite_close = sqlite_floor(os.path.join(tmp, "w4.sqlite"), n)

    def close() -> None:
        store.close()
        loop.close()
        sqlite_close()
        shutil.rmtree(tmp, ignore_errors=True)

    return Pair(
        lambda: loop.run(run_cano()),
        lambda: fsync_seconds(fsync_path, n) * 1e6,
        close,
        extra_floors={SQLITE_FLOOR: sqlite_run},
        note=(
            f"floor = one os.fsync after a {len(RECORD)}-byte write ({n:,} in a row), in the "
            f"same directory as the redb and sqlite files (under {os.path.dirname(tmp)})"
        ),
    )


W4C_SHAPES = {10_000: (100, 100), 1_000: (20, 50)}  # transitions -> (runs, states per run)


def setup_w4c(n: int) -> Pair:
    runs, per_run = W4C_SHAPES.get(n, (100, max(1, n // 100)))
    tmp = bench_dir()
    store = cano.RedbCheckpointStore(os.path.join(tmp, "w4c.redb"), durability="immediate")
    wf = durable_chain("Concurrent", per_run, store)
    first, end = min(wf.registered_states, key=lambda s: s.value), next(iter(wf.exit_states))
    loop = Loop()
    reps = itertools.count()
    fsync_path = os.path.join(tmp, "fsync.bin")
    fsyncs = min(max(runs * per_run // 20, 200), 1_000)

    async def run_cano() -> float:
        k = next(reps)
        t0 = time.perf_counter()
        outs = await asyncio.gather(
            *(wf.orchestrate(first, workflow_id=f"w4c-{k}-{i}") for i in range(runs))
        )
        dt = time.perf_counter() - t0
        assert all(out is end for out in outs), outs
        return runs * per_run / dt

    def close() -> None:
        store.close()
        loop.close()
        shutil.rmtree(tmp, ignore_errors=True)

    return Pair(
        lambda: loop.run(run_cano()),
        lambda: 1 / fsync_seconds(fsync_path, fsyncs),
        close,
        note=(
            f"{runs} concurrent runs x {per_run} durable states on one store; floor = "
            f"os.fsync calls/s ({len(RECORD)}-byte write + fsync, {fsyncs} in a row, same "
            f"directory as the store, under {os.path.dirname(tmp)})"
        ),
    )


# --------------------------------------------------------------------------------------------
# W5: N calls of a no-op function guarded by a CircuitBreaker (decorator form)
# --------------------------------------------------------------------------------------------


def noop() -> None:
    return None


class ClosedCheck:
    """The floor's breaker state: a failure counter and an open flag, nothing else."""

    __slots__ = ("failures", "open")

    def __init__(self) -> None:
        self.failures = 0
        self.open = False


def setup_w5(n: int) -> Pair:
    guarded = cano.CircuitBreaker()(noop)
    state = ClosedCheck()
    threshold = 5

    def run_cano() -> float:
        call = guarded
        t0 = time.perf_counter_ns()
        for _ in range(n):
            call()
        return (time.perf_counter_ns() - t0) / n

    def run_floor() -> float:
        # The minimal hand-written closed-state check, inlined at the call site: no wrapper
        # function, no permit, no clock, no thread safety.
        st, fn = state, noop
        t0 = time.perf_counter_ns()
        for _ in range(n):
            if st.open:
                raise cano.CircuitOpenError("open")
            try:
                fn()
            except Exception:
                st.failures += 1
                if st.failures >= threshold:
                    st.open = True
                raise
            st.failures = 0
        return (time.perf_counter_ns() - t0) / n

    return Pair(run_cano, run_floor)


# --------------------------------------------------------------------------------------------
# W6: a BatchTask over N no-op async items, concurrency 64
# --------------------------------------------------------------------------------------------

W6_CONCURRENCY = 64


class NoopBatch(cano.BatchTask[enum.Enum, int, int]):
    """Loads a prebuilt list, returns each item unchanged, then moves to ``nxt``."""

    def __init__(self, items: list[int], nxt: enum.Enum) -> None:
        self.items = items
        self.nxt = nxt

    def concurrency(self) -> int:
        return W6_CONCURRENCY

    async def load(self, res: cano.Resources[Any]) -> list[int]:
        return self.items

    async def process_item(self, item: int) -> int:
        return item

    async def finish(
        self, res: cano.Resources[Any], results: list[int | BaseException]
    ) -> enum.Enum:
        assert len(results) == len(self.items)
        return self.nxt


def setup_w6(n: int) -> Pair:
    batch = NoopBatch(list(range(n)), B)
    res: cano.Resources[Any] = cano.Resources.empty()
    wf: cano.Workflow[enum.Enum] = cano.Workflow(res)
    wf.register(A, batch).add_exit_state(B).validate()
    loop = Loop()

    async def run_cano() -> float:
        t0 = time.perf_counter()
        out = await wf.orchestrate(A)
        dt = time.perf_counter() - t0
        assert out is B, out
        return n / dt

    async def run_floor() -> float:
        # The floor: load, one coroutine per item behind a Semaphore, gather, finish.
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(W6_CONCURRENCY)
        process = batch.process_item

        async def one(item: int) -> int:
            async with sem:
                return await process(item)

        items = await batch.load(res)
        results: list[int | BaseException] = list(await asyncio.gather(*map(one, items)))
        out = await batch.finish(res, results)
        dt = time.perf_counter() - t0
        assert out is B, out
        return n / dt

    return Pair(lambda: loop.run(run_cano()), lambda: loop.run(run_floor()), loop.close)


# --------------------------------------------------------------------------------------------
# W7: N runs parked at once on one asyncio.Event (RSS per run, measured in child processes)
# --------------------------------------------------------------------------------------------

CHILD_FLAG = "--_w7-child"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def w7_child(mode: str, n: int) -> float:
    """Launches n runs (or floor tasks), waits until all are parked, returns RSS growth / n."""
    event = asyncio.Event()
    count = 0
    all_parked = asyncio.get_running_loop().create_future()
    target = 0

    def parked() -> None:
        nonlocal count
        count += 1
        if count == target and not all_parked.done():
            all_parked.set_result(None)

    handlers: Handlers = {A: Goto(B), B: ParkThenGoto(C, event, parked)}
    res: cano.Resources[Any] = cano.Resources.empty()
    wf = chain_workflow([A, B, C], handlers, res)

    def spawn() -> asyncio.Task[enum.Enum]:
        if mode == "cano":
            return asyncio.create_task(wf.orchestrate(A))
        return asyncio.create_task(floor_walk(handlers, A, C, res))

    async def round_(k: int) -> float:
        nonlocal count, target, all_parked
        count, target = 0, k
        all_parked = asyncio.get_running_loop().create_future()
        event.clear()
        gc.collect()
        before = rss_bytes()
        tasks = [spawn() for _ in range(k)]
        await all_parked
        gc.collect()
        after = rss_bytes()
        event.set()
        done = await asyncio.gather(*tasks)
        assert all(s is C for s in done)
        del tasks, done
        return (after - before) / k

    # Warm-up with few runs: enough for lazy inits and code paths, too few to leave freed
    # memory behind that the measured round would reuse (which would hide its real cost).
    await round_(min(n, 50))
    return await round_(n)


def w7_measure(mode: str, n: int) -> float:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), CHILD_FLAG, mode, str(n)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def setup_w7(n: int) -> Pair:
    return Pair(lambda: w7_measure("cano", n), lambda: w7_measure("floor", n))


# --------------------------------------------------------------------------------------------
# W9: N runs of 3 durable states through Client.enqueue + Worker, against the same runs
# started with orchestrate directly (same store kind, same concurrency); W9 on SQLite, W9r on
# redb
# --------------------------------------------------------------------------------------------

W9_CONCURRENCY = 16


def w9_workflow(name: str) -> cano.Workflow[enum.Enum]:
    states = enum.Enum(name, ["S0", "S1", "S2", "END"])  # type: ignore[misc]
    members: list[enum.Enum] = list(states)
    handlers: Handlers = {a: Goto(b) for a, b in itertools.pairwise(members)}
    wf = chain_workflow(members, handlers, cano.Resources.empty())
    return wf.with_name(name)


def setup_w9(n: int, kind: str = "sqlite") -> Pair:
    tmp = bench_dir()
    reps = itertools.count()
    loop = Loop()

    def open_store(name: str) -> Any:
        if kind == "redb":
            return cano.RedbCheckpointStore(os.path.join(tmp, f"{name}.redb"))
        return cano.SqliteCheckpointStore(os.path.join(tmp, f"{name}.db"))

    async def run_cano() -> float:
        k = next(reps)
        async with open_store(f"w9-cano-{k}") as store:
            wf = w9_workflow("Queued")
            first = min(wf.registered_states, key=lambda s: s.value)
            client = cano.Client(store)
            ids = [f"q-{i}" for i in range(n)]
            t0 = time.time()
            # Enqueued concurrently, as a producer would: the store commits them in groups.
            await asyncio.gather(*(client.enqueue("Queued", first, workflow_id=i) for i in ids))
            unfinished = [cano.RunStatus.PENDING, cano.RunStatus.RUNNING]
            async with cano.Worker(
                store,
                [wf],
                concurrency=W9_CONCURRENCY,  # default lease and poll_interval
            ):
                while await client.list(status=unfinished, limit=1):
                    await asyncio.sleep(0.1)  # the end is read from the records below
            # The end is when the last run finished (its record says), not when we noticed.
            done = await client.list(status=cano.RunStatus.COMPLETED, limit=n)
            assert len(done) == n
            dt = max(i.finished_at.timestamp() for i in done if i.finished_at) - t0
        return n / dt

    async def run_floor() -> float:
        k = next(reps)
        async with open_store(f"w9-direct-{k}") as store:
            wf = w9_workflow("Direct").with_checkpoint_store(store)
            first = min(wf.registered_states, key=lambda s: s.value)
            gate = asyncio.Semaphore(W9_CONCURRENCY)

            async def one(i: int) -> None:
                async with gate:
                    await wf.orchestrate(first, workflow_id=f"d-{i}")

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            dt = time.perf_counter() - t0
        return n / dt

    def close() -> None:
        loop.close()
        shutil.rmtree(tmp, ignore_errors=True)

    return Pair(
        lambda: loop.run(run_cano()),
        lambda: loop.run(run_floor()),
        close,
        note=(
            f"{n:,} runs of 3 durable states on {kind} "
            f"(immediate): enqueue all, then one Worker (concurrency {W9_CONCURRENCY}) until "
            f"the last completes; floor = the same runs through orchestrate, {W9_CONCURRENCY} "
            f"at a time, on a {kind} store (which keeps their records too)."
        ),
    )


def setup_w9_redb(n: int) -> Pair:
    return setup_w9(n, "redb")


# --------------------------------------------------------------------------------------------
# W10: PostgreSQL. Durable transitions of one run against one committed INSERT on the same
# server; and fleet throughput (1, 2, 4 worker processes), reported in the note
# --------------------------------------------------------------------------------------------

W10_FLAG = "--_w10-worker"
W10_FLEET_RUNS = 1_000


def pg_dsn() -> str:
    """``$CANO_PG_DSN``, or a throwaway server started by ``tests/pg_server.py``."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import pg_server

    dsn = pg_server.test_dsn()
    if dsn is None:
        raise SystemExit("W10 needs PostgreSQL: apt-get install -y postgresql, or CANO_PG_DSN")
    return dsn


def w10_worker(dsn: str, schema: str, concurrency: int) -> None:
    """A worker process of the fleet measurement: serves until SIGTERM."""
    from cano.stores.postgres import PostgresCheckpointStore

    async def serve() -> None:
        async with PostgresCheckpointStore(dsn, schema=schema) as store:
            worker = cano.Worker(store, [w9_workflow("Fleet")], concurrency=concurrency)
            print("serving", flush=True)
            await worker.run()

    asyncio.run(serve())


async def w10_fleet(dsn: str, schema: str, workers: int, n: int) -> float:
    """Runs/s of ``n`` enqueued 3-state runs served by ``workers`` processes."""
    import signal

    from cano.stores.postgres import PostgresCheckpointStore

    async with PostgresCheckpointStore(dsn, schema=schema) as store:
        client = cano.Client(store)
        command = [sys.executable, os.path.abspath(__file__), W10_FLAG, dsn, schema, "16"]
        procs = [
            subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(workers)
        ]
        try:
            for p in procs:
                assert p.stdout is not None and p.stdout.readline() == "serving\n"
            first = min(w9_workflow("Fleet").registered_states, key=lambda s: s.value)
            t0 = time.time()
            await asyncio.gather(
                *(client.enqueue("Fleet", first, workflow_id=f"f{workers}-{i}") for i in range(n))
            )
            unfinished = [cano.RunStatus.PENDING, cano.RunStatus.RUNNING]
            while await client.list(status=unfinished, limit=1):
                await asyncio.sleep(0.05)
            done = await client.list(status=cano.RunStatus.COMPLETED, limit=n + 1)
            assert len([i for i in done if i.workflow_id.startswith(f"f{workers}-")]) == n
            end = max(i.finished_at.timestamp() for i in done if i.finished_at)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(timeout=60)
        return n / (end - t0)


def setup_w10(n: int) -> Pair:
    import psycopg
    from cano.stores.postgres import PostgresCheckpointStore

    dsn = pg_dsn()
    schema = f"bench_{os.getpid()}"
    loop = Loop()
    store = PostgresCheckpointStore(dsn, schema=schema)
    loop.run(store.open())
    run_cano = durable_run_us("Postgres", n, store)
    reps = itertools.count()
    conn = loop.run(psycopg.AsyncConnection.connect(dsn, autocommit=True))
    table = f'"{schema}".floor'
    loop.run(conn.execute(f"CREATE TABLE {table} (id text, seq bigint, body bytea)"))

    async def run_floor() -> float:
        rep = next(reps)
        t0 = time.perf_counter_ns()
        for i in range(n):  # one committed INSERT per row (synchronous_commit on)
            await conn.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)", (f"f{rep}", i, RECORD))
        return (time.perf_counter_ns() - t0) / n / 1_000

    fleet = {k: loop.run(w10_fleet(dsn, schema, k, W10_FLEET_RUNS)) for k in (1, 2, 4)}

    def close() -> None:
        loop.run(conn.execute(f'DROP SCHEMA "{schema}" CASCADE'))
        loop.run(conn.close())
        loop.run(store.close())
        loop.close()

    shown = ", ".join(f"{k} worker(s): {v:,.0f} runs/s" for k, v in fleet.items())
    return Pair(
        lambda: loop.run(run_cano()),
        lambda: loop.run(run_floor()),
        close,
        note=(
            f"floor = one committed INSERT (autocommit, synchronous_commit on) of a "
            f"{len(RECORD)}-byte row, {n:,} in a row, on the same loopback server. Fleet: "
            f"{W10_FLEET_RUNS:,} enqueued runs of 3 durable states, served by worker "
            f"processes (concurrency 16 each): {shown} (2 cores shared with the server)."
        ),
    )


# --------------------------------------------------------------------------------------------
# Registry (id -> workload). Add W3..W6 here.
# --------------------------------------------------------------------------------------------

WORKLOADS: dict[str, Workload] = {
    w.id: w
    for w in [
        Workload(
            "W1",
            "one run, {n:,} no-op states",
            "ns/transition",
            "lower",
            1.0,
            setup_w1,
            n=10_000,
            n_quick=2_000,
        ),
        Workload(
            "W1o",
            "W1 with an observer (floor: W1 without one)",
            "ns/transition",
            "lower",
            3.0,
            setup_w1o,
            n=10_000,
            n_quick=2_000,
        ),
        Workload(
            "W2",
            "{n:,} runs of a 3-state flow",
            "runs/s",
            "higher",
            0.33,
            setup_w2,
            n=10_000,
            n_quick=2_000,
        ),
        Workload(
            "W3",
            "one state split into {n:,} no-op branches, join ALL",
            "ms/fan-out",
            "lower",
            1.5,
            setup_w3,
            n=1_000,
            n_quick=200,
        ),
        Workload(
            "W4",
            "one run, {n:,} durable states (redb, immediate)",
            "µs/checkpointed transition",
            "lower",
            1.5,
            setup_w4,
            n=1_000,
            n_quick=200,
        ),
        Workload(
            "W4c",
            "{n:,} durable transitions, concurrent runs, one store",
            "checkpointed transitions/s",
            "higher",
            40.0,
            setup_w4c,
            n=10_000,
            n_quick=1_000,
        ),
        Workload(
            "W5",
            "{n:,} calls through @CircuitBreaker",
            "ns/call",
            "lower",
            4.0,
            setup_w5,
            n=1_000_000,
            n_quick=100_000,
        ),
        Workload(
            "W6",
            "BatchTask, {n:,} no-op items, concurrency 64",
            "items/s",
            "higher",
            1.0,
            setup_w6,
            n=10_000,
            n_quick=2_000,
        ),
        Workload(
            "W7",
            "{n:,} runs parked on one Event",
            "bytes/run",
            "lower",
            1.5,
            setup_w7,
            n=10_000,
            n_quick=2_000,
        ),
        Workload(
            "W9",
            "{n:,} runs of 3 durable states via enqueue + Worker (SQLite)",
            "runs/s",
            "higher",
            0.7,
            setup_w9,
            n=1_000,
            n_quick=200,
        ),
        Workload(
            "W10",
            "one run, {n:,} durable states (PostgreSQL)",
            "µs/checkpointed transition",
            "lower",
            1.5,
            setup_w10,
            n=1_000,
            n_quick=200,
        ),
        Workload(
            "W9r",
            "{n:,} runs of 3 durable states via enqueue + Worker (redb)",
            "runs/s",
            "higher",
            0.7,
            setup_w9_redb,
            n=1_000,
            n_quick=200,
        ),
    ]
}


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [W10_FLAG]:
        w10_worker(argv[1], argv[2], int(argv[3]))
        return 0
    if argv[:1] == [CHILD_FLAG]:
        mode, n = argv[1], int(argv[2])
        print(asyncio.run(w7_child(mode, n)))
        return 0

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer items and 3 reps (< 30 s)")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    p.add_argument("--only", metavar="IDS", help="comma-separated workload ids, e.g. W1,W2")
    p.add_argument("--reps", type=int, help="repetitions per workload (default 5, quick 3)")
    args = p.parse_args(argv)

    ids = list(WORKLOADS)
    if args.only:
        by_upper = {wid.upper(): wid for wid in WORKLOADS}  # "w4c" and "W4C" mean W4c
        ids = [by_upper.get(s.strip().upper(), s.strip()) for s in args.only.split(",")]
        ids = [i for i in ids if i]
        unknown = [i for i in ids if i not in WORKLOADS]
        if unknown:
            p.error(f"unknown workload id(s): {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    reps = args.reps or (3 if args.quick else 5)

    info = machine_info()
    print(
        f"cano {info['cano']} · {info['python']} · {info['platform']} · "
        f"{info['cpu_count']} CPUs · {reps} reps{' · quick' if args.quick else ''}"
    )
    print("ratios decide; absolute times are context (floor measured in the same run).")
    if args.quick:
        print("quick mode: fewer items and reps; numbers are indicative only.")
    print()

    results: list[Result] = []
    t0 = time.perf_counter()
    for wid in ids:
        results.append(measure(WORKLOADS[wid], args.quick, reps))
    elapsed = time.perf_counter() - t0

    print(table(results))
    for r in results:
        if r.note:
            print(f"\n{r.id}: {r.note}")
        for name, values in r.extra_floors.items():
            print(
                f"{r.id} floor {name}: median {fmt(statistics.median(values))}, "
                f"best {fmt(r.best(values))} {r.unit}; cano is "
                f"{r.cano_median / statistics.median(values):.2f}x of it"
            )
    print(f"\n{elapsed:.1f} s total")
    if args.json:
        payload = {
            "machine": info,
            "quick": args.quick,
            "reps": reps,
            "results": [
                {
                    **asdict(r),
                    "cano_median": r.cano_median,
                    "cano_best": r.best(r.cano),
                    "floor_median": r.floor_median,
                    "floor_best": r.best(r.floor),
                    "ratio": r.ratio,
                    "pass": r.passed,
                }
                for r in results
            ],
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
