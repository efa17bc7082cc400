"""Nothing hostile takes the loader down: every input gives a Mesh, located problems or a
MeshFileError, quickly and in little memory.

Alias bombs, deep nesting, odd tags and keys, huge numbers, large files, FIFOs and devices:
each case says where the problem is reported, like a compiler would.
"""

from __future__ import annotations

import contextlib
import os
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devmesh.core.limits import MAX_DEPTH, MAX_FILE_BYTES, MAX_PROBLEMS, MAX_VALUES
from devmesh.core.load import load, load_path
from devmesh.core.problems import MeshError, MeshFileError, MeshInvalid, Problem
from devmesh.core.source import read_mesh_bytes, read_text

TIME_BOUND_S = 1.0
MEMORY_BOUND = 200 * 2**20


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems_of(text: str) -> tuple[Problem, ...]:
    with pytest.raises(MeshInvalid) as caught:
        load(text, "devmesh.yaml")
    return caught.value.problems


def bounded(run: Callable[[], object]) -> tuple[float, int]:
    """Seconds `run` took, and its peak bytes (tracemalloc, in a second run: it slows ~3x).

    Only MeshError (MeshInvalid, MeshFileError) may come out; anything else fails the test."""

    def once() -> None:
        with contextlib.suppress(MeshError):
            run()

    started = time.perf_counter()
    once()
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    try:
        once()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return elapsed, peak


def billion_laughs() -> str:
    """The classic, about 600 bytes: 9 levels of 9 aliases each, 10^9 strings if expanded."""
    lines = ["mesh: demo", "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    for i in range(1, 9):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("services: *i")
    return "\n".join(lines) + "\n"


def wide_bomb() -> str:
    """About 1 KB expanding to 10^7 values: 7 levels of 10 aliases of a 10-item list."""
    lines = ["mesh: demo", "l0: &l0 [x,x,x,x,x,x,x,x,x,x]"]
    for i in range(1, 7):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    lines.append("services: {web: {image: web, port: 80, command: *l6}}")
    return "\n".join(lines) + "\n"


def merge_bomb() -> str:
    """`<<` merges that copy each other twice per level: exponential without a budget."""
    lines = ["mesh: demo", "m0: &m0 {a: 1, b: 2}"]
    for i in range(1, 40):
        lines.append(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: 1}}")
    lines.append("services: {web: {<<: *m39, image: web, port: 80}}")
    return "\n".join(lines) + "\n"


class Case(NamedTuple):
    text: str
    line: int
    col: int
    message: str


AT_ALIAS = 0  # where the budget ran out depends on MAX_VALUES: any alias (`*a`, `<<`) will do


