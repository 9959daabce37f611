"""Resources shared by the tasks of a workflow, and their lifecycle.

A :class:`Resources` map is handed to every task of a run. Values are looked up by key,
optionally checked against a type::

    res = cano.Resources().insert("db", Database(url)).insert("store", cano.MemoryStore())
    db = res.get("db", Database)          # typed as Database; ResourceTypeError otherwise

Any value can be stored. A value with a ``setup`` or ``teardown`` method (see
:class:`Resource`) is a *lifecycle resource*: the engine sets every lifecycle resource up in
insertion order before the first state of a run and tears them down in reverse order after
it, whatever its outcome. Overlapping runs sharing one ``Resources`` object share one
setup: resources are set up when the first of them starts and torn down when the last one
ends. Health statuses live in :mod:`cano.health`, the in-memory store in
:mod:`cano.memory_store` (both re-exported here).
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, Self, overload

from cano.errors import (
    ResourceError,
    ResourceNotFoundError,
    ResourceTypeError,
    _type_name,
)
from cano.health import HealthStatus
from cano.memory_store import MISSING, MemoryStore

if TYPE_CHECKING:
    from typing_extensions import TypeVar
else:
    from typing import TypeVar

__all__ = [
    "MISSING",
    "SPLIT_RESULT_KEY",
    "HealthStatus",
    "MemoryStore",
    "Resource",
    "Resources",
]

if TYPE_CHECKING:
    # PEP 696 default (type checkers only; Python 3.11's TypeVar has none), so a bare
    # ``Resources`` annotation means ``Resources[Any]`` rather than an error under --strict.
    K = TypeVar("K", bound=Hashable, default=Any)
else:
    K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

SPLIT_RESULT_KEY: Final[str] = "cano.split_result"
"""The key under which a join-state task finds the :class:`cano.SplitResult` of its split."""

# Teardowns started without an awaiting run (kept referenced until they finish).
_BACKGROUND: set[asyncio.Task[None]] = set()

_log = logging.getLogger("cano")

# How many keys a ResourceNotFoundError lists before eliding the rest.
_KEYS_SHOWN = 10


class Resource(Protocol):
    """What the engine looks for on a stored value; every method is optional.

    - ``async setup()`` runs before the first state of a run (insertion order);
    - ``async teardown()`` runs after the run, whatever its outcome (reverse order);
    - ``health()`` reports a :class:`HealthStatus`; the engine never calls it, only
      :meth:`Resources.check_all_health` does.

    A value that has a ``setup`` or ``teardown`` method is a lifecycle resource; no base
    class or registration is needed (subclassing ``Resource`` explicitly works too and
    inherits no-op defaults)::

        class Database:
            async def setup(self) -> None:
                self.pool = await connect(self.url)

            async def teardown(self) -> None:
                await self.pool.close()
    """

    async def setup(self) -> None:
        """Acquire what the resource needs (connections, files, ...); does nothing by default."""
        return None  # a real body: subclasses may leave this out (not abstract for mypy)

    async def teardown(self) -> None:
        """Release what :meth:`setup` acquired; errors are logged, never raised."""
        return None

    def health(self) -> HealthStatus:
        """Report whether the resource can currently be used (healthy unless overridden)."""
        return HealthStatus.healthy()


class Resources(Generic[K]):
    """A map from keys to the values tasks need, with the lifecycle of those values.

    Keys are any hashable values (strings or ``Enum`` members are usual); ``Resources``
    without a type argument accepts any key. Values are stored as they are, never copied.
    ``get`` raises :class:`cano.ResourceNotFoundError` (a ``KeyError``) for a missing key
    and :class:`cano.ResourceTypeError` (a ``TypeError``) when the value is not of the
    requested type::

        res: Resources[str] = Resources().insert("store", MemoryStore())
        store = res.get("store", MemoryStore)

    A ``Resources`` object belongs to one event loop at a time and is not thread-safe.
    """

    __slots__ = ("_entries", "_has_lifecycle", "_joining", "_setting_up", "_transition", "_users")

    _has_lifecycle: bool
    """True once a value with ``setup`` or ``teardown`` was inserted (read by the engine)."""

    def __init__(self) -> None:
        """Create an empty map."""
        self._entries: dict[K, object] = {}
        self._has_lifecycle = False
        # Runs currently holding a lease (resources are set up while this is > 0).
        self._users = 0
        # Resolved when the setup (True: waiters are counted in) or teardown in progress
        # ends; None when none is.
        self._transition: asyncio.Future[bool] | None = None
        self._setting_up = False
        # Runs waiting on the setup in progress, counted in when it succeeds.
        self._joining = 0

    @staticmethod
    def empty() -> Resources[Any]:
        """An empty map, for workflows that need no resources."""
        return Resources()

    def insert(self, key: K, value: object) -> Self:
        """Store ``value`` under ``key`` and return ``self``, so calls chain.

        Raises :class:`cano.ResourceError` if ``key`` is already used, or if ``value`` has a
        lifecycle while these resources are set up for a run (it would never be set up).
        """
        try:
            hash(key)
        except TypeError:
            raise ResourceError(
                f"Resources.insert(key): a resource key must be hashable, got {key!r:.80}"
            ) from None
        if key in self._entries:
            raise ResourceError(
                f"duplicate resource key {_key_label(key)}: a resource is already stored there"
            )
        lifecycle = _is_lifecycle(value)
        if lifecycle and (self._users > 0 or self._transition is not None):
            raise ResourceError(
                f"cannot insert resource {_key_label(key)} while these resources are set up "
                "for a run: its setup() would never run"
            )
        self._entries[key] = value
        if lifecycle:
            self._has_lifecycle = True
        return self

    @overload
    def get(self, key: K, type_: None = None) -> Any: ...

    @overload
    def get(self, key: K, type_: type[T]) -> T: ...

    def get(self, key: K, type_: type[Any] | None = None) -> Any:
        """The value stored under ``key``, checked with ``isinstance`` when ``type_`` is given.

        Raises :class:`cano.ResourceNotFoundError` (also a ``KeyError``) when nothing is
        stored under ``key``, and :class:`cano.ResourceTypeError` (also a ``TypeError``) when
        the value is not an instance of ``type_``; both messages name the key.
        """
        try:
            value = self._entries[key]
        except KeyError:
            raise ResourceNotFoundError(self._not_found_message(key)) from None
        if type_ is not None:
            _check_type(key, value, type_)
        return value

    @overload
    def try_get(self, key: K, type_: None = None) -> Any | None: ...

    @overload
    def try_get(self, key: K, type_: type[T]) -> T | None: ...

    def try_get(self, key: K, type_: type[Any] | None = None) -> Any | None:
        """Like :meth:`get`, but ``None`` when nothing is stored under ``key``.

        A value of the wrong type still raises :class:`cano.ResourceTypeError`.
        """
        try:
            value = self._entries[key]
        except KeyError:
            return None
        if type_ is not None:
            _check_type(key, value, type_)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[K]:
        """The keys, in insertion order."""
        return list(self._entries)

    def __repr__(self) -> str:
        return f"Resources({self.keys()!r})"

    async def setup_all(self) -> None:
        """Set up every lifecycle resource, in insertion order.

        If a ``setup`` raises, the resources already set up are torn down in reverse order
        (the failing one is not) and the original exception is re-raised unchanged.
        """
        lifecycle = self._lifecycle()
        for index, (_, value) in enumerate(lifecycle):
            try:
                await _call_hook(value, "setup")
            except BaseException:
                await _teardown_in_reverse(lifecycle[:index])
                raise

    async def teardown_all(self) -> None:
        """Tear down every lifecycle resource, in reverse insertion order.

        A ``teardown`` that raises is logged on the ``cano`` logger and the others still
        run; nothing is raised. If the calling task is cancelled meanwhile, the remaining
        teardowns still run and the cancellation is re-raised at the end.
        """
        await _teardown_in_reverse(self._lifecycle())

    async def check_all_health(self) -> dict[K, HealthStatus]:
        """The health of every stored value, by key, probed one after the other.

        A value without a ``health`` method counts as healthy; ``health`` may be a plain or an
        ``async`` method. A ``health`` that raises makes that value unhealthy (the reason
        names the exception); one that returns something other than a :class:`HealthStatus`
        raises :class:`cano.ResourceTypeError`.
        """
        return {key: await _probe_health(key, value) for key, value in list(self._entries.items())}

    async def aggregate_health(self) -> HealthStatus:
        """The worst status of :meth:`check_all_health` (healthy when there is nothing)."""
        worst = HealthStatus.healthy()
        for status in (await self.check_all_health()).values():
            if status.severity > worst.severity:
                worst = status
        return worst

    async def _acquire(self) -> None:
        """Take a lease for one run, setting the resources up if no run holds one.

        Runs that arrive while a setup is in progress join it: they are counted as users as
        soon as it succeeds, so the first run cannot tear the resources down under them; if
        it fails, they all raise its exception and none holds a lease. Runs that arrive
        while the last lease's teardown is in progress wait for it, then set up again.
        Cancelling a waiting run leaves the lease count unchanged.
        """
        while (pending := self._transition) is not None:
            if not self._setting_up:
                # A teardown is in progress: wait for it, then look again.
                await asyncio.shield(pending)
                continue
            self._joining += 1
            try:
                # shield: cancelling this waiter must not cancel the setup others wait for.
                counted_in = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.done():
                    self._joining -= 1
                elif not pending.cancelled() and pending.exception() is None and pending.result():
                    self._drop_lease()  # counted in just before we were cancelled
                raise
            if counted_in:
                return
            # The run setting up was cancelled; it released its joiners: try again.
        if self._users > 0:
            self._users += 1
            return
        transition: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._transition = transition
        self._setting_up = True
        self._joining = 0
        try:
            await self.setup_all()
        except Exception as exc:
            self._end_transition()
            transition.set_exception(exc)
            transition.exception()  # mark it retrieved: there may be no waiter
            raise
        except BaseException:
            # Cancelled (or interrupted) while setting up: the waiters were not, so they
            # loop and one of them sets up again.
            self._end_transition()
            transition.set_result(False)
            raise
        self._users = 1 + self._joining
        self._end_transition()
        transition.set_result(True)

    async def _release(self) -> None:
        """Return a lease; the last one tears the resources down.

        Teardown errors are logged, never raised. Raises ``RuntimeError`` when no lease is
        held (an engine bug).
        """
        if self._users <= 0:
            raise RuntimeError("Resources._release() called without a matching _acquire()")
        self._users -= 1
        if self._users == 0:
            await self._teardown()

    async def _teardown(self) -> None:
        transition: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._transition = transition
        self._setting_up = False
        try:
            await self.teardown_all()
        finally:
            self._transition = None
            transition.set_result(False)

    def _drop_lease(self) -> None:
        """Gives a lease back without awaiting (a waiter cancelled at the wrong moment)."""
        self._users -= 1
        if self._users == 0:
            task = asyncio.get_running_loop().create_task(self._teardown())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    def _end_transition(self) -> None:
        self._transition = None
        self._setting_up = False
        self._joining = 0

    def _overlay(self, extra: dict[Any, object]) -> Resources[Any]:
        """A view with ``extra`` added, for one state's task (no lifecycle of its own)."""
        view: Resources[Any] = Resources()
        view._entries.update(self._entries)
        view._entries.update(extra)
        return view

    def _lifecycle(self) -> list[tuple[K, object]]:
        return [(key, value) for key, value in self._entries.items() if _is_lifecycle(value)]

    def _not_found_message(self, key: object) -> str:
        if not self._entries:
            return f"no resource under key {_key_label(key)}: Resources is empty"
        shown = ", ".join(_key_label(k) for k in list(self._entries)[:_KEYS_SHOWN])
        if len(self._entries) > _KEYS_SHOWN:
            shown += ", ..."
        return f"no resource under key {_key_label(key)} (stored keys: {shown})"


