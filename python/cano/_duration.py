"""Durations given by users: float or int seconds, or ``datetime.timedelta``."""

from __future__ import annotations

import math
from datetime import timedelta

from cano.errors import ConfigurationError

Duration = float | int | timedelta
"""Seconds as a number, or a timedelta."""


def seconds(value: object, what: str) -> float:
    """Returns ``value`` in seconds; negative, NaN or non-durations raise ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise ConfigurationError(
            f"{what}: expected seconds (int or float) or a timedelta, got {value!r}"
        )
    secs = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if math.isnan(secs) or secs < 0:
        raise ConfigurationError(f"{what}: duration must be >= 0 seconds, got {value!r}")
    return secs
