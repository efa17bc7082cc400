"""`devmesh.testing`'s FileGuard: a test's `mesh.shift()` leaves the user's file as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from devmesh.core.edit import set_weights, write_file
from devmesh.core.load import load
from devmesh.testing import FileGuard

TEXT = (
    "\ufeff# the shop (a BOM and a comment: both must come back)\nmesh: m\nservices:\n"
    "  a:\n    image: x\n    port: 80\n    versions: {v1: {}, v2: {}}\n"
    "    routes: [{name: main, to: {v1: 90, v2: 10}}]   # é\n"
)


def shift_like_the_daemon(path: Path, v1: int) -> None:
    text = path.read_bytes().decode("utf-8-sig")
    new, _ = set_weights(text, load(text), "a", None, {"v1": v1, "v2": 100 - v1})
    write_file(path, new)


def test_file_is_put_back_byte_for_byte_after_several_shifts(tmp_path: Path) -> None:
    path = tmp_path / "devmesh.yaml"
    path.write_bytes(TEXT.encode("utf-8"))
    path.chmod(0o640)
    guard = FileGuard(path)
    for v1 in (0, 50):
        guard.before_change()
        shift_like_the_daemon(path, v1)
        guard.after_change()
    assert b"{v1: 50, v2: 50}" in path.read_bytes()
    guard.restore()
    assert path.read_bytes() == TEXT.encode("utf-8")
    assert path.stat().st_mode & 0o777 == 0o640
    guard.restore()  # a second teardown does nothing
    assert path.read_bytes() == TEXT.encode("utf-8")


def test_file_edited_by_someone_else_is_left_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "devmesh.yaml"
    path.write_bytes(TEXT.encode("utf-8"))
    guard = FileGuard(path)
    guard.before_change()
    shift_like_the_daemon(path, 0)
    guard.after_change()
    mine = path.read_bytes() + b"# the user's own edit\n"
    path.write_bytes(mine)
    with pytest.warns(UserWarning, match="edited during the test; not restoring"):
        guard.restore()
    assert path.read_bytes() == mine


def test_no_shift_means_the_file_is_never_written(tmp_path: Path) -> None:
    path = tmp_path / "devmesh.yaml"
    path.write_bytes(TEXT.encode("utf-8"))
    before = path.stat().st_mtime_ns
    FileGuard(path).restore()
    assert path.stat().st_mtime_ns == before
