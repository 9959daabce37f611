"""What the ``cano`` command's parts share: its two failures, tables, ``MODULE:ATTR``."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from cano.workflow import Workflow

__all__ = ["Failure", "UsageError", "load_target", "table"]


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
