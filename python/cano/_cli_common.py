"""What the ``cano`` command's parts share: its two failures, tables, ``MODULE:ATTR``,
ages such as ``7d``."""

from __future__ import annotations

import importlib
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from cano.workflow import Workflow

__all__ = ["Failure", "UsageError", "age_seconds", "load_target", "since_time", "table"]


class UsageError(Exception):
    """Bad arguments: exit 2."""


class Failure(Exception):
    """A user-facing failure: exit 1."""


def table(header: list[str], rows: list[list[str]], *, indent: str = "") -> None:
    """Prints ``rows`` under ``header`` in aligned columns."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for line in [header, *rows]:
        text = "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)).rstrip()
        print(indent + text)


def load_target(spec: str, command: str) -> Any:
    """The object named by ``MODULE:ATTR`` (called when it is a function), imported with
    the current directory on ``sys.path``; the user's import errors become one line."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"cano {command}: expected MODULE:ATTR, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise Failure(f"cannot import {module_name!r}: {err}") from err
    except Exception as err:  # the user's module failed while importing
        raise Failure(f"importing {module_name!r} raised {type(err).__name__}: {err}") from err
    target = getattr(module, attr, None)
    if target is None:
        raise Failure(f"{module_name!r} has no attribute {attr!r}")
    if callable(target) and not isinstance(target, Workflow):
        try:
            return target()
        except Exception as err:  # the user's factory failed
            raise Failure(f"{spec}() raised {type(err).__name__}: {err}") from err
    return target


_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def age_seconds(text: str) -> float | None:
    """Seconds in an age such as ``30m``, ``12h``, ``7d`` or ``2w``; None if it is none."""
    match = _AGE.match(text.strip())
    return None if match is None else float(match.group(1)) * _UNITS[match.group(2)]


def since_time(text: str) -> datetime | None:
    """The time an age ago (``1h``), or an ISO 8601 time (UTC when it names no zone);
    None if ``text`` is neither."""
    age = age_seconds(text)
    if age is not None:
        return datetime.now(UTC) - timedelta(seconds=age)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
