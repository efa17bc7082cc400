"""The one encoder and the one decoder of the daemon's API documents (`devmesh.api.types`).

`encode(value)` gives plain JSON data; `decode(Type, data)` checks it field by field and gives
the value, or raises `DecodeError` naming the field (`weights.v1: expected an integer, got
'x'`). Both are driven by the dataclasses' type hints, so a field added to a type is carried
both ways with no code here. Unknown keys are ignored (fields may be added within /v1);
missing keys take the field's default, or are an error where it has none.

No third-party import here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from enum import Enum
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")

MAX_DEPTH = 32  # no document of the API nests deeper; deeper input is refused, not recursed


class DecodeError(ValueError):
    """A document that is not what its type says; the message names the field."""


def encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in _fields(type(value))}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    return value


def dumps(value: Any) -> bytes:
    return json.dumps(encode(value), separators=(",", ":"), allow_nan=False).encode()


def loads(raw: bytes | str) -> Any:
    """JSON text to data, refusing what JSON does not have (NaN, Infinity) and nesting past
    MAX_DEPTH (Python's parser would recurse until RecursionError)."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not UTF-8: {exc}") from None
    depth = 0
    in_string = escaped = False
    for ch in text:  # a cheap pre-scan: json.loads itself has no depth limit
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise DecodeError(f"the JSON nests deeper than {MAX_DEPTH} levels")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise DecodeError(f"not JSON this API takes: {exc}") from None


def _no_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not a number JSON has")


def decode(cls: type[T], data: Any, path: str = "") -> T:
    return typing.cast(T, _decode(cls, data, path))


@cache
def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    return tuple(dataclasses.fields(cls))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _where(path: str) -> str:
    return f"{path}: " if path else ""


def _decode(tp: Any, data: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _decode(options[0], data, path)
        raise TypeError(f"unsupported union {tp}")  # pragma: no cover - a types.py mistake
    if dataclasses.is_dataclass(tp):
        assert isinstance(tp, type)
        if not isinstance(data, dict):
            raise DecodeError(f"{_where(path)}expected an object, got {_kind(data)}")
        hints = _hints(tp)
        kwargs: dict[str, Any] = {}
        for f in _fields(tp):
            sub = f"{path}.{f.name}" if path else f.name
            if f.name in data:
                kwargs[f.name] = _decode(hints[f.name], data[f.name], sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DecodeError(f"{sub}: missing")
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(data)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in tp)
            raise DecodeError(
                f"{_where(path)}expected one of {allowed}, got {_kind(data)}"
            ) from None
    if origin is tuple:
        (item, *_rest) = typing.get_args(tp)
        if not isinstance(data, list):
            raise DecodeError(f"{_where(path)}expected a list, got {_kind(data)}")
        return tuple(_decode(item, v, f"{path}[{i}]") for i, v in enumerate(data))
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(data, dict):
            raise DecodeError(f"{_where(path)}expected an object, got {_kind(data)}")
        assert key_tp is str
        return {k: _decode(value_tp, v, f"{path}.{k}" if path else k) for k, v in data.items()}
    if tp is bool:
        if not isinstance(data, bool):
            raise DecodeError(f"{_where(path)}expected true or false, got {_kind(data)}")
        return data
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise DecodeError(f"{_where(path)}expected an integer, got {_kind(data)}")
        return data
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise DecodeError(f"{_where(path)}expected a number, got {_kind(data)}")
        try:
            value = float(data)  # an integer too large for a float raises OverflowError
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise DecodeError(f"{_where(path)}expected a finite number, got {_kind(data)}")
        return value
    if tp is str:
        if not isinstance(data, str):
            raise DecodeError(f"{_where(path)}expected a string, got {_kind(data)}")
        return data
    raise TypeError(f"unsupported type {tp}")  # pragma: no cover - a types.py mistake


def _kind(data: Any) -> str:
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "true" if data else "false"
    if isinstance(data, str):
        shown = data if len(data) <= 40 else data[:37] + "..."
        return repr(shown)
    if isinstance(data, int) and data.bit_length() > 128:
        return "an integer too large to show"
    if isinstance(data, int | float):
        text = repr(data)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(data, list):
        return "a list"
    if isinstance(data, dict):
        return "an object"
    return type(data).__name__
