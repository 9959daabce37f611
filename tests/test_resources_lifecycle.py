"""Resources as seen through workflow runs: setup before the first state, teardown after the
run whatever its outcome, shared setup across overlapping runs, typed lookups in tasks, and
the MemoryStore shared between tasks."""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any

import cano
import pytest


class S(enum.Enum):
    A = enum.auto()
    B = enum.auto()
    DONE = enum.auto()


MINIMAL = cano.TaskConfig.minimal()


class Tracked:
    """A lifecycle resource writing its setup and teardown into a shared journal."""

    def __init__(
        self,
        name: str,
        journal: list[str],
        *,
        fail_setup: bool = False,
        fail_teardown: bool = False,
        setup_gate: asyncio.Event | None = None,
    ) -> None:
        self.name = name
        self.journal = journal
        self.fail_setup = fail_setup
        self.fail_teardown = fail_teardown
        self.setup_gate = setup_gate
        self.ready = False
        self.setups = 0
        self.teardowns = 0

    async def setup(self) -> None:
        self.setups += 1
        self.journal.append(f"setup {self.name}")
        if self.setup_gate is not None:
            await self.setup_gate.wait()
        if self.fail_setup:
            raise ConnectionError(f"{self.name} unreachable")
        self.ready = True

    async def teardown(self) -> None:
        self.teardowns += 1
        self.journal.append(f"teardown {self.name}")
        self.ready = False
        if self.fail_teardown:
            raise RuntimeError(f"{self.name} teardown failed")


def logging_task(journal: list[str], name: str, nxt: S, res_key: str | None = None) -> Any:
    """A task that journals its run and checks that ``res_key`` (if any) is set up."""

    @cano.task(name=name, config=MINIMAL)
    async def run(res: cano.Resources) -> S:
        if res_key is not None:
            assert res.get(res_key, Tracked).ready
        journal.append(f"task {name}")
        return nxt

    return run


# --------------------------------------------------------------------------------------------
# order of setup, tasks and teardown


async def test_setup_in_insertion_order_before_the_first_state_teardown_in_reverse() -> None:
    journal: list[str] = []
    res = (
        cano.Resources()
        .insert("db", Tracked("db", journal))
        .insert("config", {"plain": "value"})
        .insert("cache", Tracked("cache", journal))
        .insert("queue", Tracked("queue", journal))
    )
    wf = (
        cano.Workflow(res)
        .register(S.A, logging_task(journal, "a", S.B, "db"))
        .register(S.B, logging_task(journal, "b", S.DONE, "queue"))
        .add_exit_state(S.DONE)
    )
    assert await wf.orchestrate(S.A) is S.DONE
    assert journal == [
        "setup db",
        "setup cache",
        "setup queue",
        "task a",
        "task b",
        "teardown queue",
        "teardown cache",
        "teardown db",
    ]


async def test_every_run_sets_up_and_tears_down() -> None:
    journal: list[str] = []
    res = cano.Resources().insert("db", Tracked("db", journal))
    wf = cano.Workflow(res).register(S.A, logging_task(journal, "a", S.DONE)).add_exit_state(S.DONE)
    await wf.orchestrate(S.A)
    await wf.orchestrate(S.A)
    assert journal == ["setup db", "task a", "teardown db"] * 2


async def test_resources_are_set_up_even_when_starting_at_an_exit_state() -> None:
    journal: list[str] = []
    db = Tracked("db", journal)
    wf = (
        cano.Workflow(cano.Resources().insert("db", db))
        .register(S.A, logging_task(journal, "a", S.DONE))
        .add_exit_state(S.DONE)
    )
    assert await wf.orchestrate(S.DONE) is S.DONE
    assert journal == ["setup db", "teardown db"]


