"""The mesh as loaded, as plain data (`devmesh config`): every default resolved (mesh
`defaults` -> service -> route), durations in milliseconds, in the model's own names. Pure."""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

from devmesh.core.model import Mesh


def resolved(mesh: Mesh) -> dict[str, Any]:
    data = _plain(mesh)
    assert isinstance(data, dict)
    data.pop("source", None)
    data.pop("base_dir", None)
    return {"file": mesh.source, **data}


_PAIRS = "tuple[tuple[str, str], ...]"  # the model's (name, value) pairs, as annotated


def _pairs(value: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return dict(value)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _pairs(getattr(value, f.name))
            if f.type == _PAIRS  # env, build args: a mapping, also when empty
            else _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            # not caches such as the service index, nor what loading noted (warnings)
            if not f.name.startswith("_") and f.metadata.get("resolved", True)
        }
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
