"""RE2, the regex engine Envoy uses, so that validation and `explain` agree with Envoy."""

from __future__ import annotations

import functools
from typing import Any

import re2

# Envoy's default program-size limit for google_re2 (envoy.type.matcher.v3.RegexMatcher).
MAX_PROGRAM_SIZE = 100


@functools.lru_cache(maxsize=512)
def _compile(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def check(pattern: str) -> str | None:
    """None when Envoy would accept the pattern, else why not."""
    try:
        compiled = _compile(pattern)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else b""
        text = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        return text or "not a valid expression"
    size = compiled.programsize
    if size > MAX_PROGRAM_SIZE:
        return f"program size {size} is over Envoy's limit of {MAX_PROGRAM_SIZE}; simplify it"
    return None


def fullmatch(pattern: str, text: str) -> bool:
    """Envoy's safe_regex: the whole value must match."""
    return _compile(pattern).fullmatch(text) is not None
