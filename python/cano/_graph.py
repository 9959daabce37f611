"""A workflow's graph as a Mermaid state diagram.

Edges come from ``to=`` where a state declares them. Where it does not, they are read from
the task's source: every ``Enum.MEMBER`` of the workflow's state enum that the task's code
mentions (``return Step.DONE``, ``Ready(Step.NEXT)``, ``Done(Step.SHIP)``) is drawn as a
possible transition, labelled ``?``. A state no edge leads to is where runs may start
(``[*] -->``), unless ``initial`` names the start.
"""

from __future__ import annotations

import ast
import enum
import inspect
import textwrap
from collections.abc import Iterable, Iterator
from typing import Any

from cano._registration import _Entry, state_label
from cano.waits import WaitStep

__all__ = ["mermaid"]


_MARKS = {
    "current": "fill:#fde68a,stroke:#b45309,stroke-width:3px",
    "failed": "fill:#fecaca,stroke:#b91c1c,stroke-width:3px",
    "done": "fill:#bbf7d0,stroke:#15803d,stroke-width:3px",
    "cancelled": "fill:#e5e7eb,stroke:#4b5563,stroke-width:3px",
}


def mermaid(
    entries: dict[Any, _Entry],
    exits: Iterable[Any],
    initial: object | None = None,
    *,
    mark: tuple[str, str] | None = None,
) -> str:
    """The Mermaid text for these registered states and exits. ``mark`` is a state label
    and one of ``current``, ``failed``, ``done``, ``cancelled``: that state is drawn
    highlighted (``cano ui`` shows where a run is)."""
    exits = list(exits)
    ids: dict[Any, str] = {}
    lines = ["stateDiagram-v2"]

    def node(state: Any) -> str:
        if state not in ids:
            ids[state] = f"s{len(ids)}"
            label = _text(state_label(state))
            lines.append(f'    state "{label}" as {ids[state]}')
        return ids[state]

    for state, entry in entries.items():
        node(state)
        if entry.kind == "router":
            lines.append(f"    note right of {ids[state]} : router")
        elif isinstance(entry.task, WaitStep):
            signal = _text(entry.task.task.signal)
            lines.append(f"    note right of {ids[state]} : waits for signal {signal}")
        elif entry.join is not None:
            names = _text(", ".join(b.name for b in entry.branches) or "no branches")
            lines.append(f"    note right of {ids[state]} : split {entry.join.strategy!r}")
            lines.append(f"    note left of {ids[state]} : {names}")
    for state in exits:
        node(state)
    edges: list[str] = []
    reached: set[Any] = set()
    for state, entry in entries.items():
        if entry.targets is not None:
            label = " : join" if entry.join is not None else ""
            targets: Iterable[Any] = entry.targets
        else:
            label = " : ?"
            targets = _mentioned_states(entry, type(state))
        for target in targets:
            if target != state:
                reached.add(target)
            edges.append(f"    {node(state)} --> {node(target)}{label}")
    if initial is not None:
        starts = [initial]
    else:
        starts = [s for s in entries if s not in reached and s not in exits]
    lines.extend(f"    [*] --> {node(s)}" for s in starts)
    lines.extend(edges)
    lines.extend(f"    {ids[s]} --> [*]" for s in exits)
    if mark is not None:
        label, kind = mark
        marked = [ids[s] for s in ids if state_label(s) == label]
        if marked:
            lines.append(f"    classDef {kind} {_MARKS[kind]}")
            lines.extend(f"    class {node_id} {kind}" for node_id in marked)
    return "\n".join(lines) + "\n"


def _text(text: str) -> str:
    """Text as Mermaid shows it literally: its markup characters as Mermaid's entity codes
    (a label is text, never HTML; ``"`` would end the label)."""
    for char, code in (("#", "#35;"), ("&", "#amp;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, code)
    return text.replace('"', "#quot;")


def _mentioned_states(entry: _Entry, states: type) -> list[Any]:
    """Members of ``states`` that the task's own code names, in source order."""
    if not issubclass(states, enum.Enum):
        return []
    found: dict[Any, None] = {}
    for task in (entry.task, *(b.task for b in entry.branches)):
        for fn in _own_functions(task):
            for member in _members_named(fn, states):
                found.setdefault(member, None)
    return list(found)


def _own_functions(task: object) -> Iterator[Any]:
    """The user-written functions behind a task: itself, the function it wraps, or the
    methods its class defines outside cano."""
    fn = getattr(task, "fn", None)  # cano.task(...) wraps a function
    if inspect.isfunction(task):
        yield task
    elif inspect.isfunction(fn):
        yield fn
    else:
        for klass in type(task).__mro__:
            if klass.__module__.split(".")[0] in ("cano", "builtins", "typing", "abc"):
                continue
            for value in vars(klass).values():
                if inspect.isfunction(value):
                    yield value


def _members_named(fn: Any, states: type[enum.Enum]) -> Iterator[enum.Enum]:
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return  # no source (a REPL, a C function): nothing to infer
    scope = getattr(fn, "__globals__", {})
    named = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and scope.get(node.value.id) is states
        and node.attr in states.__members__
    ]
    for node in sorted(named, key=lambda n: (n.lineno, n.col_offset)):
        yield states.__members__[node.attr]