async def test_teardown_after_a_task_failure() -> None:
    journal: list[str] = []
    res = cano.Resources().insert("a", Tracked("a", journal)).insert("b", Tracked("b", journal))

    @cano.task(config=MINIMAL)
    async def boom() -> S:
        journal.append("task boom")
        raise RuntimeError("boom")

    wf = cano.Workflow(res).register(S.A, boom).add_exit_state(S.DONE)
    with pytest.raises(cano.TaskError):
        await wf.orchestrate(S.A)
    assert journal == ["setup a", "setup b", "task boom", "teardown b", "teardown a"]


async def test_teardown_after_retries_are_exhausted() -> None:
    journal: list[str] = []
    res = cano.Resources().insert("a", Tracked("a", journal))

    @cano.task(config=cano.TaskConfig().with_fixed_retry(2, 0.001))
    async def boom() -> S:
        journal.append("attempt")
        raise RuntimeError("boom")

    wf = cano.Workflow(res).register(S.A, boom).add_exit_state(S.DONE)
    with pytest.raises(cano.RetryExhaustedError):
        await wf.orchestrate(S.A)
    assert journal == ["setup a", "attempt", "attempt", "attempt", "teardown a"]


async def test_teardown_after_a_workflow_error() -> None:
    journal: list[str] = []
    res = cano.Resources().insert("a", Tracked("a", journal))
    wf = cano.Workflow(res).register(S.A, logging_task(journal, "a", S.B)).add_exit_state(S.DONE)
    with pytest.raises(cano.WorkflowError):
        await wf.orchestrate(S.A)
    assert journal == ["setup a", "task a", "teardown a"]


async def test_teardown_after_cancellation_with_a_token() -> None:
    journal: list[str] = []
    res = cano.Resources().insert("a", Tracked("a", journal)).insert("b", Tracked("b", journal))
    started = asyncio.Event()

    @cano.task(config=MINIMAL)
    async def hang() -> S:
        journal.append("task hang")
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            journal.append("hang finally")
        return S.DONE

    token, handle = cano.CancellationToken.new()
    wf = cano.Workflow(res).register(S.A, hang).add_exit_state(S.DONE)
    run = asyncio.create_task(wf.orchestrate(S.A, cancel=token))
    await started.wait()
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await run
    assert journal == [
        "setup a",
        "setup b",
        "task hang",
        "hang finally",
        "teardown b",
        "teardown a",
    ]


async def test_teardown_after_the_asyncio_task_is_cancelled() -> None:
    journal: list[str] = []
    res = cano.Resources().insert("a", Tracked("a", journal))
    started = asyncio.Event()

    @cano.task(config=MINIMAL)
    async def hang() -> S:
        journal.append("task hang")
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            journal.append("hang finally")
        return S.DONE

    wf = cano.Workflow(res).register(S.A, hang).add_exit_state(S.DONE)
    run = asyncio.create_task(wf.orchestrate(S.A))
    await started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert journal == ["setup a", "task hang", "hang finally", "teardown a"]


async def test_async_teardown_completes_after_the_asyncio_task_is_cancelled() -> None:
    journal: list[str] = []
    started = asyncio.Event()

    class Slow:
        async def setup(self) -> None:
            journal.append("setup")

        async def teardown(self) -> None:
            journal.append("teardown begins")
            await asyncio.sleep(0.01)
            journal.append("teardown ends")

    @cano.task(config=MINIMAL)
    async def hang() -> S:
        started.set()
        await asyncio.Event().wait()
        return S.DONE

    wf = cano.Workflow(cano.Resources().insert("slow", Slow())).register(S.A, hang)
    wf.add_exit_state(S.DONE)
    run = asyncio.create_task(wf.orchestrate(S.A))
    await started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert journal == ["setup", "teardown begins", "teardown ends"]


