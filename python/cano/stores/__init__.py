"""Checkpoint stores beyond the embedded redb default.

- :class:`SqliteCheckpointStore`: one SQLite file shared by several processes on one machine
  (stdlib :mod:`sqlite3`, no extra dependency).
"""

from __future__ import annotations

from cano.stores.sqlite import SqliteCheckpointStore

__all__ = ["SqliteCheckpointStore"]