LOCATED: dict[str, Case] = {
    "billion-laughs-at-the-alias": Case(
        billion_laughs(), AT_ALIAS, AT_ALIAS, f"aliases expand to more than {MAX_VALUES} values"
    ),
    "ten-million-nodes-at-the-alias": Case(
        wide_bomb(), AT_ALIAS, AT_ALIAS, f"aliases expand to more than {MAX_VALUES} values"
    ),
    "merge-keys-copying-each-other": Case(
        merge_bomb(), AT_ALIAS, AT_ALIAS, f"aliases expand to more than {MAX_VALUES} values"
    ),
    "deep-flow-lists": Case(
        "mesh: demo\nservices: " + "[" * 600 + "\n", 2, 11 + MAX_DEPTH, "nested more than"
    ),
    "deep-flow-mappings": Case(
        "mesh: demo\nservices: " + "{a: " * 600 + "\n", 2, 12 + 4 * (MAX_DEPTH - 2), "nested"
    ),
    "deep-block-mappings": Case(
        "".join(" " * i + f"k{i}:\n" for i in range(200)),
        MAX_DEPTH,
        MAX_DEPTH,
        f"nested more than {MAX_DEPTH} levels deep",
    ),
    "alias-that-contains-itself": Case(
        "mesh: demo\nservices: &s {web: *s}\n", 2, 20, "refers to a value that contains it"
    ),
    "merge-of-itself": Case(
        "mesh: demo\nservices: &s {<<: *s}\n", 2, 11, "merges a mapping that contains it"
    ),
    "timestamp-looking-key": Case(
        doc(
            """
            mesh: demo
            services:
              2001-13-45:
                image: web
                port: 80
            """
        ),
        3,
        3,
        "'2001-13-45' is not a name",
    ),
    "unknown-tag-on-a-scalar": Case(
        "mesh: demo\nservices: {web: {image: !!foo web, port: 80}}\n",
        2,
        25,
        "the tag '!!foo' is not supported",
    ),
    "unknown-tag-on-a-mapping": Case(
        "mesh: demo\nservices: !!foo {web: {image: web, port: 80}}\n",
        2,
        11,
        "the tag '!!foo' is not supported",
    ),
    "local-tag": Case(
        "mesh: demo\nservices: {web: {image: !env web, port: 80}}\n",
        2,
        25,
        "the tag '!env' is not supported",
    ),
    "python-object-tag": Case(
        "mesh: !!python/object/apply:os.system [echo hi]\nservices: {}\n",
        1,
        7,
        "the tag '!!python/object/apply:os.system' is not supported",
    ),
    "binary-tag": Case(
        "mesh: !!binary aGVsbG8=\nservices: {web: {image: web, port: 80}}\n",
        1,
        7,
        "the tag '!!binary' is not supported",
    ),
    "set-tag": Case(
        "mesh: demo\nservices: {web: {image: web, port: 80, calls: !!set {a, b}}}\n",
        2,
        47,
        "the tag '!!set' is not supported",
    ),
    "explicit-bad-timestamp": Case(
        "mesh: !!timestamp 2001-13-45\nservices: {web: {image: web, port: 80}}\n",
        1,
        7,
        "the tag '!!timestamp' is not supported",
    ),
    "explicit-int-that-is-not": Case(
        "mesh: demo\nservices: {web: {image: web, port: !!int eighty}}\n",
        2,
        36,
        "not a usable value",
    ),
    "five-thousand-digit-value": Case(
        "mesh: demo\nservices: {web: {image: web, port: " + "9" * 5000 + "}}\n",
        2,
        36,
        "a number of 5000 digits is too long",
    ),
    "five-thousand-digit-hex-value": Case(
        "mesh: demo\nservices: {web: {image: web, port: 0x" + "f" * 5000 + "}}\n",
        2,
        36,
        "digits is too long",
    ),
    "five-thousand-digit-key": Case(
        "mesh: demo\nservices:\n  ? " + "9" * 5000 + "\n  : {image: web, port: 80}\n",
        3,
        5,
        "is not a name",
    ),
    "null-key": Case(
        "mesh: demo\nservices:\n  ~: {image: web, port: 80}\n", 3, 3, "a key must be a string"
    ),
    "empty-key": Case(
        "mesh: demo\nservices:\n  ?\n  : {image: web, port: 80}\n", 3, 4, "a key must be a string"
    ),
    "list-as-key": Case(
        "mesh: demo\nservices:\n  ? [a]\n  : {image: web, port: 80}\n", 3, 5, "a plain value"
    ),
    "merge-of-a-scalar": Case(
        "mesh: demo\nservices: {<<: 1, web: {image: web, port: 80}}\n", 2, 12, "`<<` merges"
    ),
    "undefined-alias": Case("mesh: demo\nservices: *nope\n", 2, 11, "undefined alias"),
    "second-document": Case(
        "mesh: demo\nservices: {}\n---\nmesh: again\n", 3, 1, "a single YAML document"
    ),
    "escaped-nul-in-env": Case(
        'mesh: demo\nservices: {web: {image: web, port: 80, env: {A: "x\\0y"}}}\n',
        2,
        49,
        "NUL character",
    ),
}


@pytest.mark.parametrize("case", LOCATED.values(), ids=LOCATED.keys())
def test_hostile_yaml_is_a_located_problem_quickly(case: Case) -> None:
    started = time.perf_counter()
    found = problems_of(case.text)
    elapsed = time.perf_counter() - started
    assert any(case.message in p.message for p in found), found
    hit = next(p for p in found if case.message in p.message)
    if case.line == AT_ALIAS:
        assert case.text.splitlines()[hit.line - 1][hit.col - 1 :].startswith(("*", "<<")), hit
    else:
        assert (hit.line, hit.col) == (case.line, case.col), hit
    assert str(hit).startswith(f"devmesh.yaml:{hit.line}:{hit.col}: ")
    assert elapsed < 2 * TIME_BOUND_S, f"{elapsed:.2f}s"


