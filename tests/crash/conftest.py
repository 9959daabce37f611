"""Fixtures of the crash tests: child processes that are always reaped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_sigkill import Child


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:  # never leave a child behind, whatever happened
        child.kill()
