"""JSON encoding of what the engine persists: step cursors and compensation outputs.

orjson writes dataclasses, enums, datetimes and UUIDs natively; pydantic models are dumped
in JSON mode. Decoding rebuilds the declared type (``cursor_type`` / ``output_type``):
``T.model_validate(data)`` for pydantic models, ``T(**data)`` for dataclasses and other
classes taking keyword arguments from a JSON object, ``T(data)`` otherwise. Nothing is
ever unpickled or executed.

A persisted value must come back *exactly* as it was: a task resumed after a crash sees the
same value as the run before it. So :func:`encode` decodes what it wrote and compares:
without a declared type the value must be plain JSON (``dict`` with ``str`` keys, ``list``,
``str``, ``int``, finite ``float``, ``bool``, ``None``); with one, the rebuilt value must be
of the same type and equal to it. Anything else — a tuple (it would come back a list),
``nan``, an enum or a datetime in a plain dict (they would come back as strings), a
dataclass field that does not survive ``T(**data)`` — is refused with a ``CheckpointError``
naming the task and what would change.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from cano.errors import CheckpointError

__all__ = ["decode", "encode", "same"]


def _default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"Type is not JSON serializable: {type(value).__qualname__}")


def same(a: object, b: object) -> bool:
    """Equal, and of the same types all the way down (``1 != 1.0``, ``(1,) != [1]``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:
        return False


def encode(value: object, type_: type[Any] | None = None, *, task: str, what: str) -> bytes:
    """JSON bytes of ``value``, checked to decode back to it (as ``type_`` when given);
    CheckpointError naming the task, the type and what would change otherwise."""
    try:
        blob = orjson.dumps(value, default=_default)
    except TypeError as err:
        raise CheckpointError(
            f"cannot persist the {what} of task {task!r}: a {type(value).__qualname__} is not "
            f"JSON-serialisable ({err}); use JSON types, a dataclass or a pydantic model"
        ) from err
    back = decode(blob, type_, task=task, what=what)
    if type_ is not None and type(back) is type(value) and type(value).__eq__ is object.__eq__:
        # No equality of its own: compare what it writes.
        unchanged = orjson.dumps(back, default=_default) == blob
    else:
        unchanged = same(value, back)
    if not unchanged:
        hint = (
            f"set {'output_type' if 'output' in what else 'cursor_type'} to a pydantic model or "
            "a type that rebuilds it exactly"
            if type_ is None
            else f"make {getattr(type_, '__qualname__', type_)} rebuild it exactly from JSON"
        )
        raise CheckpointError(
            f"cannot persist the {what} of task {task!r}: {_short(value)} would not survive "
            f"a crash unchanged (after a resume it would be {_short(back)}); use plain JSON "
            f"values (no tuples, sets, nan, enums or datetimes), or {hint}"
        )
    return blob


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def decode(data: bytes, type_: type[Any] | None, *, task: str, what: str) -> Any:
    """The value encoded in ``data``, rebuilt as ``type_`` when given."""
    try:
        value = orjson.loads(data)
        if type_ is None:
            return value
        validate = getattr(type_, "model_validate", None)
        if callable(validate):
            return validate(value)
        if isinstance(value, type_) and not dataclasses.is_dataclass(type_):
            return value
        if isinstance(value, dict):
            return type_(**value)
        return type_(value)
    except Exception as err:
        raise CheckpointError(
            f"cannot rebuild the {what} of task {task!r} as "
            f"{getattr(type_, '__qualname__', type_)!r}: {err}"
        ) from err