@pytest.mark.parametrize(
    "text",
    [billion_laughs(), wide_bomb(), merge_bomb(), "a: " + "[" * 100_000, "a: " + "{a: " * 30_000],
    ids=["billion-laughs", "ten-million", "merge-bomb", "deep-lists", "deep-mappings"],
)
def test_bombs_stay_under_a_second_and_200_mb(text: str) -> None:
    elapsed, peak = bounded(lambda: load(text))
    assert elapsed < TIME_BOUND_S, f"{elapsed:.2f}s"
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("mesh: demo\nservices:\n  1: {image: web, port: 80}\n", "1"),
        ("mesh: demo\nservices:\n  TRUE: {image: web, port: 80}\n", "TRUE"),
        ("mesh: demo\nservices:\n  010: {image: web, port: 80}\n", "010"),
    ],
    ids=["int", "bool", "leading-zero"],
)
def test_a_number_or_boolean_key_is_kept_as_written(text: str, key: str) -> None:
    found = problems_of(text)
    assert [p.path for p in found] == [f"services.{key}"], found


def test_yaml_1_1_only_scalars_are_strings() -> None:
    text = doc(
        """
        mesh: demo
        services:
          web:
            image: web
            port: 80
            env: {WHEN: 2001-13-45, SIGN: =, DAY: 2001-1-1}
        """
    )
    env = dict(load(text).service("web").versions[0].env)
    assert env == {"WHEN": "2001-13-45", "SIGN": "=", "DAY": "2001-1-1"}


def test_merge_sources_earlier_in_the_list_win() -> None:
    text = doc(
        """
        mesh: demo
        a: &a {image: "a:1"}
        b: &b {image: "b:1", port: 80}
        services:
          web: {<<: [*a, *b]}
        """
    )
    found = problems_of(text)  # the top-level a and b are unknown keys; web itself is fine
    assert {p.path for p in found} == {"a", "b"}, found


def test_too_many_problems_stop_at_the_cap_with_a_note() -> None:
    services = "".join(f"  s{i}: {{image: web, port: 0}}\n" for i in range(150))
    found = problems_of("mesh: demo\nservices:\n" + services)
    assert len(found) == MAX_PROBLEMS + 1
    assert found[-1].message.startswith(f"stopped after {MAX_PROBLEMS} problems")


def test_control_characters_in_a_message_are_escaped() -> None:
    found = problems_of('mesh: demo\nservices: {"\\e[31mred": {image: web, port: 80}}\n')
    assert "\x1b" not in str(found[0])
    assert "\\x1b[31mred" in str(found[0])


# -- reading files -------------------------------------------------------------------------


def _fifo(tmp: Path) -> str:
    path = tmp / "fifo.yaml"
    os.mkfifo(path)
    return str(path)


def _large(tmp: Path) -> str:
    path = tmp / "large.yaml"
    path.write_bytes(b"# " + b"x" * MAX_FILE_BYTES + b"\n")
    return str(path)


def _directory(tmp: Path) -> str:
    return str(tmp)


def _missing(tmp: Path) -> str:
    return str(tmp / "nope.yaml")


def _symlink_to_dev_zero(tmp: Path) -> str:
    path = tmp / "zero.yaml"
    path.symlink_to("/dev/zero")
    return str(path)


REFUSED: dict[str, tuple[Callable[[Path], str], str]] = {
    "fifo": (_fifo, "is a FIFO"),
    "dev-zero": (lambda _: "/dev/zero", "is a device"),
    "dev-null": (lambda _: "/dev/null", "is a device"),
    "symlink-to-dev-zero": (_symlink_to_dev_zero, "is a device"),
    "over-the-limit": (_large, "may be at most 1048576 bytes (1 MiB)"),
    "directory": (_directory, "is a directory"),
    "missing": (_missing, "no such file"),
    "stdin-not-asked-for": (lambda _: "-", "standard input is not accepted here"),
    "nul-in-the-name": (lambda tmp: str(tmp / "a\0b.yaml"), "not a usable file name"),
    "not-a-directory-on-the-way": (lambda _: "/etc/passwd/x.yaml", "cannot read"),
}


