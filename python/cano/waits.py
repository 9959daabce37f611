"""Wait states: a run waits for a signal — a person's approval, a webhook — or a deadline.

``Workflow.register_wait(state, task)`` runs a :class:`WaitTask` in ``state``. Entering the
state records its deadline (once: a resumed run keeps it), then consumes the oldest signal
of ``task.signal`` sent to the run that has not been consumed yet — durably, under a token
recorded with the deadline, so a run that crashes after consuming a signal gets the *same*
payload again when it resumes, never another — and moves on with ``on_signal(res,
payload)``. With no signal, it waits (in the process running it) until one is sent with
:meth:`cano.Client.signal` or the deadline passes (``on_timeout(res)``). A signal sent
before the run reaches the state is kept for it.

A wait state needs a store that keeps signals (every built-in store does; the protocol is
``SignalBox`` below) and a workflow id.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

import orjson

from cano._cancel import stop_if_cancelled
from cano._core import TaskConfig
from cano._values import Duration, seconds
from cano.errors import ConfigurationError, RunParked
from cano.records import FENCE, RUN_ID
from cano.stepped import Done, More, SteppedTask

if TYPE_CHECKING:
    from cano.resources import Resources

__all__ = ["SignalBox", "WaitTask"]

S = TypeVar("S")

# How often a waiting run looks for a signal sent by another process (one sent from this
# process wakes it at once).
_POLL = 1.0


@runtime_checkable
class SignalBox(Protocol):
    """What a checkpoint store implements to keep signals (every built-in store does)."""

    async def send_signal(
        self, workflow_id: str, name: str, payload: bytes | None, dedup_key: str | None
    ) -> bool:
        """Keeps a signal for the run; False when ``dedup_key`` was already sent."""
        ...

    async def take_signal(
        self, workflow_id: str, name: str, token: str
    ) -> tuple[bool, bytes | None]:
        """``(True, payload)`` of the signal consumed under ``token`` — the one already
        consumed under it, or else the oldest unconsumed one of ``name``, consumed now —
        or ``(False, None)`` when there is none."""
        ...


class WaitTask(Generic[S]):
    """A state that waits for the signal named :attr:`signal` (or its deadline).

    Subclass it, set ``signal``, implement ``on_signal`` (and ``on_timeout`` when
    ``timeout()`` returns a duration), and register it with ``Workflow.register_wait``.
    """

    signal: str = ""
    """The name of the signal this state waits for."""

    def timeout(self) -> Duration | None:
        """How long to wait, from when the state is first entered; None: for ever."""
        return None

    async def on_signal(self, res: Resources[Any], payload: Any) -> S:
        """The signal arrived with ``payload`` (its decoded JSON): the next state."""
        raise ConfigurationError(f"wait task {self.name()!r} does not implement on_signal()")

    async def on_timeout(self, res: Resources[Any]) -> S:
        """The deadline passed with no signal: the next state."""
        raise ConfigurationError(
            f"wait task {self.name()!r} set a timeout() but does not implement on_timeout()"
        )

    def name(self) -> str:
        """Default: the class's ``__qualname__``."""
        return type(self).__qualname__

    def config(self) -> TaskConfig:
        """Retries of ``on_signal``/``on_timeout`` (a retry gets the same payload). Default
        ``TaskConfig.minimal()``; an ``attempt_timeout`` would also bound the wait."""
        return TaskConfig.minimal()


# ----- in-process wake-ups -----------------------------------------------------------------

_waiting: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}


def notify(workflow_id: str) -> None:
    """Wakes the waits of ``workflow_id`` in this process (a signal was just sent)."""
    for loop, event in list(_waiting.get(workflow_id, ())):
        if not loop.is_closed():
            loop.call_soon_threadsafe(event.set)


async def _until_signalled(workflow_id: str, limit: float) -> None:
    loop, event = asyncio.get_running_loop(), asyncio.Event()
    entry = (loop, event)
    _waiting.setdefault(workflow_id, set()).add(entry)
    try:
        await asyncio.wait_for(event.wait(), limit)
    except TimeoutError:
        pass
    finally:
        waiters = _waiting.get(workflow_id)
        if waiters is not None:
            waiters.discard(entry)
            if not waiters:
                del _waiting[workflow_id]


# ----- the state ---------------------------------------------------------------------------


class WaitStep(SteppedTask[Any, dict[str, Any]]):
    """A wait state as the engine runs it: a stepped task whose first cursor records the
    deadline and the consumption token (durably, before anything is consumed)."""

    def __init__(self, task: WaitTask[Any], store: Callable[[], Any], label: str) -> None:
        if not isinstance(getattr(task, "signal", None), str) or not task.signal:
            raise ConfigurationError(
                f"register_wait for state {label}: {task!r} needs a non-empty str `signal` "
                "attribute (the name of the signal it waits for)"
            )
        self.task, self._store, self._label = task, store, label

    def name(self) -> str:
        return self.task.name()

    def config(self) -> TaskConfig:
        return self.task.config()

    async def step(
        self, res: Resources[Any], cursor: dict[str, Any] | None
    ) -> More[dict[str, Any]] | Done[Any]:
        store, run_id = self._store(), RUN_ID.get()
        if run_id is None or not isinstance(store, SignalBox):
            raise ConfigurationError(
                f"wait state {self._label} needs a checkpoint store that keeps signals and a "
                "workflow_id (orchestrate(..., workflow_id=...) on a workflow with a store)"
            )
        if cursor is None:  # first entry: the deadline, recorded once
            limit = self.task.timeout()
            deadline = None if limit is None else time.time() + seconds(limit, "timeout()")
            return More({"deadline": deadline, "token": uuid.uuid4().hex})
        deadline, token = cursor["deadline"], cursor["token"]
        while True:
            found, payload = await store.take_signal(run_id, self.task.signal, token)
            if found:
                value = None if payload is None else orjson.loads(payload)
                return Done(await self.task.on_signal(res, value))
            now = time.time()
            if deadline is not None and now >= deadline:
                return Done(await self.task.on_timeout(res))
            if FENCE.get() is not None and getattr(store, "park_run", None) is not None:
                # A Worker's run: given back, WAITING, holding no slot and no lease, until
                # the signal arrives or the deadline passes (then resumed from its log).
                raise RunParked(
                    f"run {run_id!r} waits for signal {self.task.signal!r}",
                    state=self._label,
                    signal=self.task.signal,
                    wake_at=deadline,
                )
            stop_if_cancelled()  # a cancellation the store's driver swallowed
            left = _POLL if deadline is None else min(_POLL, deadline - now)
            await _until_signalled(run_id, left)
