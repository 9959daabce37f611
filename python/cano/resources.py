"""Resources shared by the tasks of a workflow, their lifecycle, and the in-memory store.

A :class:`Resources` map is handed to every task of a run. Values are looked up by key,
optionally checked against a type::

    res = cano.Resources().insert("db", Database(url)).insert("store", cano.MemoryStore())
    db = res.get("db", Database)          # typed as Database; ResourceTypeError otherwise

Any value can be stored. A value with a ``setup`` or ``teardown`` method (see
:class:`Resource`) is a *lifecycle resource*: the engine sets every lifecycle resource up in
insertion order before the first state of a run and tears them down in reverse order after
it, whatever its outcome. Overlapping runs sharing one ``Resources`` object share one
setup: resources are set up when the first of them starts and torn down when the last one
ends.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import threading
import types
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Protocol, Self, overload

from cano.errors import (
    KeyNotFoundError,
    ResourceError,
    ResourceNotFoundError,
    ResourceTypeError,
    StoreError,
)

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


HealthKind = Literal["healthy", "degraded", "unhealthy"]

_SEVERITY: Final[dict[str, int]] = {"healthy": 0, "degraded": 1, "unhealthy": 2}


class HealthStatus:
    """The health of one resource: healthy, degraded (usable, with a reason) or unhealthy.

    Statuses are immutable and hashable, and order by severity
    (healthy < degraded < unhealthy), so ``max(statuses)`` is the worst one::

        HealthStatus.healthy().is_healthy                 # True
        HealthStatus.degraded("replica lag").reason       # 'replica lag'
        HealthStatus.degraded("slow") < HealthStatus.unhealthy("down")   # True
    """

    __slots__ = ("_kind", "_reason")

    _kind: HealthKind
    _reason: str | None

    def __init__(self, kind: HealthKind, reason: str | None = None) -> None:
        """Prefer :meth:`healthy`, :meth:`degraded` and :meth:`unhealthy`.

        Raises ``ValueError`` for an unknown kind, a reason on a healthy status or a
        missing reason on any other.
        """
        if kind not in _SEVERITY:
            raise ValueError(f"unknown health kind {kind!r}: use healthy, degraded or unhealthy")
        if (kind == "healthy") != (reason is None):
            raise ValueError(
                f"a {kind} HealthStatus {'takes no' if kind == 'healthy' else 'needs a'} reason"
            )
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_reason", reason)

    @classmethod
    def healthy(cls) -> HealthStatus:
        """The resource works normally."""
        return cls("healthy")

    @classmethod
    def degraded(cls, reason: str) -> HealthStatus:
        """The resource works, but not as it should (``reason`` says why)."""
        return cls("degraded", reason)

    @classmethod
    def unhealthy(cls, reason: str) -> HealthStatus:
        """The resource cannot be used (``reason`` says why)."""
        return cls("unhealthy", reason)

    @property
    def kind(self) -> HealthKind:
        """``"healthy"``, ``"degraded"`` or ``"unhealthy"``."""
        return self._kind

    @property
    def is_healthy(self) -> bool:
        """True only for a healthy status (a degraded one is not healthy)."""
        return self._kind == "healthy"

    @property
    def reason(self) -> str | None:
        """Why the resource is degraded or unhealthy; ``None`` when healthy."""
        return self._reason

    @property
    def severity(self) -> int:
        """0 when healthy, 1 when degraded, 2 when unhealthy."""
        return _SEVERITY[self._kind]

    def _order(self) -> tuple[int, str]:
        # Ties in severity are broken by reason so that the order is total.
        return (self.severity, self._reason or "")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"HealthStatus is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"HealthStatus is immutable: cannot delete {name!r}")

    def __reduce__(self) -> tuple[type[HealthStatus], tuple[HealthKind, str | None]]:
        return (HealthStatus, (self._kind, self._reason))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HealthStatus):
            return NotImplemented
        return self._kind == other._kind and self._reason == other._reason

    def __hash__(self) -> int:
        return hash((self._kind, self._reason))

    def __lt__(self, other: HealthStatus) -> bool:
        if not isinstance(other, HealthStatus):
            return NotImplemented
        return self._order() < other._order()

    def __le__(self, other: HealthStatus) -> bool:
        if not isinstance(other, HealthStatus):
            return NotImplemented
        return self._order() <= other._order()

    def __gt__(self, other: HealthStatus) -> bool:
        if not isinstance(other, HealthStatus):
            return NotImplemented
        return self._order() > other._order()

    def __ge__(self, other: HealthStatus) -> bool:
        if not isinstance(other, HealthStatus):
            return NotImplemented
        return self._order() >= other._order()

    def __repr__(self) -> str:
        if self._reason is None:
            return f"HealthStatus.{self._kind}()"
        return f"HealthStatus.{self._kind}({self._reason!r})"


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


def _type_name(tp: object) -> str:
    if isinstance(tp, type) and not isinstance(tp, types.GenericAlias):
        if tp.__module__ == "builtins":
            return tp.__qualname__
        return f"{tp.__module__}.{tp.__qualname__}"
    return repr(tp)


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


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "cano.MISSING"


MISSING: Final = _Missing.MISSING
"""Default of :meth:`MemoryStore.get`: no default given, a missing key raises."""


class MemoryStore:
    """A thread-safe in-memory key-value store that tasks share through :class:`Resources`.

    Values are stored by reference: ``get`` returns the very object ``put`` stored, and
    every holder of the store sees the same data. It has no setup or teardown and is always
    healthy::

        store = MemoryStore()
        store.put("count", 1)
        store.append("events", "started")     # ["started"]
        store.get("missing", None)            # None
        store.get("missing")                  # KeyNotFoundError (also a KeyError)
    """

    __slots__ = ("_data", "_lock")

    def __init__(self) -> None:
        """Create an empty store."""
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()

    def put(self, key: str, value: object) -> None:
        """Store ``value`` under ``key``, replacing any previous value (of any type)."""
        with self._lock:
            self._data[key] = value

    def get(self, key: str, default: Any = MISSING) -> Any:
        """The value under ``key``; ``default`` if given and the key is missing.

        Raises :class:`cano.KeyNotFoundError` (also a ``KeyError``) naming the key when it is
        missing and no default was given.
        """
        with self._lock:
            try:
                return self._data[key]
            except KeyError:
                if default is MISSING:
                    raise KeyNotFoundError(f"key {key!r} not found in MemoryStore") from None
                return default

    def remove(self, key: str) -> None:
        """Delete ``key``; a missing key is silently ignored."""
        with self._lock:
            self._data.pop(key, None)

    def append(self, key: str, item: object) -> None:
        """Append ``item`` to the list under ``key``, creating ``[item]`` if the key is missing.

        The stored list is extended in place. Raises :class:`cano.StoreError` naming the key
        and the type found when the existing value is not a list (the value is unchanged).
        """
        with self._lock:
            current = self._data.get(key, MISSING)
            if current is MISSING:
                self._data[key] = [item]
            elif isinstance(current, list):
                current.append(item)
            else:
                raise StoreError(
                    f"cannot append to key {key!r} in MemoryStore: its value is a "
                    f"{_type_name(type(current))}, not a list"
                )

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def keys(self) -> list[str]:
        """A snapshot of the keys, in insertion order."""
        with self._lock:
            return list(self._data)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def clear(self) -> None:
        """Remove every key."""
        with self._lock:
            self._data.clear()

    def health(self) -> HealthStatus:
        """Always healthy."""
        return HealthStatus.healthy()

    def __repr__(self) -> str:
        return f"MemoryStore({len(self)} keys)"


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