async def test_cancelling_the_asyncio_task_during_setup_rolls_back_and_runs_no_task() -> None:
    journal: list[str] = []
    gate = asyncio.Event()
    res = (
        cano.Resources()
        .insert("a", Tracked("a", journal))
        .insert("b", Tracked("b", journal, setup_gate=gate))
    )
    wf = cano.Workflow(res).register(S.A, logging_task(journal, "a", S.DONE)).add_exit_state(S.DONE)
    run = asyncio.create_task(wf.orchestrate(S.A))
    while "setup b" not in journal:
        await asyncio.sleep(0.01)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert "task a" not in journal
    assert journal[:2] == ["setup a", "setup b"]
    assert "teardown a" in journal
    assert journal.index("teardown a") == len(journal) - 1


async def test_token_cancelled_during_setup_runs_no_task_and_tears_down() -> None:
    journal: list[str] = []
    gate = asyncio.Event()
    res = cano.Resources().insert("a", Tracked("a", journal, setup_gate=gate))
    wf = cano.Workflow(res).register(S.A, logging_task(journal, "a", S.DONE)).add_exit_state(S.DONE)
    token, handle = cano.CancellationToken.new()
    run = asyncio.create_task(wf.orchestrate(S.A, cancel=token))
    while "setup a" not in journal:
        await asyncio.sleep(0.01)
    handle.cancel()
    gate.set()
    with pytest.raises(cano.WorkflowCancelledError):
        await run
    assert journal == ["setup a", "teardown a"]


async def test_teardown_after_a_total_timeout() -> None:
    journal: list[str] = []
    res = cano.Resources().insert("a", Tracked("a", journal))

    @cano.task(config=MINIMAL)
    async def hang() -> S:
        journal.append("task hang")
        await asyncio.Event().wait()
        return S.DONE

    wf = cano.Workflow(res).register(S.A, hang).add_exit_state(S.DONE).with_total_timeout(0.05)
    with pytest.raises(cano.WorkflowTimeoutError):
        await wf.orchestrate(S.A)
    assert journal == ["setup a", "task hang", "teardown a"]


async def test_pre_cancelled_run_still_sets_up_and_tears_down_but_runs_no_task() -> None:
    journal: list[str] = []
    res = cano.Resources().insert("a", Tracked("a", journal))
    token, handle = cano.CancellationToken.new()
    handle.cancel()
    wf = cano.Workflow(res).register(S.A, logging_task(journal, "a", S.DONE)).add_exit_state(S.DONE)
    with pytest.raises(cano.WorkflowCancelledError):
        await wf.orchestrate(S.A, cancel=token)
    assert journal == ["setup a", "teardown a"]


async def test_teardown_errors_are_logged_not_raised_and_the_rest_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal: list[str] = []
    res = (
        cano.Resources()
        .insert("a", Tracked("a", journal))
        .insert("b", Tracked("b", journal, fail_teardown=True))
    )
    wf = cano.Workflow(res).register(S.A, logging_task(journal, "a", S.DONE)).add_exit_state(S.DONE)
    with caplog.at_level(logging.ERROR, logger="cano"):
        assert await wf.orchestrate(S.A) is S.DONE
    assert journal == ["setup a", "setup b", "task a", "teardown b", "teardown a"]
    assert any("b teardown failed" in r.getMessage() or r.exc_info for r in caplog.records)


async def test_teardown_error_does_not_mask_the_task_error() -> None:
    journal: list[str] = []
    res = cano.Resources().insert("a", Tracked("a", journal, fail_teardown=True))

    @cano.task(config=MINIMAL)
    async def boom() -> S:
        raise LookupError("the real problem")

    wf = cano.Workflow(res).register(S.A, boom).add_exit_state(S.DONE)
    with pytest.raises(cano.TaskError) as info:
        await wf.orchestrate(S.A)
    assert isinstance(info.value.__cause__, LookupError)
    assert journal == ["setup a", "teardown a"]


# --------------------------------------------------------------------------------------------
# setup failures and validation


