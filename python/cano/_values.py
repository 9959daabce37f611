"""Values given by users, checked by one rule shared with the Rust bindings.

Each reader names what the value is for (``"Pending(delay)"``), so a wrong value is a
``ConfigurationError`` naming the parameter and the value: never a bare ``TypeError``.
"""

from __future__ import annotations

import sys
from datetime import timedelta

from cano import _core

Duration = float | int | timedelta
"""Seconds as a number, or a timedelta."""

MAX_COUNT = sys.maxsize


def seconds(value: object, what: str) -> float:
    """``value`` in seconds: an int, float or timedelta, finite, between 0 and 1e9."""
    return _core._seconds(value, what)


def count(value: object, what: str, minimum: int = 0) -> int:
    """An int (not a bool) between ``minimum`` and 2**63 - 1."""
    return _core._count(value, what, minimum)


def number(value: object, what: str, minimum: float, maximum: float) -> float:
    """A finite int or float (not a bool) between ``minimum`` and ``maximum``."""
    return _core._number(value, what, minimum, maximum)
