"""Durations as users write them (`250ms`, `2s`, `1m30s`) and as Envoy's JSON wants them."""

from __future__ import annotations

import re
from decimal import Decimal

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_MAX_MS = 315_576_000_000_000 // 1000  # protobuf Duration's range, in ms


class DurationError(ValueError):
    pass


def parse_duration(value: str | int | float) -> int:
    """Whole milliseconds. A bare number is refused: `timeout: 2` could mean 2s or 2ms."""
    if not isinstance(value, str):
        raise DurationError(f"'{value}' needs a unit: write {value}s or {value}ms")
    text = value.strip()
    pos = 0
    total = Decimal(0)
    for part in _PART.finditer(text):
        if part.start() != pos:
            break
        total += Decimal(part.group(1)) * _UNIT_MS[part.group(2)]  # exact: 1.001s is 1001ms
        pos = part.end()
    if pos != len(text) or not text:
        raise DurationError(f"'{value}' is not a duration; write e.g. 250ms, 2s, 1m or 1m30s")
    if total != int(total):
        raise DurationError(f"'{value}' is finer than a millisecond")
    if total > _MAX_MS:
        raise DurationError(f"'{value}' is too long")
    return int(total)


def format_duration(ms: int) -> str:
    """Human form for messages and `explain`: 200ms, 2s, 1m30s, 24h."""
    if ms == 0:
        return "0s"
    if ms % 1000:
        return f"{ms}ms"
    minutes, seconds = divmod(ms // 1000, 60)
    hours, minutes = divmod(minutes, 60)
    parts = ((hours, "h"), (minutes, "m"), (seconds, "s"))
    return "".join(f"{n}{unit}" for n, unit in parts if n)


def envoy_duration(ms: int) -> str:
    """Protobuf JSON Duration: `2s`, `0.250s`."""
    seconds, rest = divmod(ms, 1000)
    return f"{seconds}s" if rest == 0 else f"{seconds}.{rest:03d}s"