async def test_setup_failure_fails_the_run_with_that_error_and_no_task_runs() -> None:
    journal: list[str] = []
    res = (
        cano.Resources()
        .insert("a", Tracked("a", journal))
        .insert("b", Tracked("b", journal, fail_setup=True))
        .insert("c", Tracked("c", journal))
    )
    wf = cano.Workflow(res).register(S.A, logging_task(journal, "a", S.DONE)).add_exit_state(S.DONE)
    with pytest.raises(ConnectionError, match="b unreachable"):
        await wf.orchestrate(S.A)
    # no task ran, c was never set up, and what was set up is rolled back
    assert journal == ["setup a", "setup b", "teardown a"]


async def test_setup_failure_reports_no_state_entered() -> None:
    journal: list[str] = []
    entered: list[str] = []

    class Rec(cano.WorkflowObserver):
        def on_state_enter(self, state: str) -> None:
            entered.append(state)

    res = cano.Resources().insert("a", Tracked("a", journal, fail_setup=True))
    wf = (
        cano.Workflow(res)
        .register(S.A, logging_task(journal, "a", S.DONE))
        .add_exit_state(S.DONE)
        .with_observer(Rec())
    )
    with pytest.raises(ConnectionError):
        await wf.orchestrate(S.A)
    assert entered == []


async def test_run_after_a_failed_setup_sets_up_again() -> None:
    journal: list[str] = []
    flaky = Tracked("a", journal, fail_setup=True)
    wf = (
        cano.Workflow(cano.Resources().insert("a", flaky))
        .register(S.A, logging_task(journal, "a", S.DONE, "a"))
        .add_exit_state(S.DONE)
    )
    with pytest.raises(ConnectionError):
        await wf.orchestrate(S.A)
    flaky.fail_setup = False
    journal.clear()
    assert await wf.orchestrate(S.A) is S.DONE
    assert journal == ["setup a", "task a", "teardown a"]


async def test_validation_fails_before_any_setup() -> None:
    journal: list[str] = []
    res = cano.Resources().insert("a", Tracked("a", journal))
    wf = cano.Workflow(res).register(S.A, logging_task(journal, "a", S.DONE))  # no exit state
    with pytest.raises(cano.ConfigurationError):
        await wf.orchestrate(S.A)
    assert journal == []


async def test_bad_initial_state_fails_before_any_setup() -> None:
    journal: list[str] = []
    res = cano.Resources().insert("a", Tracked("a", journal))
    wf = cano.Workflow(res).register(S.A, logging_task(journal, "a", S.DONE)).add_exit_state(S.DONE)
    with pytest.raises(cano.ConfigurationError):
        await wf.orchestrate(S.B)
    assert journal == []


# --------------------------------------------------------------------------------------------
# reference counting across concurrent runs (§13.15)


async def test_overlapping_runs_of_two_workflows_share_one_setup_and_one_teardown() -> None:
    journal: list[str] = []
    db = Tracked("db", journal)
    res = cano.Resources().insert("db", db)
    gates = {"one": asyncio.Event(), "two": asyncio.Event()}
    inside = {"one": asyncio.Event(), "two": asyncio.Event()}

    def waiting(name: str) -> Any:
        @cano.task(name=name, config=MINIMAL)
        async def run(r: cano.Resources) -> S:
            journal.append(f"start {name}")
            inside[name].set()
            await gates[name].wait()
            # the resource must still be usable, whoever finished first
            assert r.get("db", Tracked).ready
            journal.append(f"end {name}")
            return S.DONE

        return run

    wf1 = cano.Workflow(res).register(S.A, waiting("one")).add_exit_state(S.DONE)
    wf2 = cano.Workflow(res).register(S.B, waiting("two")).add_exit_state(S.DONE)

    run1 = asyncio.create_task(wf1.orchestrate(S.A))
    await inside["one"].wait()
    run2 = asyncio.create_task(wf2.orchestrate(S.B))
    await inside["two"].wait()
    assert db.setups == 1

    gates["one"].set()
    assert await run1 is S.DONE
    assert db.teardowns == 0  # run2 still uses it
    assert db.ready

    gates["two"].set()
    assert await run2 is S.DONE
    assert (db.setups, db.teardowns) == (1, 1)
    assert journal == [
        "setup db",
        "start one",
        "start two",
        "end one",
        "end two",
        "teardown db",
    ]


