"""MemoryStore: a thread-safe in-memory key-value store tasks share through Resources."""

from __future__ import annotations

import enum
import threading
from typing import Any, Final

from cano.errors import KeyNotFoundError, StoreError, _type_name
from cano.health import HealthStatus

__all__ = ["MISSING", "MemoryStore"]


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
