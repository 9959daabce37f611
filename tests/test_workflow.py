"""Workflow: registration, labels, exit states, validation, routing, loop guard, graph export,
snapshots, run_sync, bad return values and the context carried by errors."""

from __future__ import annotations

import asyncio
import enum
import re
from typing import Any

import cano
import pytest

# --------------------------------------------------------------------------------------------
# helpers


class S(enum.Enum):
    A = enum.auto()
    B = enum.auto()
    C = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


class Other(enum.Enum):
    """A second state type whose member names collide with ``S``'s."""

    A = enum.auto()
    B = enum.auto()
    DONE = enum.auto()


FAST_RETRY = cano.TaskConfig().with_fixed_retry(3, 0.001)


class Recorder(cano.WorkflowObserver):
    """Records the hooks the tests look at."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.started: list[str] = []
        self.failures: list[tuple[str, BaseException]] = []
        self.retries: list[tuple[str, int]] = []

    def on_state_enter(self, state: str) -> None:
        self.entered.append(state)

    def on_task_start(self, task_id: str) -> None:
        self.started.append(task_id)

    def on_task_failure(self, task_id: str, error: BaseException) -> None:
        self.failures.append((task_id, error))

    def on_retry(self, task_id: str, attempt: int) -> None:
        self.retries.append((task_id, attempt))


class Goto(cano.Task[Any]):
    """Returns a fixed value and counts its calls."""

    def __init__(self, value: Any, config: cano.TaskConfig | None = None) -> None:
        self.value = value
        self.calls = 0
        self._config = config or cano.TaskConfig.minimal()

    def config(self) -> cano.TaskConfig:
        return self._config

    async def run(self, res: cano.Resources) -> Any:
        self.calls += 1
        return self.value


class Boom(cano.Task[S]):
    """Always raises."""

    def __init__(self, config: cano.TaskConfig) -> None:
        self._config = config
        self.calls = 0

    def config(self) -> cano.TaskConfig:
        return self._config

    async def run(self, res: cano.Resources) -> S:
        self.calls += 1
        raise RuntimeError(f"boom {self.calls}")


def word(needle: str, text: str) -> bool:
    """``needle`` appears in ``text`` as a whole word."""
    return re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", text) is not None


def mermaid_edges(text: str) -> set[tuple[str, str]]:
    """The edges of a Mermaid diagram, with node ids resolved to their displayed labels."""
    names: dict[str, str] = {}
    for m in re.finditer(r'state\s+"([^"]*)"\s+as\s+([\w-]+)', text):
        names[m.group(2)] = m.group(1)
    for m in re.finditer(r'([\w-]+)\s*[\[\(\{]+"?([^"\]\)\}]*)"?[\]\)\}]+', text):
        names.setdefault(m.group(1), m.group(2))
    edges: set[tuple[str, str]] = set()
    for m in re.finditer(
        r"([\w\[\]\*-]+?)(?:[\[\(\{][^\n]*?[\]\)\}])?\s*-->(?:\|[^|]*\|)?\s*([\w\[\]\*-]+)", text
    ):
        a, b = m.group(1), m.group(2)
        edges.add((names.get(a, a), names.get(b, b)))
    return edges


# --------------------------------------------------------------------------------------------
# registration and labels


def test_builder_methods_return_the_workflow_for_chaining() -> None:
    wf: cano.Workflow[S] = cano.Workflow.bare()
    assert wf.register(S.A, Goto(S.DONE)) is wf
    assert wf.register_router(S.B, Goto(S.DONE)) is wf
    assert wf.add_exit_state(S.DONE) is wf
    assert wf.add_exit_states([S.FAILED]) is wf
    assert wf.with_max_transitions(10) is wf
    assert wf.with_observer(Recorder()) is wf


async def test_minimal_workflow_runs_to_its_exit_state() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE)).add_exit_state(S.DONE)
    assert await wf.orchestrate(S.A) is S.DONE


def test_registered_and_exit_states_properties() -> None:
    wf = (
        cano.Workflow.bare()
        .register(S.A, Goto(S.B))
        .register_router(S.B, Goto(S.DONE))
        .add_exit_states([S.DONE, S.FAILED])
    )
    assert wf.registered_states == frozenset({S.A, S.B})
    assert wf.exit_states == frozenset({S.DONE, S.FAILED})
    assert isinstance(wf.registered_states, frozenset)
    assert isinstance(wf.exit_states, frozenset)
    with pytest.raises(AttributeError):
        wf.registered_states = frozenset()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        wf.exit_states = frozenset()  # type: ignore[misc]


def test_adding_the_same_exit_state_twice_is_harmless() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE)).add_exit_state(S.DONE)
    wf.add_exit_state(S.DONE).add_exit_states([S.DONE])
    assert wf.exit_states == frozenset({S.DONE})
    assert wf.run_sync(S.A) is S.DONE


async def test_registering_a_state_twice_is_refused() -> None:
    # A second registration used to replace the first silently.
    first, second = Goto(S.FAILED), Goto(S.DONE)
    wf = cano.Workflow.bare().register(S.A, first).add_exit_states([S.DONE, S.FAILED])
    with pytest.raises(cano.ConfigurationError, match="state A already has a task"):
        wf.register(S.A, second)
    with pytest.raises(cano.ConfigurationError, match="state A already has a task"):
        wf.register_router(S.A, second)
    assert await wf.orchestrate(S.A) is S.FAILED
    assert (first.calls, second.calls) == (1, 0)


def test_a_task_class_instead_of_an_instance_is_refused_at_registration() -> None:
    with pytest.raises(cano.ConfigurationError, match=r"class Goto for state A.*Goto\(\)"):
        cano.Workflow.bare().register(S.A, Goto)


def test_a_task_is_named_by_its_name_method_only() -> None:
    class Named(cano.Task[S]):
        def name(self) -> str:
            return "charge-card"

        async def run(self, res: cano.Resources[Any]) -> S:
            return S.DONE

    wf = cano.Workflow.bare().register(S.A, Named()).add_exit_state(S.DONE)
    assert "charge-card" in wf.to_mermaid() or wf.validate() is None

    class Shadowed(cano.Task[S]):
        def __init__(self) -> None:
            self.name = "charge-card"  # type: ignore[assignment,method-assign]

        async def run(self, res: cano.Resources[Any]) -> S:
            return S.DONE

    with pytest.raises(cano.ConfigurationError, match=r"override.*name\(\)|overriding its name"):
        cano.Workflow.bare().register(S.A, Shadowed())

    class BadName(cano.Task[S]):
        def name(self) -> str:
            return 5  # type: ignore[return-value]

        async def run(self, res: cano.Resources[Any]) -> S:
            return S.DONE

    with pytest.raises(cano.ConfigurationError, match="name\\(\\) returned 5"):
        cano.Workflow.bare().register(S.A, BadName())


def test_two_states_with_the_same_enum_label_are_rejected_at_registration() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE))
    with pytest.raises(cano.ConfigurationError, match=r"\bA\b"):
        wf.register(Other.A, Goto(S.DONE))


def test_duplicate_label_through_add_exit_state_is_rejected_at_registration() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE)).add_exit_state(S.DONE)
    with pytest.raises(cano.ConfigurationError, match=r"\bDONE\b"):
        wf.add_exit_state(Other.DONE)
    with pytest.raises(cano.ConfigurationError, match=r"\bA\b"):
        wf.add_exit_state(Other.A)


def test_duplicate_label_through_add_exit_states_is_rejected() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE))
    with pytest.raises(cano.ConfigurationError, match=r"\bDONE\b"):
        wf.add_exit_states([S.DONE, Other.DONE])


def test_str_and_int_states_with_the_same_label_collide() -> None:
    # The label of 1 is "1", the label of "1" is "1".
    wf = cano.Workflow.bare().register(1, Goto("end"))
    with pytest.raises(cano.ConfigurationError, match=r"\b1\b"):
        wf.add_exit_state("1")


def test_configuration_error_is_a_value_error() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE))
    with pytest.raises(ValueError):
        wf.register(Other.A, Goto(S.DONE))


async def test_str_and_int_states_work() -> None:
    wf = (
        cano.Workflow.bare()
        .register("start", Goto(2))
        .register(2, Goto("end"))
        .add_exit_state("end")
    )
    assert await wf.orchestrate("start") == "end"


async def test_state_labels_reach_observers() -> None:
    rec = Recorder()
    wf = (
        cano.Workflow.bare()
        .register(S.A, Goto("two"))
        .register("two", Goto(3))
        .register(3, Goto(("x", 1)))
        .register(("x", 1), Goto(S.DONE))
        .add_exit_state(S.DONE)
        .with_observer(rec)
    )
    await wf.orchestrate(S.A)
    assert rec.entered == ["A", "two", "3", repr(("x", 1)), "DONE"]


# --------------------------------------------------------------------------------------------
# validation


def test_validate_accepts_a_well_formed_workflow() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE)).add_exit_state(S.DONE)
    assert wf.validate() is None


def test_validate_rejects_a_workflow_without_handlers() -> None:
    wf: cano.Workflow[S] = cano.Workflow.bare().add_exit_state(S.DONE)
    with pytest.raises(cano.ConfigurationError):
        wf.validate()


def test_validate_rejects_an_empty_workflow() -> None:
    with pytest.raises(cano.ConfigurationError):
        cano.Workflow.bare().validate()


def test_validate_rejects_a_workflow_without_exit_states() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.A))
    with pytest.raises(cano.ConfigurationError):
        wf.validate()


def test_validate_rejects_undeclared_edge_target_naming_it() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE), to={S.B, S.DONE}).add_exit_state(S.DONE)
    with pytest.raises(cano.ConfigurationError, match=r"\bB\b"):
        wf.validate()


def test_validate_accepts_declared_edges_to_registered_and_exit_states() -> None:
    wf = (
        cano.Workflow.bare()
        .register(S.A, Goto(S.B), to={S.B, S.FAILED})
        .register_router(S.B, Goto(S.DONE), to=[S.DONE])
        .add_exit_states([S.DONE, S.FAILED])
    )
    wf.validate()


def test_validate_checks_declared_edges_of_routers_too() -> None:
    wf = cano.Workflow.bare().register_router(S.A, Goto(S.DONE), to={S.C}).add_exit_state(S.DONE)
    with pytest.raises(cano.ConfigurationError, match=r"\bC\b"):
        wf.validate()


async def test_run_validates_before_starting() -> None:
    ran = Goto(S.A)
    wf = cano.Workflow.bare().register(S.A, ran)  # no exit state
    with pytest.raises(cano.ConfigurationError):
        await wf.orchestrate(S.A)
    assert ran.calls == 0


async def test_run_checks_declared_edges_before_starting() -> None:
    ran = Goto(S.DONE)
    wf = cano.Workflow.bare().register(S.A, ran, to={S.C}).add_exit_state(S.DONE)
    with pytest.raises(cano.ConfigurationError, match=r"\bC\b"):
        await wf.orchestrate(S.A)
    assert ran.calls == 0


async def test_initial_state_neither_registered_nor_exit_is_rejected() -> None:
    ran = Goto(S.DONE)
    wf = cano.Workflow.bare().register(S.A, ran).add_exit_state(S.DONE)
    with pytest.raises(cano.ConfigurationError, match=r"\bC\b"):
        await wf.orchestrate(S.C)
    assert ran.calls == 0


async def test_initial_state_of_another_type_is_rejected() -> None:
    ran = Goto(S.DONE)
    wf = cano.Workflow.bare().register(S.A, ran).add_exit_state(S.DONE)
    with pytest.raises(cano.ConfigurationError):
        await wf.orchestrate(Other.A)
    assert ran.calls == 0


async def test_fixing_a_workflow_makes_it_runnable() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE))
    with pytest.raises(cano.ConfigurationError):
        wf.validate()
    wf.add_exit_state(S.DONE)
    wf.validate()
    assert await wf.orchestrate(S.A) is S.DONE


# --------------------------------------------------------------------------------------------
# exit states


async def test_starting_at_an_exit_state_returns_it_without_running_anything() -> None:
    a = Goto(S.DONE)
    rec = Recorder()
    wf = cano.Workflow.bare().register(S.A, a).add_exit_state(S.DONE).with_observer(rec)
    assert await wf.orchestrate(S.DONE) is S.DONE
    assert a.calls == 0
    assert rec.entered == ["DONE"]
    assert rec.started == []


async def test_exit_state_takes_precedence_over_its_handler() -> None:
    handler = Goto(S.FAILED)
    wf = (
        cano.Workflow.bare()
        .register(S.A, Goto(S.B))
        .register(S.B, handler)
        .add_exit_states([S.B, S.FAILED])
    )
    assert await wf.orchestrate(S.A) is S.B
    assert await wf.orchestrate(S.B) is S.B
    assert handler.calls == 0


async def test_run_ends_at_whichever_exit_state_is_reached() -> None:
    class Pick(cano.Task[S]):
        def __init__(self) -> None:
            self.outcome = S.DONE

        def config(self) -> cano.TaskConfig:
            return cano.TaskConfig.minimal()

        async def run(self, res: cano.Resources) -> S:
            return self.outcome

    pick = Pick()
    wf = cano.Workflow.bare().register(S.A, pick).add_exit_states([S.DONE, S.FAILED])
    assert await wf.orchestrate(S.A) is S.DONE
    pick.outcome = S.FAILED
    assert await wf.orchestrate(S.A) is S.FAILED


# --------------------------------------------------------------------------------------------
# routing


async def test_states_run_in_the_order_tasks_route_them() -> None:
    order: list[str] = []

    def step(name: str, nxt: S) -> Any:
        async def run() -> S:
            order.append(name)
            return nxt

        return run

    rec = Recorder()
    wf = (
        cano.Workflow.bare()
        .register(S.C, step("c", S.DONE))
        .register(S.A, step("a", S.B))
        .register(S.B, step("b", S.C))
        .add_exit_state(S.DONE)
        .with_observer(rec)
    )
    assert await wf.orchestrate(S.A) is S.DONE
    assert order == ["a", "b", "c"]
    assert rec.entered == ["A", "B", "C", "DONE"]


async def test_a_task_can_branch_on_resource_data() -> None:
    async def decide(res: cano.Resources) -> S:
        return S.DONE if res.get("flag", bool) else S.FAILED

    def build(flag: bool) -> cano.Workflow[S]:
        res = cano.Resources().insert("flag", flag)
        return cano.Workflow(res).register(S.A, decide).add_exit_states([S.DONE, S.FAILED])

    assert await build(True).orchestrate(S.A) is S.DONE
    assert await build(False).orchestrate(S.A) is S.FAILED


async def test_self_loop_runs_until_the_task_leaves() -> None:
    calls = 0

    async def loop() -> S:
        nonlocal calls
        calls += 1
        return S.A if calls < 5 else S.DONE

    rec = Recorder()
    wf = cano.Workflow.bare().register(S.A, loop).add_exit_state(S.DONE).with_observer(rec)
    assert await wf.orchestrate(S.A) is S.DONE
    assert calls == 5
    assert rec.entered == ["A"] * 5 + ["DONE"]


async def test_cycles_between_states_are_allowed() -> None:
    visits: list[S] = []

    async def a() -> S:
        visits.append(S.A)
        return S.B

    async def b() -> S:
        visits.append(S.B)
        return S.A if len(visits) < 6 else S.DONE

    wf = cano.Workflow.bare().register(S.A, a).register(S.B, b).add_exit_state(S.DONE)
    assert await wf.orchestrate(S.A) is S.DONE
    assert visits == [S.A, S.B] * 3


async def test_no_loop_guard_by_default() -> None:
    calls = 0

    async def loop() -> S:
        nonlocal calls
        calls += 1
        return S.A if calls < 500 else S.DONE

    wf = cano.Workflow.bare().register(S.A, loop).add_exit_state(S.DONE)
    assert await wf.orchestrate(S.A) is S.DONE
    assert calls == 500


async def test_orchestrate_returns_a_coroutine_usable_with_asyncio() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE)).add_exit_state(S.DONE)
    run = wf.orchestrate(S.A)
    assert asyncio.iscoroutine(run)
    assert await asyncio.create_task(run) is S.DONE
    assert await asyncio.gather(wf.orchestrate(S.A), wf.orchestrate(S.DONE)) == [S.DONE, S.DONE]


async def test_one_workflow_can_run_concurrently() -> None:
    gate = asyncio.Event()
    inside = 0

    async def wait() -> S:
        nonlocal inside
        inside += 1
        await gate.wait()
        return S.DONE

    wf = cano.Workflow.bare().register(S.A, wait).add_exit_state(S.DONE)
    runs = [asyncio.create_task(wf.orchestrate(S.A)) for _ in range(3)]
    while inside < 3:
        await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*runs) == [S.DONE] * 3


# --------------------------------------------------------------------------------------------
# declared edges (to=) at run time


async def test_returning_a_declared_state_is_fine() -> None:
    wf = (
        cano.Workflow.bare()
        .register(S.A, Goto(S.B), to={S.B, S.FAILED})
        .register(S.B, Goto(S.DONE), to=[S.DONE])
        .add_exit_states([S.DONE, S.FAILED])
    )
    assert await wf.orchestrate(S.A) is S.DONE


async def test_returning_an_undeclared_state_is_a_workflow_error_not_retried() -> None:
    a = Goto(S.C, FAST_RETRY)
    c = Goto(S.DONE)
    wf = (
        cano.Workflow.bare()
        .register(S.A, a, to={S.B})
        .register(S.B, Goto(S.DONE))
        .register(S.C, c)
        .add_exit_state(S.DONE)
    )
    with pytest.raises(cano.WorkflowError) as info:
        await wf.orchestrate(S.A)
    assert word("C", str(info.value))
    assert info.value.state == "A"
    assert a.calls == 1
    assert c.calls == 0


async def test_router_returning_an_undeclared_state_is_a_workflow_error() -> None:
    class Route(cano.RouterTask[S]):
        async def route(self, res: cano.Resources) -> S:
            return S.FAILED

    wf = (
        cano.Workflow.bare()
        .register_router(S.A, Route(), to={S.DONE})
        .add_exit_states([S.DONE, S.FAILED])
    )
    with pytest.raises(cano.WorkflowError, match=r"\bFAILED\b"):
        await wf.orchestrate(S.A)


# --------------------------------------------------------------------------------------------
# with_max_transitions (§13.3)


def make_chain() -> tuple[cano.Workflow[S], Recorder, list[S]]:
    ran: list[S] = []

    def step(me: S, nxt: S) -> Any:
        async def run() -> S:
            ran.append(me)
            return nxt

        return run

    rec = Recorder()
    wf = (
        cano.Workflow.bare()
        .register(S.A, step(S.A, S.B))
        .register(S.B, step(S.B, S.C))
        .register(S.C, step(S.C, S.DONE))
        .add_exit_state(S.DONE)
        .with_observer(rec)
    )
    return wf, rec, ran


async def test_max_transitions_allows_exactly_n_moves() -> None:
    wf, rec, _ = make_chain()  # A -> B -> C -> DONE: three moves
    wf.with_max_transitions(3)
    assert await wf.orchestrate(S.A) is S.DONE
    assert rec.entered == ["A", "B", "C", "DONE"]


async def test_max_transitions_fails_the_move_that_would_exceed_it() -> None:
    wf, rec, ran = make_chain()
    wf.with_max_transitions(2)
    with pytest.raises(cano.WorkflowError) as info:
        await wf.orchestrate(S.A)
    # C's task ran (its move is the third); DONE was never entered.
    assert ran == [S.A, S.B, S.C]
    assert rec.entered == ["A", "B", "C"]
    err = info.value
    assert err.path == ["A", "B", "C"]
    assert err.state == "C"


async def test_max_transitions_guards_a_self_loop() -> None:
    calls = 0

    async def forever() -> S:
        nonlocal calls
        calls += 1
        return S.A

    wf = cano.Workflow.bare().register(S.A, forever).add_exit_state(S.DONE).with_max_transitions(5)
    with pytest.raises(cano.WorkflowError):
        await wf.orchestrate(S.A)
    # entered once, then re-entered by each of the 5 allowed moves
    assert calls == 6


async def test_max_transitions_zero_allows_no_move() -> None:
    a = Goto(S.DONE)
    wf = cano.Workflow.bare().register(S.A, a).add_exit_state(S.DONE).with_max_transitions(0)
    assert await wf.orchestrate(S.DONE) is S.DONE
    with pytest.raises(cano.WorkflowError):
        await wf.orchestrate(S.A)
    assert a.calls == 1


async def test_max_transitions_counts_per_run() -> None:
    wf, _, _ = make_chain()
    wf.with_max_transitions(3)
    assert await wf.orchestrate(S.A) is S.DONE
    assert await wf.orchestrate(S.A) is S.DONE


def test_max_transitions_rejects_a_negative_limit() -> None:
    with pytest.raises(cano.ConfigurationError):
        cano.Workflow.bare().with_max_transitions(-1)


# --------------------------------------------------------------------------------------------
# to_mermaid


def test_mermaid_draws_states_exits_and_declared_edges() -> None:
    wf = (
        cano.Workflow.bare()
        .register(S.A, Goto(S.B), to={S.B, S.FAILED})
        .register_router(S.B, Goto(S.C), to=[S.C])
        .register(S.C, Goto(S.DONE), to=[S.DONE, S.A])
        .add_exit_states([S.DONE, S.FAILED])
    )
    text = wf.to_mermaid()
    assert isinstance(text, str)
    first = text.strip().splitlines()[0].strip()
    assert first.startswith(("stateDiagram", "flowchart", "graph"))
    for label in ("A", "B", "C", "DONE", "FAILED"):
        assert re.search(rf"\b{label}\b", text), label
    edges = mermaid_edges(text)
    for edge in [("A", "B"), ("A", "FAILED"), ("B", "C"), ("C", "DONE"), ("C", "A")]:
        assert edge in edges, (edge, text)


def test_mermaid_draws_no_edges_that_were_not_declared() -> None:
    wf = (
        cano.Workflow.bare()
        .register(S.A, Goto(S.B))
        .register(S.B, Goto(S.DONE), to={S.DONE})
        .add_exit_state(S.DONE)
    )
    edges = mermaid_edges(wf.to_mermaid())
    states = {"A", "B", "DONE"}
    between_states = {e for e in edges if e[0] in states and e[1] in states}
    assert between_states == {("B", "DONE")}


async def _to_c_or_failed(res: cano.Resources) -> S:
    return S.C if res else S.FAILED


class _ToDone(cano.Task[S]):
    async def run(self, res: cano.Resources) -> S:
        return S.DONE


def test_mermaid_reads_the_transitions_a_task_names_and_marks_the_start() -> None:
    wf = (
        cano.Workflow.bare()
        .register(S.A, _to_c_or_failed)
        .register(S.C, _ToDone())
        .add_exit_states([S.DONE, S.FAILED])
    )
    text = wf.to_mermaid()
    edges = mermaid_edges(text)
    assert {("A", "C"), ("A", "FAILED"), ("C", "DONE")} <= edges
    assert ("[*]", "A") in edges and ("[*]", "C") not in edges
    assert " : ?" in text  # read from the source, not declared
    assert ("[*]", "C") in mermaid_edges(wf.to_mermaid(S.C))


def test_mermaid_reflects_later_registrations() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE), to={S.DONE}).add_exit_state(S.DONE)
    assert not re.search(r"\bFAILED\b", wf.to_mermaid())
    wf.register(S.B, Goto(S.FAILED), to={S.FAILED}).add_exit_state(S.FAILED)
    text = wf.to_mermaid()
    assert ("B", "FAILED") in mermaid_edges(text)


# --------------------------------------------------------------------------------------------
# snapshots (§13.17)


async def test_changes_after_orchestrate_do_not_affect_that_run() -> None:
    old = Goto(S.DONE)
    wf = cano.Workflow.bare().register(S.A, old).add_exit_states([S.DONE, S.FAILED])
    run = wf.orchestrate(S.A)
    wf.add_exit_state(S.A)  # an exit wins over a handler: a run that saw it ends at A
    assert await run is S.DONE
    assert old.calls == 1
    # the next run sees the change
    assert await wf.orchestrate(S.A) is S.A


async def test_changes_while_a_run_is_in_flight_do_not_affect_it() -> None:
    gate = asyncio.Event()
    started = asyncio.Event()

    async def a() -> S:
        started.set()
        await gate.wait()
        return S.B

    old_b = Goto(S.DONE)
    wf = (
        cano.Workflow.bare()
        .register(S.A, a)
        .register(S.B, old_b)
        .add_exit_states([S.DONE, S.FAILED])
    )
    run = asyncio.create_task(wf.orchestrate(S.A))
    await started.wait()
    wf.add_exit_state(S.B)  # would end the run at B if the run saw it
    wf.with_max_transitions(0)  # would fail the run if the run saw it
    gate.set()
    assert await run is S.DONE
    assert old_b.calls == 1


async def test_breaking_the_workflow_after_orchestrate_does_not_affect_that_run() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE)).add_exit_state(S.DONE)
    run = wf.orchestrate(S.A)
    wf.register(S.B, Goto(S.DONE), to={S.C})  # now invalid: C is neither registered nor exit
    assert await run is S.DONE
    with pytest.raises(cano.ConfigurationError):
        await wf.orchestrate(S.A)


async def test_fixing_the_workflow_after_orchestrate_does_not_affect_that_run() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE))  # no exit state yet
    run = wf.orchestrate(S.A)
    wf.add_exit_state(S.DONE)
    with pytest.raises(cano.ConfigurationError):
        await run
    assert await wf.orchestrate(S.A) is S.DONE


async def test_adding_an_observer_after_orchestrate_does_not_affect_that_run() -> None:
    rec = Recorder()
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE)).add_exit_state(S.DONE)
    run = wf.orchestrate(S.A)
    wf.with_observer(rec)
    await run
    assert rec.entered == []
    await wf.orchestrate(S.A)
    assert rec.entered == ["A", "DONE"]


# --------------------------------------------------------------------------------------------
# run_sync


def test_run_sync_returns_the_exit_state() -> None:
    wf = (
        cano.Workflow.bare()
        .register(S.A, Goto(S.B))
        .register(S.B, Goto(S.DONE))
        .add_exit_state(S.DONE)
    )
    assert wf.run_sync(S.A) is S.DONE
    assert wf.run_sync(S.A, workflow_id="sync-1") is S.DONE


def test_run_sync_raises_the_run_error() -> None:
    wf = cano.Workflow.bare().register(S.A, Boom(cano.TaskConfig.minimal())).add_exit_state(S.DONE)
    with pytest.raises(cano.TaskError) as info:
        wf.run_sync(S.A)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_run_sync_passes_the_cancellation_token() -> None:
    a = Goto(S.DONE)
    token, handle = cano.CancellationToken.new()
    handle.cancel()
    wf = cano.Workflow.bare().register(S.A, a).add_exit_state(S.DONE)
    with pytest.raises(cano.WorkflowCancelledError):
        wf.run_sync(S.A, cancel=token)
    assert a.calls == 0


def test_run_sync_validates() -> None:
    wf = cano.Workflow.bare().register(S.A, Goto(S.DONE))
    with pytest.raises(cano.ConfigurationError):
        wf.run_sync(S.A)


# --------------------------------------------------------------------------------------------
# bad return values (§13.1)


async def test_returning_an_unregistered_state_names_state_task_and_value() -> None:
    class Wander(cano.Task[S]):
        def __init__(self) -> None:
            self.calls = 0

        def config(self) -> cano.TaskConfig:
            return FAST_RETRY

        async def run(self, res: cano.Resources) -> S:
            self.calls += 1
            return S.C

    task = Wander()
    wf = cano.Workflow.bare().register(S.A, Goto(S.B)).register(S.B, task).add_exit_state(S.DONE)
    with pytest.raises(cano.WorkflowError) as info:
        await wf.orchestrate(S.A)
    err = info.value
    msg = str(err)
    assert word("C", msg)  # the returned state
    assert word("B", msg)  # the state that returned it
    assert "Wander" in msg  # the task
    assert task.calls == 1  # not retried
    assert err.state == "B"
    assert err.path == ["A", "B"]
    assert err.attempt == 1


async def test_returning_none_is_a_workflow_error_not_retried() -> None:
    calls = 0

    @cano.task(config=FAST_RETRY)
    async def forgetful() -> Any:
        nonlocal calls
        calls += 1
        return None

    rec = Recorder()
    wf = cano.Workflow.bare().register(S.A, forgetful).add_exit_state(S.DONE).with_observer(rec)
    with pytest.raises(cano.WorkflowError) as info:
        await wf.orchestrate(S.A)
    msg = str(info.value)
    assert word("None", msg)
    assert word("forgetful", msg)
    assert calls == 1
    assert rec.retries == []
    assert info.value.state == "A"


async def test_bad_return_after_a_failed_attempt_reports_that_attempt() -> None:
    calls = 0

    @cano.task(config=FAST_RETRY)
    async def flaky() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("first attempt fails")
        return None

    wf = cano.Workflow.bare().register(S.A, flaky).add_exit_state(S.DONE)
    with pytest.raises(cano.WorkflowError) as info:
        await wf.orchestrate(S.A)
    assert calls == 2  # the second attempt returned None; it is not retried
    assert info.value.attempt == 2


async def test_returning_a_string_from_an_enum_workflow_is_a_workflow_error() -> None:
    task = Goto("not-a-state", FAST_RETRY)
    wf = cano.Workflow.bare().register(S.A, task).add_exit_state(S.DONE)
    with pytest.raises(cano.WorkflowError) as info:
        await wf.orchestrate(S.A)
    msg = str(info.value)
    assert "not-a-state" in msg
    assert "Goto" in msg
    assert task.calls == 1


async def test_returning_the_label_string_of_a_state_is_still_the_wrong_type() -> None:
    task = Goto("DONE", FAST_RETRY)
    wf = cano.Workflow.bare().register(S.A, task).add_exit_state(S.DONE)
    with pytest.raises(cano.WorkflowError):
        await wf.orchestrate(S.A)
    assert task.calls == 1


async def test_returning_a_member_of_another_enum_is_a_workflow_error() -> None:
    # Other.DONE has the same name as the exit state S.DONE but is not a state here.
    task = Goto(Other.DONE, FAST_RETRY)
    wf = cano.Workflow.bare().register(S.A, task).add_exit_state(S.DONE)
    with pytest.raises(cano.WorkflowError):
        await wf.orchestrate(S.A)
    assert task.calls == 1


async def test_returning_the_enum_value_instead_of_the_member_is_a_workflow_error() -> None:
    task = Goto(S.DONE.value, FAST_RETRY)
    wf = cano.Workflow.bare().register(S.A, task).add_exit_state(S.DONE)
    with pytest.raises(cano.WorkflowError) as info:
        await wf.orchestrate(S.A)
    assert str(S.DONE.value) in str(info.value)
    assert task.calls == 1


async def test_router_returning_none_is_a_workflow_error_not_retried() -> None:
    calls = 0

    class Route(cano.RouterTask[S]):
        async def route(self, res: cano.Resources) -> S:
            nonlocal calls
            calls += 1
            return None  # type: ignore[return-value]

    wf = cano.Workflow.bare().register_router(S.A, Route()).add_exit_state(S.DONE)
    with pytest.raises(cano.WorkflowError, match=r"\bNone\b"):
        await wf.orchestrate(S.A)
    assert calls == 1  # the router's default config retries, but this is not retried


async def test_bad_return_fails_the_run_without_entering_another_state() -> None:
    rec = Recorder()
    b = Goto(S.DONE)
    wf = (
        cano.Workflow.bare()
        .register(S.A, Goto(None))
        .register(S.B, b)
        .add_exit_state(S.DONE)
        .with_observer(rec)
    )
    with pytest.raises(cano.WorkflowError):
        await wf.orchestrate(S.A)
    assert rec.entered == ["A"]
    assert b.calls == 0


# --------------------------------------------------------------------------------------------
# TaskResult


async def test_task_result_single_is_the_same_as_returning_the_state() -> None:
    rec = Recorder()
    wf = (
        cano.Workflow.bare()
        .register(S.A, Goto(cano.TaskResult.single(S.B)))
        .register(S.B, Goto(S.DONE))
        .add_exit_state(S.DONE)
        .with_observer(rec)
    )
    assert await wf.orchestrate(S.A) is S.DONE
    assert rec.entered == ["A", "B", "DONE"]


async def test_task_result_single_to_an_exit_state() -> None:
    wf = (
        cano.Workflow.bare()
        .register(S.A, Goto(cano.TaskResult.single(S.DONE)))
        .add_exit_state(S.DONE)
    )
    assert await wf.orchestrate(S.A) is S.DONE


async def test_task_result_single_from_a_router() -> None:
    class Route(cano.RouterTask[S]):
        async def route(self, res: cano.Resources) -> Any:
            return cano.TaskResult.single(S.DONE)

    wf = cano.Workflow.bare().register_router(S.A, Route()).add_exit_state(S.DONE)
    assert await wf.orchestrate(S.A) is S.DONE


async def test_task_result_single_of_an_unregistered_state_is_a_workflow_error() -> None:
    task = Goto(cano.TaskResult.single(S.C), FAST_RETRY)
    wf = cano.Workflow.bare().register(S.A, task).add_exit_state(S.DONE)
    with pytest.raises(cano.WorkflowError, match=r"\bC\b"):
        await wf.orchestrate(S.A)
    assert task.calls == 1


async def test_task_result_split_from_a_single_state_is_a_workflow_error() -> None:
    task = Goto(cano.TaskResult.split([S.B, S.C]), FAST_RETRY)
    b, c = Goto(S.DONE), Goto(S.DONE)
    wf = (
        cano.Workflow.bare()
        .register(S.A, task)
        .register(S.B, b)
        .register(S.C, c)
        .add_exit_state(S.DONE)
    )
    with pytest.raises(cano.WorkflowError) as info:
        await wf.orchestrate(S.A)
    assert info.value.state == "A"
    assert task.calls == 1
    assert (b.calls, c.calls) == (0, 0)


async def test_task_result_split_from_a_router_is_a_workflow_error() -> None:
    class Route(cano.RouterTask[S]):
        async def route(self, res: cano.Resources) -> Any:
            return cano.TaskResult.split([S.DONE])

    wf = cano.Workflow.bare().register_router(S.A, Route()).add_exit_state(S.DONE)
    with pytest.raises(cano.WorkflowError):
        await wf.orchestrate(S.A)


# --------------------------------------------------------------------------------------------
# tasks with neither run nor run_bare


async def test_task_subclass_with_neither_run_nor_run_bare_is_a_configuration_error() -> None:
    class Hollow(cano.Task[S]):
        def config(self) -> cano.TaskConfig:
            return cano.TaskConfig.minimal()

    with pytest.raises(cano.ConfigurationError, match="Hollow"):
        wf = cano.Workflow.bare().register(S.A, Hollow()).add_exit_state(S.DONE)
        await wf.orchestrate(S.A)


async def test_object_with_neither_run_nor_run_bare_is_a_configuration_error() -> None:
    class NotATask:
        async def execute(self) -> S:
            return S.DONE

    with pytest.raises(cano.ConfigurationError):
        wf = cano.Workflow.bare().register(S.A, NotATask()).add_exit_state(S.DONE)
        await wf.orchestrate(S.A)


# --------------------------------------------------------------------------------------------
# error context (§11, §13.2)


async def test_task_error_carries_state_attempt_path_and_cause() -> None:
    boom = Boom(cano.TaskConfig.minimal())
    rec = Recorder()
    wf = (
        cano.Workflow.bare()
        .register(S.A, Goto(S.B))
        .register_router(S.B, Goto(S.C))
        .register(S.C, boom)
        .add_exit_state(S.DONE)
        .with_observer(rec)
    )
    with pytest.raises(cano.TaskError) as info:
        await wf.orchestrate(S.A)
    err = info.value
    assert not isinstance(err, cano.RetryExhaustedError)
    assert isinstance(err, cano.CanoError)
    assert err.state == "C"
    assert err.attempt == 1
    assert err.path == ["A", "B", "C"]  # routers included
    assert err.path[-1] == err.state
    assert isinstance(err.__cause__, RuntimeError)
    assert str(err.__cause__) == "boom 1"
    assert word("C", str(err))
    assert "Boom" in str(err)
    assert boom.calls == 1


async def test_retry_exhausted_reports_the_last_attempt() -> None:
    boom = Boom(cano.TaskConfig().with_fixed_retry(2, 0.001))
    wf = cano.Workflow.bare().register(S.A, boom).add_exit_state(S.DONE)
    with pytest.raises(cano.RetryExhaustedError) as info:
        await wf.orchestrate(S.A)
    err = info.value
    assert isinstance(err, cano.TaskError)
    assert err.attempts == 3
    assert err.attempt == 3
    assert err.state == "A"
    assert err.path == ["A"]
    assert isinstance(err.__cause__, RuntimeError)
    assert boom.calls == 3


async def test_path_includes_revisited_states() -> None:
    visits = 0

    async def a() -> S:
        nonlocal visits
        visits += 1
        if visits == 3:
            raise KeyError("third visit")
        return S.B

    wf = (
        cano.Workflow.bare()
        .register(S.A, cano.task(config=cano.TaskConfig.minimal())(a))
        .register(S.B, Goto(S.A))
        .add_exit_state(S.DONE)
    )
    with pytest.raises(cano.TaskError) as info:
        await wf.orchestrate(S.A)
    assert info.value.path == ["A", "B", "A", "B", "A"]
    assert info.value.state == "A"
    assert isinstance(info.value.__cause__, KeyError)


async def test_cancellation_error_has_attempt_zero_and_the_state() -> None:
    token, handle = cano.CancellationToken.new()
    started = asyncio.Event()

    async def hang() -> S:
        started.set()
        await asyncio.Event().wait()
        return S.DONE

    wf = cano.Workflow.bare().register(S.A, Goto(S.B)).register(S.B, hang).add_exit_state(S.DONE)
    run = asyncio.create_task(wf.orchestrate(S.A, cancel=token))
    await started.wait()
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError) as info:
        await run
    err = info.value
    assert err.attempt == 0
    assert err.state == "B"
    assert err.path == ["A", "B"]


async def test_total_timeout_error_has_attempt_zero_and_the_state() -> None:
    async def hang() -> S:
        await asyncio.Event().wait()
        return S.DONE

    wf = cano.Workflow.bare().register(S.A, hang).add_exit_state(S.DONE).with_total_timeout(0.05)
    with pytest.raises(cano.WorkflowTimeoutError) as info:
        await wf.orchestrate(S.A)
    err = info.value
    assert err.attempt == 0
    assert err.state == "A"
    assert err.path == ["A"]
    assert err.limit == pytest.approx(0.05)


async def test_workflow_error_for_unknown_state_carries_context() -> None:
    wf = (
        cano.Workflow.bare()
        .register(S.A, Goto(S.B))
        .register(S.B, Goto(S.C))
        .add_exit_state(S.DONE)
    )
    with pytest.raises(cano.WorkflowError) as info:
        await wf.orchestrate(S.A)
    err = info.value
    assert isinstance(err, cano.CanoError)
    assert err.state == "B"
    assert err.path == ["A", "B"]
