"""Shared by the child processes of ``test_sigkill.py``: a journal and a readiness line.

The journal is an append-only text file of side effects, one ``os.write`` per line on an
``O_APPEND`` descriptor, so every line written before a SIGKILL is in the file afterwards.
Each line is ``<pid> <event...>``. Readiness is a ``READY`` line on stdout: the parent waits
for it, then kills the child.
"""

from __future__ import annotations

import os
import sys
from typing import Any


class Journal:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.pid = os.getpid()

    def note(self, *words: object) -> None:
        line = " ".join([str(self.pid), *map(str, words)]) + "\n"
        os.write(self.fd, line.encode())


def ready(tag: str = "") -> None:
    """Tells the parent that the child reached the point where it should be killed."""
    sys.stdout.write(f"READY {tag}\n")
    sys.stdout.flush()


def result(text: str) -> None:
    sys.stdout.write(f"RESULT {text}\n")
    sys.stdout.flush()


def open_store(spec: str) -> Any:
    """The store a child serves: ``postgresql://…#SCHEMA`` (PostgreSQL, in that schema), a
    ``.redb`` file, or a SQLite file."""
    import cano

    if spec.startswith("postgresql://"):
        from cano.stores.postgres import PostgresCheckpointStore

        dsn, _, schema = spec.partition("#")
        return PostgresCheckpointStore(dsn, schema=schema or "cano")
    if spec.endswith(".redb"):
        return cano.RedbCheckpointStore(spec)
    return cano.SqliteCheckpointStore(spec)
