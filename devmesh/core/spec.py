"""A small declarative schema: one description gives both the structural check (with located,
compiler-style messages and "did you mean") and the JSON Schema editors use for completion.

Each spec's `check` returns the cleaned value, or `INVALID` after recording a problem, so a
single pass reports every problem in the file. Semantic rules that span the document
(weights, references) live in `devmesh.core.load`, not here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from devmesh.core.durations import DurationError, format_duration, parse_duration
from devmesh.core.limits import MAX_DURATION_MS, MAX_PROBLEMS, MAX_STRING, percent_problem
from devmesh.core.problems import Path, Problem, did_you_mean, short
from devmesh.core.source import UNREADABLE, Located


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


INVALID: Final = _Invalid()


class TooManyProblems(Exception):
    """MAX_PROBLEMS found: the check stops, and what was found is reported."""


@dataclass
class Ctx:
    doc: Located
    problems: list[Problem] = field(default_factory=list)

    warnings: list[Problem] = field(default_factory=list)

    def warn(self, path: Path, message: str) -> None:
        """Something that loads but cannot be what was meant (no more than MAX_PROBLEMS)."""
        if len(self.warnings) < MAX_PROBLEMS:
            self.warnings.append(self.doc.at(path, message))

    def error(self, path: Path, message: str, *, key: bool = False) -> _Invalid:
        self.problems.append(self.doc.at(path, message, key=key))
        if len(self.problems) >= MAX_PROBLEMS:
            raise TooManyProblems  # a hostile file must not cost a did-you-mean per entry
        return INVALID


_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """What Docker, Linux or Envoy would refuse in any string of a mesh file."""
    if "\0" in value:
        return "contains a NUL character (\\0), which Docker and Envoy cannot take"
    if len(value) > MAX_STRING:
        return f"is longer than {MAX_STRING} characters, more than Linux takes in one argument"
    if _SURROGATE.search(value):
        # `"\udc80"` in YAML: not Unicode text, and Envoy's protobuf strings must be UTF-8.
        return "contains a lone surrogate escape (\\ud800-\\udfff), which is not text"
    return None


def type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value:g})" if isinstance(value, float) else f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"'{shown}'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class Spec:
    description: str = ""

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def _doc(self, out: dict[str, Any]) -> dict[str, Any]:
        if self.description:
            out["description"] = self.description
        return out


@dataclass
class Str(Spec):
    pattern: str | None = None
    pattern_hint: str = ""
    description: str = ""
    examples: tuple[str, ...] = ()
    min_length: int = 1

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not isinstance(value, str):
            return ctx.error(path, f"expected a string, got {type_name(value)}")
        if len(value) < self.min_length:
            return ctx.error(path, "must not be empty")
        if problem := text_problem(value):
            return ctx.error(path, problem)
        if self.pattern and not re.fullmatch(self.pattern, value):
            return ctx.error(path, f"'{short(value)}' is not {self.pattern_hint or self.pattern}")
        return value

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string"}
        if self.pattern:
            out["pattern"] = f"^(?:{self.pattern})$"
        if self.min_length:
            out["minLength"] = self.min_length
        out["maxLength"] = MAX_STRING
        if self.examples:
            out["examples"] = list(self.examples)
        return self._doc(out)


@dataclass
class Scalar(Spec):
    """A string, number or boolean, kept as its text (`VERSION: 2` means "2")."""

    description: str = ""

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, str) and (problem := text_problem(value)):
            return ctx.error(path, problem)
        if isinstance(value, str | int | float):
            return str(value)
        return ctx.error(path, f"expected a string or number, got {type_name(value)}")

    def schema(self) -> dict[str, Any]:
        return self._doc({"type": ["string", "number", "boolean"]})


@dataclass
class Int(Spec):
    minimum: int | None = None
    maximum: int | None = None
    description: str = ""

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            return ctx.error(path, f"expected an integer, got {type_name(value)}")
        if self.minimum is not None and value < self.minimum:
            return ctx.error(path, f"must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            return ctx.error(path, f"must be at most {self.maximum}, got {value}")
        return value

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer"}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return self._doc(out)


@dataclass
class Percent(Spec):
    description: str = "a percentage, 0 to 100 (fractions allowed)"
    also: str | None = None  # a word taken as it is besides (`auto`)

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if self.also is not None and value == self.also:
            return value
        if isinstance(value, str) and re.fullmatch(r"\d{1,3}(\.\d{1,6})?%", value):
            value = float(value[:-1])
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            also = f" or '{self.also}'" if self.also is not None else ""
            return ctx.error(
                path, f"expected a percentage (0 to 100){also}, got {type_name(value)}"
            )
        problem = percent_problem(value)  # the same rule as faults sent over the API
        return ctx.error(path, problem) if problem else float(value)

    def schema(self) -> dict[str, Any]:
        kinds: list[dict[str, Any]] = [
            {"type": "number", "minimum": 0, "maximum": 100},
            {"type": "string", "pattern": r"^\d{1,3}(\.\d{1,6})?%$"},
        ]
        if self.also is not None:
            kinds.append({"const": self.also})
        return self._doc({"anyOf": kinds})


@dataclass
class Bool(Spec):
    description: str = ""

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not isinstance(value, bool):
            return ctx.error(path, f"expected true or false, got {type_name(value)}")
        return value

    def schema(self) -> dict[str, Any]:
        return self._doc({"type": "boolean"})


@dataclass
class Duration(Spec):
    """'200ms', '2s', '1m30s'; the cleaned value is whole milliseconds."""

    description: str = "a duration such as 250ms, 2s, 1m or 1m30s"
    minimum_ms: int = 0
    maximum_ms: int = MAX_DURATION_MS

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return ctx.error(
                path, f"expected a duration such as 2s or 250ms, got {type_name(value)}"
            )
        try:
            ms = parse_duration(value)
        except DurationError as exc:
            return ctx.error(path, str(exc))
        if ms < self.minimum_ms:
            return ctx.error(path, f"must be at least {self.minimum_ms}ms")
        if ms > self.maximum_ms:
            return ctx.error(
                path, f"must be at most {format_duration(self.maximum_ms)}, got {value}"
            )
        return ms

    def schema(self) -> dict[str, Any]:
        return self._doc({"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h))+$"})


@dataclass
class Enum(Spec):
    values: tuple[str, ...]
    description: str = ""

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not isinstance(value, str) or value not in self.values:
            shown = short(value) if isinstance(value, str) else type_name(value)
            hint = did_you_mean(value, self.values) if isinstance(value, str) else ""
            choices = ", ".join(self.values)
            return ctx.error(path, f"'{shown}' is not one of {choices}{hint}")
        return value

    def schema(self) -> dict[str, Any]:
        return self._doc({"type": "string", "enum": list(self.values)})


@dataclass
class Empty(Spec):
    """Nothing written (`v1:`): the same as an empty mapping."""

    description: str = "empty: inherit everything"

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        return {}

    def schema(self) -> dict[str, Any]:
        return self._doc({"type": "null"})


@dataclass
class ListOf(Spec):
    item: Spec
    min_items: int = 0
    description: str = ""
    unique: bool = False
    max_items: int | None = None

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not isinstance(value, list):
            return ctx.error(path, f"expected a list, got {type_name(value)}")
        if len(value) < self.min_items:
            return ctx.error(path, f"needs at least {self.min_items} item(s)")
        if self.max_items is not None and len(value) > self.max_items:
            return ctx.error(path, f"takes at most {self.max_items} items, got {len(value)}")
        out = []
        seen: set[Any] = set()
        for i, item in enumerate(value):
            if item is UNREADABLE:
                continue
            cleaned = self.item.check(item, (*path, i), ctx)
            if cleaned is INVALID:
                continue
            if self.unique and isinstance(cleaned, str):
                if cleaned in seen:
                    ctx.error((*path, i), f"'{short(cleaned)}' is listed twice")
                    continue
                seen.add(cleaned)
            out.append(cleaned)
        return out

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "array", "items": self.item.schema()}
        if self.min_items:
            out["minItems"] = self.min_items
        if self.unique:
            out["uniqueItems"] = True
        if self.max_items is not None:
            out["maxItems"] = self.max_items
        return self._doc(out)


@dataclass
class MapOf(Spec):
    """A mapping whose keys the user names (services, versions, env vars)."""

    value: Spec
    key_pattern: str = r".+"
    key_hint: str = ""
    min_items: int = 0
    description: str = ""
    max_items: int | None = None
    # Names the pattern allows that cannot be used, each with why not.
    reserved: Mapping[str, str] = field(default_factory=dict)

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not isinstance(value, dict):
            return ctx.error(path, f"expected a mapping, got {type_name(value)}")
        if len(value) < self.min_items:
            return ctx.error(
                path, f"needs at least {self.min_items} entr{'y' if self.min_items == 1 else 'ies'}"
            )
        if self.max_items is not None and len(value) > self.max_items:
            return ctx.error(path, f"takes at most {self.max_items} entries, got {len(value)}")
        out = {}
        for key, item in value.items():
            sub = (*path, key)
            if item is UNREADABLE:
                continue
            if problem := text_problem(key):
                ctx.error(sub, problem, key=True)
                continue
            if not re.fullmatch(self.key_pattern, key):
                ctx.error(sub, f"'{short(key)}' is not {self.key_hint or 'a valid name'}", key=True)
                continue
            if key in self.reserved:  # and its content is still checked
                ctx.error(sub, f"'{key}' is reserved: {self.reserved[key]}", key=True)
            cleaned = self.value.check(item, sub, ctx)
            if cleaned is not INVALID:
                out[key] = cleaned
        return out

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "object",
            "propertyNames": {"pattern": f"^(?:{self.key_pattern})$"},
            "additionalProperties": self.value.schema(),
        }
        if self.min_items:
            out["minProperties"] = self.min_items
        if self.max_items is not None:
            out["maxProperties"] = self.max_items
        if self.reserved:
            out["propertyNames"]["not"] = {"enum": sorted(self.reserved)}
        return self._doc(out)


@dataclass
class Field:
    spec: Spec
    required: bool = False
    description: str = ""


@dataclass
class Obj(Spec):
    """A mapping with known keys. Unknown keys are errors with a "did you mean"."""

    fields: Mapping[str, Field]
    description: str = ""
    exclusive: tuple[tuple[str, ...], ...] = ()  # at most one key of each group
    require_one_of: tuple[tuple[str, ...], ...] = ()  # exactly one... at least one of each group

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not isinstance(value, dict):
            return ctx.error(path, f"expected a mapping, got {type_name(value)}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = (*path, key)
            fld = self.fields.get(key)
            if item is UNREADABLE:
                continue
            if fld is None:
                known = ", ".join(self.fields)
                hint = did_you_mean(key, self.fields)
                msg = (
                    f"unknown key '{short(key)}'{hint}"
                    if hint
                    else f"unknown key '{short(key)}'; known: {known}"
                )
                ctx.error(sub, msg, key=True)
                continue
            cleaned = fld.spec.check(item, sub, ctx)
            if cleaned is not INVALID:
                out[key] = cleaned
        for name, fld in self.fields.items():
            if fld.required and name not in value:
                ctx.error(path, f"missing required key '{name}'")
        for group in self.exclusive:
            present = [k for k in group if k in value]
            if len(present) > 1:
                ctx.error(
                    (*path, present[1]),
                    f"'{present[0]}' and '{present[1]}' cannot both be set",
                    key=True,
                )
        for group in self.require_one_of:
            if not any(k in value for k in group):
                ctx.error(path, "needs one of: " + ", ".join(group))
        return out

    def schema(self) -> dict[str, Any]:
        props = {}
        for name, fld in self.fields.items():
            sub = fld.spec.schema()
            if fld.description:
                sub = {**sub, "description": fld.description}
            props[name] = sub
        out: dict[str, Any] = {
            "type": "object",
            "properties": props,
            "additionalProperties": False,
        }
        required = [n for n, f in self.fields.items() if f.required]
        if required:
            out["required"] = required
        if self.require_one_of:
            out["anyOf"] = [{"required": [k]} for k in self.require_one_of[0]]
        return self._doc(out)


@dataclass
class ByType(Spec):
    """One of several shapes, told apart by the YAML type (a string shorthand or a mapping)."""

    choices: Mapping[type, Spec]
    description: str = ""
    wording: str = ""

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        for kind, spec in self.choices.items():
            if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
                return spec.check(value, path, ctx)
        wording = self.wording or " or ".join(_KIND_WORDS.get(k, k.__name__) for k in self.choices)
        return ctx.error(path, f"expected {wording}, got {type_name(value)}")

    def schema(self) -> dict[str, Any]:
        return self._doc({"anyOf": [s.schema() for s in self.choices.values()]})


_KIND_WORDS: dict[type, str] = {
    str: "a string",
    dict: "a mapping",
    list: "a list",
    int: "an integer",
    bool: "true or false",
}


@dataclass
class Then(Spec):
    """Check with `inner`, then run a converter that may add its own problems."""

    inner: Spec
    convert: Callable[[Any, Path, Ctx], Any]
    description: str = ""

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        cleaned = self.inner.check(value, path, ctx)
        if cleaned is INVALID:
            return INVALID
        return self.convert(cleaned, path, ctx)

    def schema(self) -> dict[str, Any]:
        out = self.inner.schema()
        return {**out, "description": self.description} if self.description else out