async def test_first_run_finishing_last_tears_down() -> None:
    journal: list[str] = []
    db = Tracked("db", journal)
    res = cano.Resources().insert("db", db)
    gate1, gate2 = asyncio.Event(), asyncio.Event()
    in1, in2 = asyncio.Event(), asyncio.Event()

    async def one(r: cano.Resources) -> S:
        in1.set()
        await gate1.wait()
        assert r.get("db", Tracked).ready
        return S.DONE

    async def two(r: cano.Resources) -> S:
        in2.set()
        await gate2.wait()
        assert r.get("db", Tracked).ready
        return S.DONE

    wf1 = cano.Workflow(res).register(S.A, cano.task(config=MINIMAL)(one)).add_exit_state(S.DONE)
    wf2 = cano.Workflow(res).register(S.A, cano.task(config=MINIMAL)(two)).add_exit_state(S.DONE)
    run1 = asyncio.create_task(wf1.orchestrate(S.A))
    await in1.wait()
    run2 = asyncio.create_task(wf2.orchestrate(S.A))
    await in2.wait()
    gate2.set()
    assert await run2 is S.DONE
    assert db.teardowns == 0
    gate1.set()
    assert await run1 is S.DONE
    assert (db.setups, db.teardowns) == (1, 1)


async def test_a_failing_run_does_not_tear_down_under_a_running_one() -> None:
    journal: list[str] = []
    db = Tracked("db", journal)
    res = cano.Resources().insert("db", db)
    gate, inside = asyncio.Event(), asyncio.Event()

    async def slow(r: cano.Resources) -> S:
        inside.set()
        await gate.wait()
        assert r.get("db", Tracked).ready
        return S.DONE

    async def boom() -> S:
        raise RuntimeError("boom")

    wf_ok = cano.Workflow(res).register(S.A, cano.task(config=MINIMAL)(slow)).add_exit_state(S.DONE)
    wf_bad = (
        cano.Workflow(res).register(S.A, cano.task(config=MINIMAL)(boom)).add_exit_state(S.DONE)
    )
    run = asyncio.create_task(wf_ok.orchestrate(S.A))
    await inside.wait()
    with pytest.raises(cano.TaskError):
        await wf_bad.orchestrate(S.A)
    assert db.teardowns == 0
    assert db.ready
    gate.set()
    assert await run is S.DONE
    assert (db.setups, db.teardowns) == (1, 1)


async def test_concurrent_runs_of_one_workflow_share_one_setup() -> None:
    journal: list[str] = []
    db = Tracked("db", journal)
    gate = asyncio.Event()
    entered = 0

    async def wait(r: cano.Resources) -> S:
        nonlocal entered
        entered += 1
        await gate.wait()
        assert r.get("db", Tracked).ready
        return S.DONE

    wf = (
        cano.Workflow(cano.Resources().insert("db", db))
        .register(S.A, cano.task(config=MINIMAL)(wait))
        .add_exit_state(S.DONE)
    )
    runs = [asyncio.create_task(wf.orchestrate(S.A)) for _ in range(4)]
    while entered < 4:
        await asyncio.sleep(0.01)
    gate.set()
    assert await asyncio.gather(*runs) == [S.DONE] * 4
    assert (db.setups, db.teardowns) == (1, 1)


