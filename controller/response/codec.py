"""Frozen dataclasses to JSON and back, generically, for the response store.

A response's entity and its action's plan are stored as JSON objects.  Decoding
follows the dataclass's type hints (str, int, float, bool, `X | None`,
`tuple[X, ...]`, nested dataclasses), strictly: a wrong type or an unknown key
is an error naming its place; a key missing from an older row takes the field's
default.  No action writes a codec of its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Union


class CodecError(ValueError):
    """A stored value that does not fit its dataclass."""


def encode(obj: Any) -> Any:
    """A dataclass (or value) as plain JSON data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [encode(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(encode(obj), allow_nan=False)


def decode(cls: type, data: Any, where: str) -> Any:
    """`data` (parsed JSON) as an instance of the dataclass `cls`; CodecError if it does not fit."""
    if not isinstance(data, dict):
        raise CodecError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CodecError(f"{where}: unknown fields {unknown}, expected {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _value(hints[name], data[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise CodecError(f"{where}: required field {name!r} is missing")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise CodecError(f"{where}: {e}") from None


def _value(hint: Any, v: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if v is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _value(arg, v, where)
            except CodecError as e:
                errors.append(str(e))
        raise CodecError(errors[0] if len(errors) == 1 else f"{where}: {v!r} fits none of {hint}")
    if origin is tuple:
        if not isinstance(v, list):
            raise CodecError(f"{where}: expected a list, got {type(v).__name__}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_value(args[0], x, f"{where}[{i}]") for i, x in enumerate(v))
        if len(args) != len(v):
            raise CodecError(f"{where}: expected {len(args)} items, got {len(v)}")
        return tuple(_value(a, x, f"{where}[{i}]") for i, (a, x) in enumerate(zip(args, v)))
    if dataclasses.is_dataclass(hint):
        return decode(hint, v, where)
    if hint is bool:
        if not isinstance(v, bool):
            raise CodecError(f"{where}: expected bool, got {type(v).__name__}")
        return v
    if hint is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise CodecError(f"{where}: expected int, got {type(v).__name__}")
        return v
    if hint is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise CodecError(f"{where}: expected a finite number, got {v!r}")
        return float(v)
    if hint is str:
        if not isinstance(v, str):
            raise CodecError(f"{where}: expected str, got {type(v).__name__}")
        return v
    raise CodecError(f"{where}: cannot decode a {hint!r}")  # pragma: no cover - a bug in a dataclass
