"""Fixtures of the crash tests: child processes that are always reaped."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pg_server
import pytest
from test_sigkill import Child


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:  # never leave a child behind, whatever happened
        child.kill()


@pytest.fixture
def pg() -> Iterator[str]:
    """``postgresql://…#SCHEMA``: a schema of the test's own on the tests' PostgreSQL server,
    dropped afterwards (skipped without a server)."""
    dsn = pg_server.test_dsn()
    if dsn is None:
        pytest.skip("no PostgreSQL: apt-get install -y postgresql, or set CANO_PG_DSN")
    schema = pg_server.fresh_schema()
    yield f"{dsn}#{schema}"
    asyncio.run(pg_server.drop_schema(dsn, schema))
