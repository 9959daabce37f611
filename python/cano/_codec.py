"""JSON encoding of what the engine persists: step cursors and compensation outputs.

orjson writes dataclasses, enums, datetimes and UUIDs natively; pydantic models are dumped
in JSON mode. Decoding rebuilds the declared type (``cursor_type`` / ``output_type``):
``T.model_validate(data)`` for pydantic models, ``T(**data)`` for dataclasses and other
classes taking keyword arguments from a JSON object, ``T(data)`` otherwise. Nothing is
ever unpickled or executed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from cano.errors import CheckpointError

__all__ = ["decode", "encode"]


def _default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"Type is not JSON serializable: {type(value).__qualname__}")


def encode(value: object, *, task: str, what: str) -> bytes:
    """JSON bytes of ``value``; CheckpointError naming the task and the type otherwise."""
    try:
        return orjson.dumps(value, default=_default)
    except TypeError as err:
        raise CheckpointError(
            f"cannot persist the {what} of task {task!r}: a {type(value).__qualname__} is not "
            f"JSON-serialisable ({err}); use JSON types, a dataclass or a pydantic model"
        ) from err


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
