"""Checkpoint stores beyond the embedded redb default, imported on first use.

- :class:`SqliteCheckpointStore`: one SQLite file shared by several processes on one machine
  (stdlib :mod:`sqlite3`, no extra dependency).
- :class:`PostgresCheckpointStore` (``cano.stores.postgres``, extra ``cano[postgres]``):
  PostgreSQL, for Workers on any number of machines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cano.stores.sqlite import SqliteCheckpointStore

__all__ = ["SqliteCheckpointStore"]


def __getattr__(name: str) -> Any:
    if name == "SqliteCheckpointStore":
        from cano.stores.sqlite import SqliteCheckpointStore  # noqa: PLC0415 - lazily

        return SqliteCheckpointStore
    raise AttributeError(f"module 'cano.stores' has no attribute {name!r}")