@pytest.mark.parametrize(("make", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_a_file_that_is_not_a_mesh_file_is_refused_at_once(
    tmp_path: Path, make: Callable[[Path], str], message: str
) -> None:
    path = make(tmp_path)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            load_path(path)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=read, daemon=True)  # a blocked open must not hang pytest
    worker.start()
    worker.join(timeout=2)
    assert not worker.is_alive(), "reading blocked"
    assert isinstance(outcome[0], MeshFileError), outcome
    assert message in str(outcome[0])


def test_a_file_at_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    body = b"mesh: demo\nservices: {web: {image: web, port: 80}}\n"
    path.write_bytes(body + b"#" * (MAX_FILE_BYTES - len(body) - 1) + b"\n")
    assert len(read_mesh_bytes(str(path))) == MAX_FILE_BYTES
    assert load_path(str(path)).name == "demo"


def test_stdin_is_read_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    fake = io.TextIOWrapper(io.BytesIO(b"mesh: demo\nservices: {web: {image: w, port: 80}}\n"))
    monkeypatch.setattr(sys, "stdin", fake)
    assert load_path("-", allow_stdin=True).source == "<stdin>"


def test_bytes_over_the_limit_are_refused_before_decoding() -> None:
    with pytest.raises(MeshFileError, match="at most"):
        read_text(b"a" * (MAX_FILE_BYTES + 1), "x.yaml")


# -- any input at all ----------------------------------------------------------------------

_SETTINGS = settings(
    max_examples=int(os.environ.get("DEVMESH_PROPERTY_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_TOKENS = st.sampled_from(
    [
        "mesh: demo\n",
        "services:\n",
        "  web:\n",
        "    port: 80\n",
        "    image: web\n",
        "&a ",
        "*a",
        "&b [*a, *a]",
        "<<: *a\n",
        "<<: [*a, *b]\n",
        "? ",
        ": ",
        "~: 1\n",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "!!foo ",
        "!!int ",
        "!!float ",
        "!!binary ",
        "!!timestamp ",
        "!!set ",
        "!!omap ",
        "!<tag:x> ",
        "!e ",
        "%TAG ! tag:x,2000:\n",
        "%YAML 1.1\n",
        "---\n",
        "...\n",
        "2001-13-45",
        "9" * 5000,
        "0x" + "f" * 3000,
        "1e309",
        ".inf",
        ".nan",
        '"\\0"',
        '"\\e"',
        "'",
        '"',
        "|\n",
        ">-\n",
        "#",
        "\t",
        "  ",
        "\n",
        "\ufeff",
        "\x85",
        "\u2028",
    ]
)


@st.composite
def nasty_yaml(draw: st.DrawFn) -> str:
    return "".join(draw(st.lists(_TOKENS, max_size=40)))


def _only_mesh_errors(text: str) -> None:
    elapsed, peak = bounded(lambda: load(text, "gen.yaml"))
    assert elapsed < TIME_BOUND_S, f"{elapsed:.2f}s"
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB"


@_SETTINGS
@given(st.text(max_size=400))
def test_any_text_gives_a_mesh_or_mesh_errors(text: str) -> None:
    _only_mesh_errors(text)


@_SETTINGS
@given(nasty_yaml())
def test_structured_nasty_yaml_gives_a_mesh_or_mesh_errors(text: str) -> None:
    _only_mesh_errors(text)


@_SETTINGS
@given(st.binary(max_size=400))
def test_any_bytes_give_a_mesh_or_mesh_errors(raw: bytes) -> None:
    def run() -> None:
        load(read_text(raw, "gen.yaml"), "gen.yaml")

    elapsed, peak = bounded(run)
    assert elapsed < TIME_BOUND_S
    assert peak < MEMORY_BOUND
