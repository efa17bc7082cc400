"""What devmesh accepts at most, declared once, and the small checks built on it.

The mesh file's loader and the daemon's API apply the same bounds: a fault sent over the API
is checked by `check_fault_values`, the same rules `fault:` in a mesh file follows.

Every check is a pure function returning `None` (fine) or the reason in words, so each caller
words its own location around it (`FILE:LINE:COL: path: reason` or an API error).
"""

from __future__ import annotations

import math
from typing import Any

MAX_FILE_BYTES = 1 << 20  # 1 MiB: a mesh file of 30 services is about 10 KB
MAX_DEPTH = 64  # nesting; a mesh file needs 8, and PyYAML's composer recurses per level
# Values (mappings, lists, scalars) in one document, counting every copy an alias makes:
# billion laughs in 600 bytes stops here instead of taking seconds and gigabytes. A mesh of
# the largest size (200 services) needs about 5,000; pure-Python PyYAML composes 10,000 in
# 0.3-1 s on a busy 2-core machine.
MAX_VALUES = 10_000
# Characters in one string: Linux refuses a longer single argument or environment string
# (MAX_ARG_STRLEN) when the container starts, and `shlex.split` of more is slow.
MAX_STRING = 131_072
MAX_PROBLEMS = 100  # reported at once; past this the loader stops looking
MAX_INTEGER_DIGITS = 100  # longer integers are refused: nothing in a mesh counts that high

MAX_DURATION_MS = 24 * 3_600_000  # a day: any timeout or interval beyond is a mistake
MAX_FAULT_DELAY_MS = 3_600_000  # an injected delay of more than an hour is a mistake
PORT_RANGE = (1, 65535)
HTTP_STATUS_RANGE = (200, 599)  # what Envoy's fault filter can answer with
GRPC_STATUS_RANGE = (0, 16)
MAX_REPLICAS = 50
MAX_RETRY_ATTEMPTS = 10
MAX_SERVICES = 200  # a local Docker engine starts 30 pods in about 10 s
MAX_VERSIONS = 50  # per service
MAX_ROUTES = 200  # per service, and in the ingress


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def percent_problem(value: Any) -> str | None:
    """A percentage: a finite number from 0 to 100 (fractions allowed)."""
    if not _number(value):
        return f"expected a percentage (0 to 100), got {_shown(value)}"
    if not math.isfinite(value) or not 0 <= value <= 100:
        return f"a percentage must be between 0 and 100, got {_shown(value)}"
    return None


def int_problem(value: Any, low: int, high: int, what: str = "") -> str | None:
    """An integer in [low, high]; `what` names it in the message ("an HTTP status")."""
    if not isinstance(value, int) or isinstance(value, bool):
        return f"expected {what or 'an integer'}, got {_shown(value)}"
    if not low <= value <= high:
        if what:
            return f"{what} is {low} to {high}, got {_shown(value)}"
        if value < low:
            return f"must be at least {low}, got {_shown(value)}"
        return f"must be at most {high}, got {_shown(value)}"
    return None


def status_problem(value: Any) -> str | None:
    """An HTTP status an injected abort may answer with."""
    return int_problem(value, *HTTP_STATUS_RANGE, "an HTTP status")


def grpc_status_problem(value: Any) -> str | None:
    return int_problem(value, *GRPC_STATUS_RANGE, "a gRPC status")


def duration_ms_problem(value: Any, minimum: int = 0, maximum: int = MAX_DURATION_MS) -> str | None:
    """Whole milliseconds between `minimum` and `maximum`."""
    if not isinstance(value, int) or isinstance(value, bool):
        return f"expected whole milliseconds, got {_shown(value)}"
    if value < minimum:
        return f"must be at least {minimum}ms, got {_shown(value)}ms"
    if value > maximum:
        return f"must be at most {_hours(maximum)}, got {_shown(value)}ms"
    return None


def fixed_ms_problem(value: Any) -> str | None:
    """An injected delay: at least 1 ms, at most an hour."""
    return duration_ms_problem(value, 1, MAX_FAULT_DELAY_MS)


def check_fault_values(
    *,
    delay_percent: Any = None,
    fixed_ms: Any = None,
    abort_percent: Any = None,
    status: Any = None,
    grpc_status: Any = None,
) -> list[str]:
    """Every problem with a fault's values, as `field: reason`; empty when all are fine.

    Give only what the fault has (None: not given). Whether a delay or an abort is present
    at all, and whether an abort names exactly one status, is the caller's shape check.
    """
    checks = (
        ("delay.percent", delay_percent, percent_problem),
        ("delay.fixed_ms", fixed_ms, fixed_ms_problem),
        ("abort.percent", abort_percent, percent_problem),
        ("abort.status", status, status_problem),
        ("abort.grpc_status", grpc_status, grpc_status_problem),
    )
    out = []
    for name, value, check in checks:
        if value is not None and (why := check(value)) is not None:
            out.append(f"{name}: {why}")
    return out


def _hours(ms: int) -> str:
    return f"{ms // 3_600_000}h" if ms % 3_600_000 == 0 else f"{ms}ms"


def _shown(value: Any) -> str:
    """A value in a message, never long (and never a 5000-digit conversion)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and value.bit_length() > 200:
        return "a number too large to show"
    if isinstance(value, float):
        return f"{value:g}"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