async def test_run_starting_during_setup_waits_for_it() -> None:
    journal: list[str] = []
    setup_gate = asyncio.Event()
    db = Tracked("db", journal, setup_gate=setup_gate)
    wf = (
        cano.Workflow(cano.Resources().insert("db", db))
        .register(S.A, logging_task(journal, "a", S.DONE, "db"))
        .add_exit_state(S.DONE)
    )
    run1 = asyncio.create_task(wf.orchestrate(S.A))
    while "setup db" not in journal:
        await asyncio.sleep(0.01)
    run2 = asyncio.create_task(wf.orchestrate(S.A))
    await asyncio.sleep(0.05)
    assert "task a" not in journal  # neither run started before setup finished
    setup_gate.set()
    assert await asyncio.gather(run1, run2) == [S.DONE, S.DONE]
    assert (db.setups, db.teardowns) == (1, 1)
    assert journal == ["setup db", "task a", "task a", "teardown db"]


async def test_a_run_after_the_overlap_ended_sets_up_again() -> None:
    journal: list[str] = []
    db = Tracked("db", journal)
    gate = asyncio.Event()
    entered = 0

    async def wait() -> S:
        nonlocal entered
        entered += 1
        await gate.wait()
        return S.DONE

    wf = (
        cano.Workflow(cano.Resources().insert("db", db))
        .register(S.A, cano.task(config=MINIMAL)(wait))
        .add_exit_state(S.DONE)
    )
    runs = [asyncio.create_task(wf.orchestrate(S.A)) for _ in range(2)]
    while entered < 2:
        await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*runs)
    assert (db.setups, db.teardowns) == (1, 1)
    await wf.orchestrate(S.A)
    assert (db.setups, db.teardowns) == (2, 2)
    assert not db.ready


# --------------------------------------------------------------------------------------------
# reading resources in tasks


class Database:
    def __init__(self, url: str) -> None:
        self.url = url


async def test_tasks_read_resources_by_key_and_type() -> None:
    seen: list[str] = []

    async def use(res: cano.Resources) -> S:
        db = res.get("db", Database)
        seen.append(db.url)
        seen.append(res.get("name", str))
        return S.DONE

    db = Database("sqlite://")
    res = cano.Resources().insert("db", db).insert("name", "orders")
    wf = cano.Workflow(res).register(S.A, use).add_exit_state(S.DONE)
    assert await wf.orchestrate(S.A) is S.DONE
    assert seen == ["sqlite://", "orders"]


async def test_tasks_get_the_stored_object_itself() -> None:
    db = Database("x")
    got: list[object] = []

    async def use(res: cano.Resources) -> S:
        got.append(res.get("db", Database))
        got.append(res.get("db"))
        return S.DONE

    wf = cano.Workflow(cano.Resources().insert("db", db)).register(S.A, use).add_exit_state(S.DONE)
    await wf.orchestrate(S.A)
    assert got[0] is db
    assert got[1] is db


async def test_enum_keys_work_in_tasks() -> None:
    class Key(enum.Enum):
        DB = enum.auto()

    async def use(res: cano.Resources) -> S:
        assert res.get(Key.DB, Database).url == "k"
        return S.DONE

    wf = (
        cano.Workflow(cano.Resources().insert(Key.DB, Database("k")))
        .register(S.A, use)
        .add_exit_state(S.DONE)
    )
    assert await wf.orchestrate(S.A) is S.DONE


async def test_wrong_type_in_a_task_fails_the_task_with_resource_type_error() -> None:
    @cano.task(config=MINIMAL)
    async def use(res: cano.Resources) -> S:
        res.get("db", int)
        return S.DONE

    wf = (
        cano.Workflow(cano.Resources().insert("db", Database("x")))
        .register(S.A, use)
        .add_exit_state(S.DONE)
    )
    with pytest.raises(cano.TaskError) as info:
        await wf.orchestrate(S.A)
    assert isinstance(info.value.__cause__, cano.ResourceTypeError)
    assert isinstance(info.value.__cause__, TypeError)


