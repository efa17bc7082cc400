"""Read YAML while keeping where every value stands, and reject what PyYAML lets through.

PyYAML's `safe_load` forgets positions and silently keeps the last of two duplicate keys;
both matter for a mesh file's error messages, so this walks the composed node tree itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from devmesh.core.problems import MeshFileError, Path, Problem, dotted

_MAX_DEPTH = 64  # recursive aliases (&a [*a]) would otherwise never end


class _Unreadable:
    """A value YAML could not construct; already reported, so checks skip it."""

    def __repr__(self) -> str:
        return "UNREADABLE"


UNREADABLE = _Unreadable()


class Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false.

    YAML 1.1 reads `on`, `off`, `yes`, `no`, `y`, `n` as booleans, so `retries: {on: [5xx]}`
    would arrive as `{True: [...]}` and a country code `NO` as False.
    """


_YAML11_ONLY = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int")
Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML11_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# YAML 1.2 integers too: YAML 1.1 reads `1:30` as 90 (base 60) and `010` as 8 (octal).
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)  # `010` is ten, as in YAML 1.2


Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


@dataclass
class Located:
    """A plain Python document with the (line, col) of each value and each mapping key."""

    data: Any
    file: str
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def at(self, path: Path, message: str, *, key: bool = False) -> Problem:
        """A problem located at `path`'s value (or its key), else the nearest enclosing value."""
        table = self.keys if key else self.values
        probe = path
        while probe and probe not in table and probe not in self.values:
            probe = probe[:-1]
        line, col = table.get(probe) or self.values.get(probe, (1, 1))
        return Problem(line, col, dotted(path), message, self.file)


def read_text(raw: bytes, file: str) -> str:
    """Decode a mesh file or say plainly why it is not one."""
    if b"\x00" in raw:
        raise MeshFileError(f"{file}: this is a binary file, not a YAML mesh file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MeshFileError(
            f"{file}: not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    if not text.strip() or all(
        not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()
    ):
        raise MeshFileError(f"{file}: the file is empty; a mesh file needs `mesh:` and `services:`")
    return text


def parse(text: str, file: str) -> tuple[Located, list[Problem]]:
    """Parse one YAML document. Syntax errors come back as problems, never as exceptions."""
    try:
        loader = Yaml12Loader(text)  # checks for unprintable characters already
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = exc.problem or str(exc)
        if exc.context and "single document" in exc.context:
            what = "expected a single YAML document, found another after `---`"
        return Located(None, file), [Problem(line, col, "", f"YAML syntax: {what}", file)]
    except yaml.reader.ReaderError as exc:  # an unprintable character; it carries no mark
        pos = exc.position
        line = text.count("\n", 0, pos) + 1
        col = pos - text.rfind("\n", 0, pos)
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        message = f"unprintable character {char} is not allowed in YAML; remove it"
        return Located(None, file), [Problem(line, col, "", message, file)]
    except yaml.YAMLError as exc:
        return Located(None, file), [Problem(1, 1, "", f"YAML: {exc}", file)]
    located = Located(None, file)
    problems: list[Problem] = []
    if node is not None:
        located.data = _walk(loader, node, (), located, problems, 0)
    return located, problems


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _walk(
    loader: Yaml12Loader,
    node: yaml.Node,
    path: Path,
    located: Located,
    problems: list[Problem],
    depth: int,
) -> Any:
    located.values[path] = _mark(node)
    if depth > _MAX_DEPTH:
        line, col = _mark(node)
        problems.append(Problem(line, col, dotted(path), "nested too deeply", located.file))
        return None
    if isinstance(node, yaml.MappingNode):
        own = {id(k) for k, _ in node.value}
        try:
            loader.flatten_mapping(node)  # `<<: *defaults` merge keys, as compose files use
        except yaml.MarkedYAMLError as exc:
            line, col = _mark(node)
            problems.append(Problem(line, col, dotted(path), f"YAML: {exc.problem}", located.file))
            return None
        out: dict[str, Any] = {}
        merged: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                line, col = _mark(key_node)
                problems.append(
                    Problem(line, col, dotted(path), "a key must be a plain value", located.file)
                )
                continue
            raw_key = loader.construct_object(key_node)
            key = raw_key if isinstance(raw_key, str) else str(raw_key).lower()
            sub = (*path, key)
            from_merge = id(key_node) not in own
            if key in out:
                if from_merge:  # an earlier merge source already gave it
                    continue
                if key not in merged:
                    line, col = _mark(key_node)
                    first = located.keys.get(sub, (line, col))
                    problems.append(
                        Problem(
                            line,
                            col,
                            dotted(sub),
                            f"duplicate key '{key}' (first defined at line {first[0]})",
                            located.file,
                        )
                    )
                    continue
            # flatten_mapping puts merged keys first; a key written here overrides them.
            if from_merge:
                merged.add(key)
            else:
                merged.discard(key)
                located.keys[sub] = _mark(key_node)
            out[key] = _walk(loader, value_node, sub, located, problems, depth + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _walk(loader, item, (*path, i), located, problems, depth + 1)
            for i, item in enumerate(node.value)
        ]
    try:
        return loader.construct_object(node)
    except yaml.constructor.ConstructorError as exc:
        line, col = _mark(node)
        problems.append(Problem(line, col, dotted(path), f"YAML: {exc.problem}", located.file))
        return UNREADABLE
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        line, col = _mark(node)
        problems.append(
            Problem(line, col, dotted(path), f"not a usable value: {exc}", located.file)
        )
        return UNREADABLE
