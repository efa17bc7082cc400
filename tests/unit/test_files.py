"""A file that is not a mesh file at all is refused with a plain sentence, never a traceback.

`MeshFileError` when the file cannot be read as YAML text (missing, a directory, empty,
binary, not UTF-8); `MeshInvalid` with a located problem when it is YAML of the wrong shape.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devmesh.core.load import load_path
from devmesh.core.problems import MeshError, MeshFileError, MeshInvalid

VALID = b"mesh: demo\nservices:\n  web: {image: web:1, port: 8000}\n"


def write(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "devmesh.yaml"
    path.write_bytes(content)
    return str(path)


def test_missing_file_says_so_and_how_to_name_another(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere.yaml")

    with pytest.raises(MeshFileError) as caught:
        load_path(path)

    assert str(caught.value) == f"{path}: no such file (give another with -f FILE)"


def test_directory_is_not_a_mesh_file(tmp_path: Path) -> None:
    with pytest.raises(MeshFileError) as caught:
        load_path(str(tmp_path))

    assert str(caught.value) == f"{tmp_path}: is a directory, not a mesh file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_says_why(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    os.chmod(path, 0)

    with pytest.raises(MeshFileError, match="cannot read: Permission denied"):
        load_path(path)


def test_path_through_a_file_says_it_cannot_be_read(tmp_path: Path) -> None:
    path = os.path.join(write(tmp_path, VALID), "devmesh.yaml")

    with pytest.raises(MeshFileError) as caught:
        load_path(path)

    assert str(caught.value) == f"{path}: cannot read: Not a directory"


FILE_ERRORS: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "the file is empty; a mesh file needs `mesh:` and `services:`"),
    "blank-lines": (b"\n  \n\t\n", "the file is empty"),
    "comments-only": (b"# mesh: demo\n  # services:\n\n", "the file is empty"),
    "byte-order-mark-only": (b"\xef\xbb\xbf\n", "the file is empty"),
    "binary-with-nul": (b"mesh: demo\x00\x01\x02\n", "this is a binary file, not a YAML mesh file"),
    "utf-16": ("mesh: demo\n".encode("utf-16"), "this is a binary file"),
    "latin-1": (b"mesh: caf\xe9\n", "not UTF-8 text (byte 9); save it as UTF-8"),
}


@pytest.mark.parametrize(("content", "message"), FILE_ERRORS.values(), ids=FILE_ERRORS.keys())
def test_file_that_is_not_yaml_text_is_refused_with_its_name(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = write(tmp_path, content)

    with pytest.raises(MeshFileError) as caught:
        load_path(path)

    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


WRONG_SHAPE: dict[str, tuple[bytes, int]] = {
    "list": (b"- mesh: demo\n- services: {}\n", 1),
    "scalar": (b"just some words\n", 1),
    "number": (b"42\n", 1),
    "null": (b"~\n", 1),
    "only-a-document-marker": (b"---\n", 2),  # the empty document's null is on line 2
}


@pytest.mark.parametrize(("content", "line"), WRONG_SHAPE.values(), ids=WRONG_SHAPE.keys())
def test_yaml_that_is_not_a_mapping_is_one_located_problem(
    tmp_path: Path, content: bytes, line: int
) -> None:
    path = write(tmp_path, content)

    with pytest.raises(MeshInvalid) as caught:
        load_path(path)

    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.col, problem.path) == (path, line, 1, "")
    assert problem.message == "a mesh file is a mapping with at least `mesh:` and `services:`"


def test_yaml_syntax_error_in_a_file_is_located_in_that_file(tmp_path: Path) -> None:
    path = write(tmp_path, b"mesh: demo\nservices: {web: [\n")

    with pytest.raises(MeshInvalid) as caught:
        load_path(path)

    (problem,) = caught.value.problems
    assert problem.file == path
    assert problem.message.startswith("YAML syntax: ")
    assert str(problem).startswith(f"{path}:3:1: ")


def test_byte_order_mark_and_windows_line_endings_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + VALID.replace(b"\n", b"\r\n"))

    mesh = load_path(path)

    assert mesh.name == "demo"
    assert mesh.source == path
    assert mesh.base_dir == str(tmp_path)


def test_relative_path_gets_an_absolute_base_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, VALID)
    monkeypatch.chdir(tmp_path)

    mesh = load_path("devmesh.yaml")

    assert mesh.source == "devmesh.yaml"
    assert mesh.base_dir == str(tmp_path)


CONTROL_CHARACTERS: dict[str, bytes] = {
    "bell-in-a-value": b"mesh: demo\x07\nservices:\n  web: {image: web:1, port: 8000}\n",
    "escape-in-a-comment": b"# \x1b[31mred\x1b[0m\n" + VALID,
}


@pytest.mark.parametrize("content", CONTROL_CHARACTERS.values(), ids=CONTROL_CHARACTERS.keys())
def test_control_character_is_a_problem_not_a_crash(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path, content)

    with pytest.raises(MeshError):
        load_path(path)


ANY_BYTES: dict[str, bytes] = {
    "truncated-utf-8": b"mesh: caf\xc3",
    "lone-surrogate-escape": b'mesh: "\\ud800"\n',
    "deep-nesting": b"mesh: " + b"[" * 200 + b"]" * 200 + b"\n",
    "recursive-alias": b"mesh: &a [*a]\n",
    "unknown-tag": b"mesh: !!python/object:os.system echo\n",
    "tab-indentation": b"mesh: demo\nservices:\n\tweb: {}\n",
    "only-a-key": b"mesh:\n",
}


@pytest.mark.parametrize("content", ANY_BYTES.values(), ids=ANY_BYTES.keys())
def test_odd_content_raises_only_the_projects_own_errors(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path, content)

    with pytest.raises(MeshError) as caught:
        load_path(path)

    assert str(caught.value)


def test_integer_too_long_to_convert_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace(b"8000", b"9" * 5000))

    with pytest.raises(MeshInvalid) as caught:
        load_path(path)

    assert [p.path for p in caught.value.problems] == ["services.web.port"]
