"""Noticing that a run has ended when the observer hooks do not say so.

The hooks have no "run finished" call: a run that reaches an exit state, or fails in a
way no hook reports (a split whose join failed, ``with_max_transitions``, a failing
checkpoint store), just returns or raises to whoever awaits it. :class:`RunWatch` finds
that awaiter while a hook runs (the Python frame that is awaiting the run, found on the
call stack) and later asks it, through the standard coroutine introspection attributes
(``cr_await``, ``cr_frame``), whether it is still awaiting that run.

CPython-specific (``sys._getframe``), like the rest of cano. Whenever the answer cannot be
known (the run is awaited through an object that does not expose what it awaits, such as
another workflow's run), :meth:`RunWatch.state` says ``"unknown"`` and the caller falls
back on other signals.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from types import FrameType
from typing import Literal

from cano._core import Run
from cano.observer import HOOKS

RunState = Literal["running", "ended", "unknown"]

_AWAITING_CODE = (
    inspect.CO_COROUTINE
    | inspect.CO_ITERABLE_COROUTINE
    | inspect.CO_GENERATOR
    | inspect.CO_ASYNC_GENERATOR
)
_MAX_DEPTH = 64  # deeper await chains are not followed (the answer is then "unknown")


def _frame_of(obj: object) -> FrameType | None:
    for attr in ("cr_frame", "gi_frame", "ag_frame"):
        frame = getattr(obj, attr, None)
        if frame is not None:
            return frame  # type: ignore[no-any-return]
    return None


def _awaited_by(obj: object) -> tuple[bool, object]:
    """(True, what ``obj`` awaits) for a coroutine or generator, else (False, None)."""
    for attr in ("cr_await", "gi_yieldfrom", "ag_await"):
        if hasattr(obj, attr):
            return True, getattr(obj, attr)
    return False, None


def _is_leaf(obj: object) -> bool:
    """True for what an await chain ends in when nothing is hidden below it."""
    return obj is None or isinstance(obj, asyncio.Future) or type(obj).__name__ == "FutureIter"


class RunWatch:
    """Answers "is the run that fired this hook still being awaited?" later on.

    Create it with :meth:`capture` inside a hook fired by the run's first state; call
    :meth:`state` from a loop callback (never from inside the run itself).
    """

    __slots__ = ("_awaiter", "_frame", "_owner", "_run")

    def __init__(self, owner: asyncio.Task[object], frame: FrameType | None) -> None:
        self._owner = owner
        self._frame = frame  # the frame awaiting the run, until its coroutine is found
        self._awaiter: object | None = None
        self._run: object | None = None

    @classmethod
    def capture(cls, owner: asyncio.Task[object] | None, skip: tuple[str, ...]) -> RunWatch | None:
        """Call from inside a hook; ``skip`` lists module-name prefixes of the hook's callers.

        The first frame up the stack that is neither in ``skip`` nor a hook method is the
        one that called into the run: a coroutine awaiting it, or the event loop when the
        run is the task itself.
        """
        if owner is None:
            return None
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and (
            frame.f_code.co_name in HOOKS  # a subclass's hook calling super()
            or str(frame.f_globals.get("__name__", "")).startswith(skip)
        ):
            frame = frame.f_back
        if frame is not None and frame.f_code.co_flags & _AWAITING_CODE:
            return cls(owner, frame)
        if isinstance(owner.get_coro(), Run):
            return cls(owner, None)  # the task drives the run directly
        return None

    def state(self) -> RunState:
        """``"running"``, ``"ended"`` or ``"unknown"``."""
        if self._owner.done():
            return "ended"
        if self._frame is None and self._awaiter is None:
            return "running"  # the run is the task itself
        if self._awaiter is None:
            found = self._find_awaiter()
            if found != "running":
                return found
        is_awaiting, awaited = _awaited_by(self._awaiter)
        if _frame_of(self._awaiter) is None or not is_awaiting:
            return "ended"
        return "running" if awaited is self._run else "ended"

    def _find_awaiter(self) -> RunState:
        node: object = self._owner.get_coro()
        for _ in range(_MAX_DEPTH):
            if _frame_of(node) is self._frame:
                self._awaiter = node
                self._frame = None
                _, awaited = _awaited_by(node)
                if not isinstance(awaited, Run):
                    return "ended"
                self._run = awaited
                return "running"
            is_awaiting, below = _awaited_by(node)
            if not is_awaiting:
                # Not a coroutine: the chain stops here. If nothing can hide below this
                # object, the awaiter is no longer awaiting anything, so the run ended.
                return "ended" if _is_leaf(node) else "unknown"
            if below is None:
                return "ended"
            node = below
        return "unknown"

    def release(self) -> None:
        """Drops the references to frames and coroutines (call when the run has ended)."""
        self._frame = None
        self._awaiter = None
        self._run = None
