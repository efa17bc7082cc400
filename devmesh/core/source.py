"""Read YAML while keeping where every value stands, and reject what PyYAML lets through.

PyYAML's `safe_load` forgets positions and silently keeps the last of two duplicate keys;
both matter for a mesh file's error messages, so this walks the composed node tree itself.

Hostile input stays cheap (the bounds live in `devmesh.core.limits`): a file is read only if
it is a regular file of at most MAX_FILE_BYTES (1 MiB), refused at once otherwise (a FIFO is
never opened for reading, /dev/zero never read); nesting past MAX_DEPTH and documents of
more than MAX_VALUES values, counting every copy an alias or a `<<` merge makes, are located
problems, as is everything a YAML constructor cannot build. Nothing here raises on any text.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from devmesh.core.limits import MAX_DEPTH, MAX_FILE_BYTES, MAX_INTEGER_DIGITS, MAX_VALUES
from devmesh.core.problems import MeshFileError, Path, Problem, dotted

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
# Scalars a mesh file can hold; `!!binary`, `!!timestamp`, `!!python/...` are refused.
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null"))
_KEY_AS_WRITTEN = frozenset(f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool"))


class _Unreadable:
    """A value YAML could not construct; already reported, so checks skip it."""

    def __repr__(self) -> str:
        return "UNREADABLE"


UNREADABLE = _Unreadable()


class _Refused(yaml.MarkedYAMLError):
    """A bound of `devmesh.core.limits` reached while composing; its text is the message."""


class Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars, bounded composing, and where each alias was written.

    YAML 1.1 reads `on`, `off`, `yes`, `no`, `y`, `n` as booleans, so `retries: {on: [5xx]}`
    would arrive as `{True: [...]}` and a country code `NO` as False; `2001-13-45` as a date
    (and fails); `=` as a "value" key. YAML 1.2 reads all of them as strings.

    PyYAML's composer recurses once per nesting level and shares one node among all the
    aliases to it; this one stops at MAX_DEPTH levels and MAX_VALUES nodes, and remembers
    where each alias stands so an expansion too large is reported at the alias.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        # (id(parent), index or id(key node)) -> (line, col) of an alias written there.
        self.alias_marks: dict[tuple[int, int], tuple[int, int]] = {}
        self._depth = 0
        self._composed = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark
        self._composed += 1  # an alias too: 200,000 `*a` cost as much to compose as values
        if self._composed > MAX_VALUES:
            raise _Refused(problem=f"more than {MAX_VALUES} values in one file", problem_mark=mark)
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if parent is not None and index is not None and mark is not None:
                self.alias_marks[_slot(parent, index)] = (mark.line + 1, mark.column + 1)
            return node
        if self._depth >= MAX_DEPTH:
            raise _Refused(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        return node

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # The scanner looks up to 1024 characters ahead for a `:` after each open `[` or
        # `{`, which costs O(open brackets) per token: stop at MAX_DEPTH before that adds up.
        if self.flow_level >= MAX_DEPTH:
            problem = f"nested more than {MAX_DEPTH} levels deep"
            raise _Refused(problem=problem, problem_mark=self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


def _slot(parent: yaml.Node, index: Any) -> tuple[int, int]:
    """Where a child stands: a list's index, or a mapping value's key node."""
    return (id(parent), index if isinstance(index, int) else id(index))


_YAML11_ONLY = (
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:value",
    "tag:yaml.org,2002:yaml",
)
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
    if len(text) > MAX_INTEGER_DIGITS:
        # Python refuses to print integers past 4300 digits, and nothing here counts that far.
        raise ValueError(f"a number of {len(text)} digits is too long (quote it if it is text)")
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


def read_mesh_bytes(path: str, *, allow_stdin: bool = False, limit: int = MAX_FILE_BYTES) -> bytes:
    """A mesh file's bytes, or MeshFileError at once: missing, not a regular file, too large.

    `-` is standard input only when the caller asks for it. A FIFO or device is refused
    from its stat, before any open (opening a FIFO to read blocks until a writer comes);
    the open itself is non-blocking and checked again, in case the path changed between.
    """
    if path == "-":
        if not allow_stdin:
            raise MeshFileError("-: standard input is not accepted here; give a file")
        return _bounded("-", sys.stdin.buffer.read, limit)
    try:
        _check_kind(path, os.stat(path), limit)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MeshFileError(f"{path}: no such file (give another with -f FILE)") from None
    except OSError as exc:
        raise MeshFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError:  # a NUL in the path
        raise MeshFileError(f"{path!r}: not a usable file name") from None
    try:
        _check_kind(path, os.fstat(fd), limit)
        return _bounded(path, lambda n: os.read(fd, n), limit)
    except OSError as exc:
        raise MeshFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _check_kind(path: str, st: os.stat_result, limit: int) -> None:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise MeshFileError(f"{path}: is a directory, not a mesh file")
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise MeshFileError(f"{path}: is {kind}; a mesh file must be a regular file")
    if st.st_size > limit:
        raise MeshFileError(_too_large(path, st.st_size, limit))


def _bounded(path: str, read: Callable[[int], bytes | None], limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = read(min(1 << 16, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise MeshFileError(_too_large(path, None, limit))  # it grew after the stat
    return b"".join(chunks)


def _too_large(file: str, size: int | None, limit: int) -> str:
    shown = "more than that" if size is None else f"{size} bytes"
    return f"{file}: a mesh file may be at most {limit} bytes (1 MiB); this one is {shown}"


def read_text(raw: bytes, file: str) -> str:
    """Decode a mesh file or say plainly why it is not one."""
    if len(raw) > MAX_FILE_BYTES:
        raise MeshFileError(_too_large(file, len(raw), MAX_FILE_BYTES))
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
    """Parse one YAML document. Every problem comes back located, never as an exception."""
    if len(text) > MAX_FILE_BYTES:
        message = f"a mesh file may be at most {MAX_FILE_BYTES} characters (1 MiB)"
        return Located(None, file), [Problem(1, 1, "", message, file)]
    try:
        loader = Yaml12Loader(text)  # checks for unprintable characters already
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except _Refused as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return Located(None, file), [Problem(line, col, "", str(exc.problem), file)]
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
        walker = _Walker(loader, located, problems)
        try:
            located.data = walker.value(node, (), 0, None)
        except _Exhausted as exc:
            return Located(None, file), [exc.problem]
    return located, problems


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _tag(tag: str) -> str:
    """`tag:yaml.org,2002:foo` as written: `!!foo`."""
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org") else tag


class _Exhausted(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


class _Walker:
    """Builds plain values from the node graph, counting every value an alias copies."""

    def __init__(self, loader: Yaml12Loader, located: Located, problems: list[Problem]) -> None:
        self.loader = loader
        self.located = located
        self.problems = problems
        self.budget = MAX_VALUES
        self.aliases: list[tuple[Path, tuple[int, int]]] = []  # aliases being expanded
        self.open: set[int] = set()  # the collections being walked, to catch `&a [*a]`

    def problem(self, at: tuple[int, int], path: Path, message: str) -> None:
        self.problems.append(Problem(at[0], at[1], dotted(path), message, self.located.file))

    def value(self, node: yaml.Node, path: Path, depth: int, slot: tuple[int, int] | None) -> Any:
        """The plain value of `node` at `path`; an alias is located where it is written."""
        alias = self.loader.alias_marks.get(slot) if slot is not None else None
        if alias is None:
            return self._value(node, path, depth, _mark(node))
        self.aliases.append((path, alias))
        try:
            return self._value(node, path, depth, alias)
        finally:
            self.aliases.pop()

    def charge(self, path: Path, at: tuple[int, int]) -> None:
        """One more value built; past MAX_VALUES the whole walk stops, at the first alias."""
        self.budget -= 1
        if self.budget >= 0:
            return
        where, (line, col) = self.aliases[0] if self.aliases else (path, at)
        message = f"aliases expand to more than {MAX_VALUES} values"
        raise _Exhausted(Problem(line, col, dotted(where), message, self.located.file))

    def _value(self, node: yaml.Node, path: Path, depth: int, at: tuple[int, int]) -> Any:
        self.charge(path, at)
        self.located.values[path] = at
        if depth >= MAX_DEPTH:
            self.problem(at, path, f"nested more than {MAX_DEPTH} levels deep")
            return UNREADABLE
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path, at)
        if id(node) in self.open:
            self.problem(at, path, "this alias refers to a value that contains it")
            return UNREADABLE
        expected = _MAP if isinstance(node, yaml.MappingNode) else _SEQ
        if node.tag != expected:
            self.problem(at, path, f"the tag '{_tag(node.tag)}' is not supported here")
            return UNREADABLE
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path, depth)
            return [
                self.value(item, (*path, i), depth + 1, (id(node), i))
                for i, item in enumerate(node.value)
            ]
        finally:
            self.open.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, path: Path, at: tuple[int, int]) -> Any:
        if node.tag not in _SCALAR_TAGS:
            self.problem(at, path, f"the tag '{_tag(node.tag)}' is not supported here")
            return UNREADABLE
        try:
            return self.loader.construct_object(node)
        except yaml.constructor.ConstructorError as exc:
            self.problem(at, path, f"YAML: {exc.problem}")
        except (ValueError, ArithmeticError) as exc:  # `!!int 0x`, `!!float x`, long numbers
            self.problem(at, path, f"not a usable value: {exc}")
        except Exception:  # PyYAML's constructors are foreign code: `!!float ''` raises IndexError
            shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
            self.problem(at, path, f"'{shown}' is not a usable {_tag(node.tag)} value")
        return UNREADABLE

    def key(self, node: yaml.Node, path: Path) -> str | None:
        """A mapping key as text, or None after reporting why it cannot be one."""
        at = _mark(node)
        if not isinstance(node, yaml.ScalarNode):
            self.problem(at, path, "a key must be a plain value")
            return None
        if node.tag == _STR:
            return str(node.value)
        if node.tag in _KEY_AS_WRITTEN:
            return str(node.value)  # `1:` and `TRUE:` as written, not as 1 and True
        if node.tag == _NULL:
            self.problem(at, path, "a key must be a string, not null (`~`, `null` or nothing)")
        else:
            self.problem(at, path, f"a key must be a string, not '{_tag(node.tag)}'")
        return None

    def mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, Any]:
        own: list[tuple[str, yaml.Node, yaml.Node]] = []
        merged: dict[str, tuple[yaml.Node, yaml.Node, yaml.Node]] = {}
        seen: dict[str, tuple[int, int]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE and isinstance(key_node, yaml.ScalarNode):
                # What a merge copies is charged to the `<<` that asked for it.
                self.aliases.append((path, _mark(key_node)))
                try:
                    self.merge(key_node, value_node, path, merged, depth)
                finally:
                    self.aliases.pop()
                continue
            key = self.key(key_node, path)
            if key is None:
                continue
            if key in seen:
                line, col = _mark(key_node)
                self.problem(
                    (line, col),
                    (*path, key),
                    f"duplicate key '{key}' (first defined at line {seen[key][0]})",
                )
                continue
            seen[key] = _mark(key_node)
            own.append((key, key_node, value_node))
        # Merged keys first, in merge order; a key written here overrides a merged one.
        out: dict[str, Any] = {}
        for key, (source, key_node, value_node) in merged.items():
            if key not in seen:
                out[key] = self.value(
                    value_node, (*path, key), depth + 1, (id(source), id(key_node))
                )
        for key, key_node, value_node in own:
            self.located.keys[(*path, key)] = _mark(key_node)
            out[key] = self.value(value_node, (*path, key), depth + 1, (id(node), id(key_node)))
        return out

    def merge(
        self,
        key_node: yaml.Node,
        value_node: yaml.Node,
        path: Path,
        merged: dict[str, tuple[yaml.Node, yaml.Node, yaml.Node]],
        depth: int,
    ) -> None:
        """`<<: *defaults` or `<<: [*a, *b]` (compose files use them): the first one wins."""
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                self.problem(_mark(key_node), path, "`<<` merges a mapping or a list of mappings")
                return
            for key, (src, k, v) in self.flatten(source, path, depth).items():
                merged.setdefault(key, (src, k, v))

    def flatten(
        self, node: yaml.MappingNode, path: Path, depth: int
    ) -> dict[str, tuple[yaml.Node, yaml.Node, yaml.Node]]:
        """A merge source's keys (its own merges included), charged to the value budget."""
        if id(node) in self.open or depth >= MAX_DEPTH:
            self.problem(_mark(node), path, "`<<` merges a mapping that contains it")
            return {}
        self.open.add(id(node))
        try:
            out: dict[str, tuple[yaml.Node, yaml.Node, yaml.Node]] = {}
            later: dict[str, tuple[yaml.Node, yaml.Node, yaml.Node]] = {}
            for key_node, value_node in node.value:
                self.charge(path, _mark(key_node))
                if key_node.tag == _MERGE and isinstance(key_node, yaml.ScalarNode):
                    self.merge(key_node, value_node, path, later, depth + 1)
                    continue
                key = self.key(key_node, path)
                if key is not None:
                    out.setdefault(key, (node, key_node, value_node))
            for key, entry in later.items():
                out.setdefault(key, entry)
            return out
        finally:
            self.open.discard(id(node))
