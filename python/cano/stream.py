"""Stream tasks: consume an unbounded source item by item, flush per window, resume from a cursor.

A :class:`StreamTask` is for sources that may never end (a queue, a log tail, a socket).
Registered with ``workflow.register_stream(state, task)``, one run of the state:

1. ``open(res, cursor)`` opens the source, from the last committed cursor on a resumed run
   (``None`` on a fresh one);
2. every item goes through ``process_item(res, item) -> (output, cursor)``;
3. outputs are buffered per :class:`StreamWindow` and handed to ``flush_window(res,
   outputs)``, which returns :class:`Continue` or :class:`Stop` (the next state); after each
   flush the cursor of the window's last item is committed (persisted with a checkpoint
   store), so a resumed run re-opens the source there;
4. when the source ends, the partial window is flushed and ``on_close(res,
   CloseReason.EXHAUSTED)`` returns the next state.

Cancellation (a token, the workflow's total timeout, or cancelling the asyncio task) is
observed between items and while waiting for the next one; a running ``process_item``,
``flush_window``, ``on_close`` or cursor commit is never interrupted (set an
``attempt_timeout`` when ``process_item`` can hang: it bounds each item, and so the wait).
The stream then drains: flush the partial window, ``on_close(res, CloseReason.CANCELLED)``,
commit the final cursor, and the run ends cancelled (resumable from that cursor). A
cancellation while ``open`` is still running just propagates (nothing to drain yet).

Delivery is at least once: the items after the last committed cursor are processed again on
resume, so ``open``, ``process_item`` and ``on_close`` must be idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

from cano._core import ErrorStreak, TaskConfig
from cano._values import Duration, count, seconds
from cano.errors import ConfigurationError, TaskTimeoutError

if TYPE_CHECKING:
    from cano.resources import Resources

__all__ = [
    "CloseReason",
    "Continue",
    "Stop",
    "StreamErrorPolicy",
    "StreamTask",
    "StreamWindow",
]

S = TypeVar("S")
T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - item, as in the API
O = TypeVar("O")  # noqa: E741 - output, as in the API
C = TypeVar("C")

_MIN_WINDOW = 0.001
"""Shortest duration window (seconds): a zero window would flush in a busy loop."""


# --------------------------------------------------------------------------------------------
# Value objects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Continue:
    """A window signal: keep consuming the stream. ``cano.Continue()``."""


@dataclass(frozen=True, slots=True)
class Stop(Generic[S]):
    """A window signal: stop consuming and move to ``state``. ``cano.Stop(Step.DONE)``."""

    state: S


class CloseReason(enum.Enum):
    """Why a stream is closing, as passed to ``StreamTask.on_close``."""

    EXHAUSTED = "exhausted"
    """The source ended: ``on_close`` returns the next state."""
    CANCELLED = "cancelled"
    """The run was cancelled or timed out: ``on_close`` cleans up; its state is ignored."""


class StreamWindow:
    """When a stream flushes its buffered outputs.

    - ``StreamWindow.count(n)``: after ``n`` successfully processed items (0 counts as 1);
    - ``StreamWindow.duration(d)``: every ``d`` seconds (at least 1 ms), tumbling, re-armed
      after each flush; a window in which no item succeeded is skipped (no flush call).

    Example::

        def window(self) -> cano.StreamWindow:
            return cano.StreamWindow.count(100)
    """

    __slots__ = ("interval", "size")

    size: int | None
    """Items per window for a count window, else ``None``."""
    interval: float | None
    """Seconds per window for a duration window, else ``None``."""

    def __init__(self, *, size: int | None = None, interval: Duration | None = None) -> None:
        if (size is None) == (interval is None):
            raise ConfigurationError(
                "StreamWindow needs exactly one of size= or interval=; use "
                "StreamWindow.count(n) or StreamWindow.duration(d)"
            )
        if size is not None:
            self.size, self.interval = count(size, "StreamWindow.count(n)", 1), None
        else:
            secs = seconds(interval, "StreamWindow.duration(d)")
            self.size, self.interval = None, max(secs, _MIN_WINDOW)

    @staticmethod
    def count(n: int) -> StreamWindow:
        """Flush after ``n`` successfully processed items (the default is ``count(1)``)."""
        return StreamWindow(size=n)

    @staticmethod
    def duration(d: Duration) -> StreamWindow:
        """Flush every ``d`` seconds (a float, an int or a timedelta; at least 1 ms)."""
        return StreamWindow(interval=d)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StreamWindow)
            and other.size == self.size
            and other.interval == self.interval
        )

    def __hash__(self) -> int:
        return hash(("StreamWindow", self.size, self.interval))

    def __repr__(self) -> str:
        if self.size is not None:
            return f"StreamWindow.count({self.size})"
        return f"StreamWindow.duration({self.interval!r})"


_PolicyKind = Literal["fail_fast", "skip_and_continue", "retry_on_error"]


class StreamErrorPolicy:
    """What a stream does when ``process_item`` raises (or exceeds its attempt timeout).

    - ``fail_fast()`` (the default): the first error fails the task;
    - ``skip_and_continue()``: drop the item (its cursor is not recorded) and go on;
    - ``retry_on_error(n)``: tolerate up to ``n`` consecutive failures (failed items are
      dropped, not pulled again); a success resets the count, failure ``n + 1`` fails.

    Example::

        def on_item_error(self) -> cano.StreamErrorPolicy:
            return cano.StreamErrorPolicy.skip_and_continue()
    """

    __slots__ = ("kind", "max_errors")

    kind: _PolicyKind
    """``"fail_fast"``, ``"skip_and_continue"`` or ``"retry_on_error"``."""
    max_errors: int | None
    """Consecutive failures tolerated by ``retry_on_error``; ``None`` for the others."""

    def __init__(self, kind: _PolicyKind, max_errors: int | None = None) -> None:
        if kind not in ("fail_fast", "skip_and_continue", "retry_on_error"):
            raise ConfigurationError(f"StreamErrorPolicy: unknown kind {kind!r}")
        if kind == "retry_on_error":
            count(max_errors, "StreamErrorPolicy.retry_on_error(max_errors)")
        elif max_errors is not None:
            raise ConfigurationError(f"StreamErrorPolicy {kind}: takes no max_errors")
        self.kind = kind
        self.max_errors = max_errors

    @staticmethod
    def fail_fast() -> StreamErrorPolicy:
        """The first item error fails the task (the default)."""
        return StreamErrorPolicy("fail_fast")

    @staticmethod
    def skip_and_continue() -> StreamErrorPolicy:
        """Drop a failing item and keep consuming (poison messages, corrupt records)."""
        return StreamErrorPolicy("skip_and_continue")

    @staticmethod
    def retry_on_error(max_errors: int) -> StreamErrorPolicy:
        """Tolerate up to ``max_errors`` consecutive item errors."""
        return StreamErrorPolicy("retry_on_error", max_errors)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StreamErrorPolicy)
            and other.kind == self.kind
            and other.max_errors == self.max_errors
        )

    def __hash__(self) -> int:
        return hash(("StreamErrorPolicy", self.kind, self.max_errors))

    def __repr__(self) -> str:
        if self.kind == "retry_on_error":
            return f"StreamErrorPolicy.retry_on_error({self.max_errors})"
        return f"StreamErrorPolicy.{self.kind}()"


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


class StreamTask(Generic[S, I, O, C]):
    """Consumes a source item by item and flushes per window; registered with
    ``workflow.register_stream(state, task)``.

    Generic in the state ``S``, the source item ``I``, the per-item output ``O`` and the
    cursor ``C`` (a JSON-serialisable position; set ``cursor_type`` to a dataclass or
    pydantic model to get that type back after a resume).

    ``config()`` defaults to ``TaskConfig.minimal()``: only its ``attempt_timeout`` is used,
    as a bound on each ``process_item`` (expiry is a ``cano.TaskTimeoutError`` handled by
    ``on_item_error()``). Retries are not applied: re-running would re-open the stream.

    Example::

        class Tail(cano.StreamTask[Step, str, int, int]):
            def window(self) -> cano.StreamWindow:
                return cano.StreamWindow.count(10)

            async def open(self, res: cano.Resources, cursor: int | None) -> AsyncIterator[str]:
                async for offset, line in read_log(start=(cursor or 0)):
                    yield f"{offset}:{line}"

            async def process_item(self, res: cano.Resources, item: str) -> tuple[int, int]:
                offset, line = item.split(":", 1)
                return len(line), int(offset) + 1

            async def flush_window(
                self, res: cano.Resources, outputs: list[int]
            ) -> cano.Continue | cano.Stop[Step]:
                return cano.Stop(Step.DONE) if sum(outputs) > 10_000 else cano.Continue()

            async def on_close(self, res: cano.Resources, reason: cano.CloseReason) -> Step:
                return Step.DONE
    """

    cursor_type: type[C] | None = None

    def config(self) -> TaskConfig:
        """Default ``TaskConfig.minimal()``; only ``attempt_timeout`` (per item) applies."""
        return TaskConfig.minimal()

    def name(self) -> str:
        """The task's name; default the class's ``__qualname__``."""
        return type(self).__qualname__

    def window(self) -> StreamWindow:
        """When to flush; default ``StreamWindow.count(1)`` (after every item)."""
        return StreamWindow.count(1)

    def on_item_error(self) -> StreamErrorPolicy:
        """What an item error does; default ``StreamErrorPolicy.fail_fast()``."""
        return StreamErrorPolicy.fail_fast()

    def open(
        self, res: Resources[Any], cursor: C | None
    ) -> AsyncIterator[I] | Awaitable[AsyncIterator[I]]:
        """Opens the source at ``cursor`` (``None`` on a fresh run).

        Write it as an async generator method (``async def open(...)`` that ``yield``\\ s)
        or as ``async def open(...) -> AsyncIterator[I]`` returning an iterator.
        """
        raise ConfigurationError(f"stream task {self.name()!r} does not implement open()")

    async def process_item(self, res: Resources[Any], item: I) -> tuple[O, C]:
        """Processes one item; returns its output and the cursor just past it."""
        raise ConfigurationError(f"stream task {self.name()!r} does not implement process_item()")

    async def flush_window(self, res: Resources[Any], outputs: list[O]) -> Continue | Stop[S]:
        """Handles one window of outputs; ``Continue()`` or ``Stop(next_state)``.

        Default: ``Continue()`` (the outputs are dropped).
        """
        return Continue()

    async def on_close(self, res: Resources[Any], reason: CloseReason) -> S:
        """Called once the stream ends: returns the next state for ``EXHAUSTED``; for
        ``CANCELLED`` it is a cleanup hook (the returned state is ignored)."""
        raise ConfigurationError(f"stream task {self.name()!r} does not implement on_close()")


# --------------------------------------------------------------------------------------------
# The driver (one task attempt, called by the dispatcher)
# --------------------------------------------------------------------------------------------


async def _drive_stream(
    stream: StreamTask[S, I, O, C],
    res: Resources[Any],
    cursor: C | None,
    commit: Callable[[C], Awaitable[None]],
) -> S:
    """The engine's stream loop for ``register_stream`` (one task attempt).

    ``cursor`` is the resumed cursor (``None`` on a fresh run); ``commit(cursor)`` durably
    records a cursor (a no-op without a checkpoint store). Returns the next state, or, when
    cancelled, drains and re-raises the ``CancelledError``.
    """
    return await _StreamRun(stream, res, commit).run(cursor)


class _End:
    """The source is exhausted."""


class _Tick:
    """The duration window elapsed while waiting for the next item."""


_END = _End()
_TICK = _Tick()


async def _pull(source: AsyncIterator[T]) -> T | _End:
    try:
        return await anext(source)
    except StopAsyncIteration:
        return _END


class _StreamRun(Generic[S, I, O, C]):
    """One consumption of a stream: the window buffer, the pending cursor, the error count.

    Cancellation is handled in one place. Waiting for the source is the only interruptible
    await: a ``CancelledError`` there goes straight to :meth:`_drain`. Every user hook and
    every commit runs in an inner task that a cancellation does not reach (:meth:`_whole`);
    a cancellation that arrives meanwhile is remembered in ``self.cancel`` and acted upon
    once the step is complete (``_check_cancel``), so the drain always starts between items.
    As upstream, an item that fails under ``fail_fast`` while a cancellation is pending still
    fails the task with its own error: the cancellation was not yet observed.
    """

    def __init__(
        self,
        stream: StreamTask[S, I, O, C],
        res: Resources[Any],
        commit: Callable[[C], Awaitable[None]],
    ) -> None:
        self.stream = stream
        self.res = res
        self.commit = commit
        self.name = stream.name()
        window = stream.window()
        policy = stream.on_item_error()
        if not isinstance(window, StreamWindow):
            raise ConfigurationError(
                f"stream task {self.name!r}: window() returned {window!r}, "
                "expected a cano.StreamWindow"
            )
        if not isinstance(policy, StreamErrorPolicy):
            raise ConfigurationError(
                f"stream task {self.name!r}: on_item_error() returned {policy!r}, "
                "expected a cano.StreamErrorPolicy"
            )
        self.window = window
        self.policy = policy
        self.item_timeout = stream.config().attempt_timeout
        self.loop = asyncio.get_running_loop()
        self.outputs: list[O] = []
        self.cursor: C | None = None
        self.has_cursor = False  # a cursor may legitimately be None
        self.errors = ErrorStreak(policy.max_errors or 0)  # consecutive item errors
        self.closed = False  # on_close has been called
        self.cancel: asyncio.CancelledError | None = None
        self.pending_pull: asyncio.Task[I | _End] | None = None

    # ----- the run ----------------------------------------------------------------------

    async def run(self, cursor: C | None) -> S:
        # A cancellation while opening simply propagates: there is nothing to drain yet.
        source = await self._open(cursor)
        try:
            try:
                state = await self._consume(source)
            except asyncio.CancelledError as exc:
                self._note_cancel(exc)
                await self._drain()
                raise self._pending_cancel()  # noqa: B904 - the cancellation itself
        except BaseException:
            await self._dispose(source, quiet=True)
            raise
        await self._dispose(source, quiet=False)
        return state

    async def _open(self, cursor: C | None) -> AsyncIterator[I]:
        opened: Any = self.stream.open(self.res, cursor)
        if not hasattr(opened, "__anext__") and inspect.isawaitable(opened):
            opened = await opened
        if not hasattr(opened, "__anext__") and hasattr(opened, "__aiter__"):
            opened = opened.__aiter__()
        if not hasattr(opened, "__anext__"):
            raise TypeError(
                f"stream task {self.name!r}: open() gave {opened!r}; expected an async "
                "iterator (write open as an async generator or return an AsyncIterator)"
            )
        return cast("AsyncIterator[I]", opened)

    async def _consume(self, source: AsyncIterator[I]) -> S:
        size, interval = self.window.size, self.window.interval
        deadline = None if interval is None else self.loop.time() + interval
        while True:
            self._check_cancel()
            if size is not None and len(self.outputs) >= size:
                stop = await self._flush()
                if stop is not None:
                    return self._finish(stop.state)
                continue
            if deadline is not None and interval is not None and self.loop.time() >= deadline:
                if self.outputs:
                    stop = await self._flush()
                    if stop is not None:
                        return self._finish(stop.state)
                deadline = self.loop.time() + interval  # tumbling: re-armed from now
                continue
            item = await self._next_item(source, deadline)
            if isinstance(item, _Tick):
                continue
            if isinstance(item, _End):
                return await self._exhausted()
            await self._process(item)

    async def _next_item(
        self, source: AsyncIterator[I], deadline: float | None
    ) -> I | _End | _Tick:
        """Waits for the source's next item, or for ``deadline``. Interruptible."""
        if self.pending_pull is None:
            self.pending_pull = self.loop.create_task(_pull(source))
        timeout = None if deadline is None else max(deadline - self.loop.time(), 0.0)
        done, _ = await asyncio.wait((self.pending_pull,), timeout=timeout)
        if not done:
            return _TICK  # the pull stays pending for the next window
        pull, self.pending_pull = self.pending_pull, None
        return pull.result()

    async def _process(self, item: I) -> None:
        try:
            result = await self._whole(self.stream.process_item(self.res, item), self.item_timeout)
        except Exception:
            if self.policy.kind == "fail_fast":
                raise
            if self.policy.kind == "retry_on_error" and self.errors.failed():
                raise
            return
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(
                f"stream task {self.name!r}: process_item returned {result!r}; "
                "expected a tuple (output, cursor)"
            )
        self.errors.succeeded()
        output, cursor = result
        self.outputs.append(output)
        self.cursor, self.has_cursor = cursor, True

    async def _flush(self) -> Stop[S] | None:
        """Flushes the buffered window, then commits its last cursor. ``Stop`` or ``None``."""
        outputs, self.outputs = self.outputs, []
        signal = self._signal(await self._whole(self.stream.flush_window(self.res, outputs)))
        await self._commit()
        return signal if isinstance(signal, Stop) else None

    async def _exhausted(self) -> S:
        if self.outputs:
            outputs, self.outputs = self.outputs, []
            signal = self._signal(await self._whole(self.stream.flush_window(self.res, outputs)))
            if isinstance(signal, Stop):
                await self._commit()
                return self._finish(signal.state)
        # A cancellation that came in during the flush makes this a cancelled close.
        self._check_cancel()
        self.closed = True
        state = await self._whole(self.stream.on_close(self.res, CloseReason.EXHAUSTED))
        await self._commit()
        return self._finish(state)

    async def _drain(self) -> None:
        """The cancellation path: flush the partial window (its signal ignored), then
        ``on_close(CANCELLED)``, then commit the final cursor. A failing flush still gets
        ``on_close`` (its error dropped); the flush error is raised, nothing is committed."""
        if self.pending_pull is not None:
            self.pending_pull.cancel()
            await self._settle(self.pending_pull)
            self.pending_pull = None
        if self.outputs:
            outputs, self.outputs = self.outputs, []
            try:
                await self._whole(self.stream.flush_window(self.res, outputs))
            except Exception:
                if not self.closed:
                    self.closed = True
                    with contextlib.suppress(Exception):
                        await self._whole(self.stream.on_close(self.res, CloseReason.CANCELLED))
                raise
        if not self.closed:
            self.closed = True
            await self._whole(self.stream.on_close(self.res, CloseReason.CANCELLED))
        await self._commit()

    # ----- helpers ----------------------------------------------------------------------

    def _signal(self, signal: object) -> Continue | Stop[S]:
        if isinstance(signal, Continue | Stop):
            return signal
        raise TypeError(
            f"stream task {self.name!r}: flush_window returned {signal!r}; "
            "expected cano.Continue() or cano.Stop(state)"
        )

    async def _commit(self) -> None:
        """Commits the cursor of the last successful item, if one is pending."""
        if self.has_cursor:
            cursor = cast("C", self.cursor)
            self.cursor, self.has_cursor = None, False
            await self._whole(self.commit(cursor))

    def _finish(self, state: S) -> S:
        self._check_cancel()
        return state

    def _note_cancel(self, exc: asyncio.CancelledError) -> None:
        if self.cancel is None:
            self.cancel = exc

    def _check_cancel(self) -> None:
        if self.cancel is not None:
            raise self.cancel

    def _pending_cancel(self) -> asyncio.CancelledError:
        return self.cancel if self.cancel is not None else asyncio.CancelledError()

    async def _whole(self, step: Awaitable[T], limit: float | None = None) -> T:
        """Runs ``step`` to completion in an inner task: a cancellation of the driver is
        remembered, not passed on. ``limit`` (seconds) cancels the step and raises
        ``TaskTimeoutError`` (used for ``process_item``'s attempt timeout)."""
        inner = asyncio.ensure_future(step)
        deadline = None if limit is None else self.loop.time() + limit
        while not inner.done():
            remaining = None if deadline is None else deadline - self.loop.time()
            if remaining is not None and remaining <= 0:
                inner.cancel()
                await self._settle(inner)
                raise TaskTimeoutError(
                    f"stream task {self.name!r}: process_item exceeded its attempt_timeout "
                    f"of {limit}s"
                )
            try:
                await asyncio.wait((inner,), timeout=remaining)
            except asyncio.CancelledError as exc:
                self._note_cancel(exc)
        return inner.result()

    async def _settle(self, fut: asyncio.Future[Any]) -> None:
        """Waits until ``fut`` is done, remembering (not raising) cancellations."""
        while not fut.done():
            try:
                await asyncio.wait((fut,))
            except asyncio.CancelledError as exc:
                self._note_cancel(exc)
        if not fut.cancelled():
            fut.exception()  # retrieved, so asyncio does not log it as never retrieved

    async def _dispose(self, source: AsyncIterator[I], *, quiet: bool) -> None:
        """Stops a pending pull and closes the source (runs an async generator's finally)."""
        if self.pending_pull is not None:
            self.pending_pull.cancel()
            await self._settle(self.pending_pull)
            self.pending_pull = None
        aclose = getattr(source, "aclose", None)
        if aclose is None:
            return
        if quiet:
            with contextlib.suppress(Exception):
                await aclose()
        else:
            await aclose()