async def test_missing_key_in_a_task_fails_the_task_with_resource_not_found() -> None:
    @cano.task(config=MINIMAL)
    async def use(res: cano.Resources) -> S:
        res.get("missing-key", Database)
        return S.DONE

    wf = cano.Workflow(cano.Resources()).register(S.A, use).add_exit_state(S.DONE)
    with pytest.raises(cano.TaskError) as info:
        await wf.orchestrate(S.A)
    cause = info.value.__cause__
    assert isinstance(cause, cano.ResourceNotFoundError)
    assert isinstance(cause, KeyError)
    assert "missing-key" in str(cause)


async def test_workflow_without_resources_hands_tasks_an_empty_resources() -> None:
    seen: list[int] = []

    async def use(res: cano.Resources) -> S:
        assert isinstance(res, cano.Resources)
        seen.append(len(res))
        return S.DONE

    for wf in (cano.Workflow(), cano.Workflow.bare()):
        wf.register(S.A, use).add_exit_state(S.DONE)
        assert await wf.orchestrate(S.A) is S.DONE
    assert seen == [0, 0]


# --------------------------------------------------------------------------------------------
# MemoryStore shared between tasks


async def test_memory_store_is_shared_between_tasks_and_with_the_caller() -> None:
    store = cano.MemoryStore()

    async def produce(res: cano.Resources) -> S:
        s = res.get("store", cano.MemoryStore)
        s.put("order", {"id": 7})
        s.append("log", "produced")
        return S.B

    async def consume(res: cano.Resources) -> S:
        s = res.get("store", cano.MemoryStore)
        order = s.get("order")
        s.put("total", order["id"] * 2)
        s.append("log", "consumed")
        return S.DONE

    res = cano.Resources().insert("store", store)
    wf = cano.Workflow(res).register(S.A, produce).register(S.B, consume).add_exit_state(S.DONE)
    assert await wf.orchestrate(S.A) is S.DONE
    assert store.get("total") == 14
    assert store.get("log") == ["produced", "consumed"]


async def test_memory_store_persists_across_runs_and_through_self_loops() -> None:
    store = cano.MemoryStore()

    async def count(res: cano.Resources) -> S:
        s = res.get("store", cano.MemoryStore)
        n = s.get("n", 0) + 1
        s.put("n", n)
        return S.A if n % 3 else S.DONE

    wf = (
        cano.Workflow(cano.Resources().insert("store", store))
        .register(S.A, count)
        .add_exit_state(S.DONE)
    )
    await wf.orchestrate(S.A)
    assert store.get("n") == 3
    await wf.orchestrate(S.A)
    assert store.get("n") == 6


async def test_memory_store_missing_key_in_a_task_is_a_key_not_found_error() -> None:
    @cano.task(config=MINIMAL)
    async def use(res: cano.Resources) -> S:
        res.get("store", cano.MemoryStore).get("absent")
        return S.DONE

    wf = (
        cano.Workflow(cano.Resources().insert("store", cano.MemoryStore()))
        .register(S.A, use)
        .add_exit_state(S.DONE)
    )
    with pytest.raises(cano.TaskError) as info:
        await wf.orchestrate(S.A)
    assert isinstance(info.value.__cause__, cano.KeyNotFoundError)
    assert isinstance(info.value.__cause__, KeyError)


async def test_memory_store_is_not_cleared_by_the_run_lifecycle() -> None:
    store = cano.MemoryStore()
    store.put("before", 1)

    async def use(res: cano.Resources) -> S:
        assert res.get("store", cano.MemoryStore).get("before") == 1
        res.get("store", cano.MemoryStore).put("after", 2)
        return S.DONE

    wf = (
        cano.Workflow(cano.Resources().insert("store", store))
        .register(S.A, use)
        .add_exit_state(S.DONE)
    )
    assert await wf.orchestrate(S.A) is S.DONE
    assert (store.get("before"), store.get("after")) == (1, 2)