def _key_label(key: object) -> str:
    if isinstance(key, enum.Enum):
        return f"{type(key).__name__}.{key.name}"
    return repr(key)


def _check_type(key: object, value: object, type_: Any) -> None:
    try:
        matches = isinstance(value, type_)
    except TypeError as exc:
        # ``list[int]`` and other parameterised generics: check against the bare class.
        origin = getattr(type_, "__origin__", None)
        if not isinstance(origin, type):
            raise ResourceTypeError(
                f"resource {_key_label(key)} cannot be checked against {_type_name(type_)}: {exc}"
            ) from exc
        matches = isinstance(value, origin)
    if not matches:
        raise ResourceTypeError(
            f"resource {_key_label(key)} is a {_type_name(type(value))}, "
            f"not the requested {_type_name(type_)}"
        )


def _is_lifecycle(value: object) -> bool:
    # A class stored as a value has unbound methods, not a lifecycle of its own.
    if isinstance(value, type):
        return False
    return callable(getattr(value, "setup", None)) or callable(getattr(value, "teardown", None))


async def _call_hook(value: object, name: str) -> None:
    hook = getattr(value, name, None)
    if not callable(hook):
        return
    result = hook()
    if inspect.isawaitable(result):
        await result


async def _teardown_in_reverse(entries: Iterable[tuple[Any, object]]) -> None:
    interrupted: BaseException | None = None
    for key, value in reversed(list(entries)):
        try:
            await _call_hook(value, "teardown")
        except Exception:
            _log.exception("teardown of resource %s failed", _key_label(key))
        except BaseException as exc:
            # Cancelled mid-teardown: finish releasing the others, then honour it.
            if interrupted is None:
                interrupted = exc
    if interrupted is not None:
        raise interrupted


async def _probe_health(key: object, value: object) -> HealthStatus:
    health = getattr(value, "health", None)
    if isinstance(value, type) or not callable(health):
        return HealthStatus.healthy()
    try:
        status = health()
        if inspect.isawaitable(status):
            status = await status
    except Exception as exc:
        return HealthStatus.unhealthy(f"health() raised {type(exc).__name__}: {exc}")
    if not isinstance(status, HealthStatus):
        raise ResourceTypeError(
            f"health() of resource {_key_label(key)} returned a {_type_name(type(status))}, "
            "not a HealthStatus"
        )
    return status


def _release_in_background(resources: Resources[Any]) -> None:
    """Returns the lease of a run that was closed without being awaited to its end: its
    ``_release()`` runs as a task kept referenced until it finishes. Without a running loop
    (the interpreter is shutting down) the lease is dropped without teardown."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    task = loop.create_task(resources._release())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
