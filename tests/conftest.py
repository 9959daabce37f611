"""Shared fixtures: the checkpoint stores every recovery test runs against."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import cano
import pytest
from cano.store import InMemoryCheckpointStore, RedbCheckpointStore
from pg_server import postgres_store
from stores import DictStore


@pytest.fixture(params=["memory", "sqlite", "redb", "postgres"])
async def record_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """Each store that keeps run records and serves workers."""
    if request.param == "memory":
        yield InMemoryCheckpointStore()
    elif request.param == "redb":
        async with RedbCheckpointStore(tmp_path / "records.redb") as redb:
            yield redb
    elif request.param == "postgres":
        async with postgres_store() as pg:
            yield pg
    else:
        async with cano.SqliteCheckpointStore(tmp_path / "records.db") as sqlite:
            yield sqlite


@pytest.fixture(params=["redb", "sqlite", "memory", "dict"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Each durable store of cano, plus the smallest one a user could write."""
    if request.param == "redb":
        redb = RedbCheckpointStore(tmp_path / "checkpoints.redb")
        yield redb
        redb.close()
    elif request.param == "sqlite":
        sqlite = cano.SqliteCheckpointStore(tmp_path / "checkpoints.db")
        yield sqlite
        sqlite.close()
    elif request.param == "memory":
        yield InMemoryCheckpointStore()
    else:
        yield DictStore()
