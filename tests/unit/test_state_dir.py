"""The state directory: devmesh removes and chmods only what it made and marked, so no
project name or path can turn `down` into `rm -rf` of something else."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devmesh.cli.app import run
from devmesh.core.names import InvalidProjectName
from devmesh.daemon.state import MARKER, StateDir, StateDirError


@pytest.fixture
def base(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state base inside a tree of victims: siblings, a parent, children devmesh did not
    make (short paths: socket paths under it must fit). DOCKER_HOST points nowhere: nothing
    here may reach a real engine."""
    top = Path(tempfile.mkdtemp(prefix="dm-"))
    root = top / "root"
    root.mkdir()
    state = root / "state"
    monkeypatch.setenv("DEVMESH_STATE_DIR", str(state))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    yield state
    shutil.rmtree(top, ignore_errors=True)


def _victims(base: Path) -> list[Path]:
    base.mkdir(mode=0o700, exist_ok=True)
    made = [base.parent / "victim", base / "victim", base.parent.parent / "outside"]
    for d in made:
        d.mkdir(exist_ok=True)
        (d / "precious.txt").write_text("keep me")
    return made


def _intact(victims: list[Path]) -> bool:
    return all((d / "precious.txt").read_text() == "keep me" for d in victims)


def test_create_marks_a_private_directory_and_remove_deletes_only_it(base: Path) -> None:
    victims = _victims(base)
    state = StateDir.for_project("shop")
    state.create()
    assert (state.path / MARKER).is_file()
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o700
    assert state.owned()
    assert state.remove() is True
    assert not state.path.exists()
    assert state.remove() is False  # nothing left: nothing to do
    assert _intact(victims)


PATH_LIKE = [
    "../victim", ".", "..", "../..", "/tmp", "victim/..", "./victim", "x/../../victim",
    "../../outside", "-dash", "--help", "Bad Name", "victim/", "",
]  # fmt: skip


@pytest.mark.parametrize("value", PATH_LIKE, ids=lambda v: repr(v))
def test_down_with_a_path_like_project_deletes_nothing(
    base: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    victims = _victims(base)
    mine = StateDir.for_project("mine")
    mine.create()
    code = run(["down", f"--project={value}"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err and "devmesh:" in err
    assert _intact(victims)
    assert mine.owned()  # another instance's state is untouched too


def test_down_with_an_absolute_path_deletes_nothing(
    base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victims = _victims(base)
    for value in (str(base), str(victims[0]), str(victims[1])):
        assert run(["down", "-p", value]) == 1
    assert "not a project name" in capsys.readouterr().err
    assert _intact(victims)


def test_for_project_refuses_names_that_are_paths(base: Path) -> None:
    for value in ("../victim", ".", "..", "a/b"):
        with pytest.raises(InvalidProjectName):
            StateDir.for_project(value)


def test_remove_refuses_an_unmarked_directory_a_link_and_anything_not_directly_under_base(
    base: Path, tmp_path: Path
) -> None:
    victims = _victims(base)
    unmarked = StateDir(base / "victim")  # a valid name, but devmesh did not make it
    with pytest.raises(StateDirError, match="refusing to remove"):
        unmarked.remove()
    outside = base.parent / "victim"
    (outside / MARKER).write_text("forged, but not under the base")
    with pytest.raises(StateDirError, match="refusing to remove"):
        StateDir(outside).remove()
    with pytest.raises(StateDirError, match="refusing to remove"):
        StateDir(base / ".." / "victim").remove()
    link = base / "link"
    link.symlink_to(outside)  # marked target, but the entry itself is a link
    with pytest.raises(StateDirError, match="refusing to remove"):
        StateDir(link).remove()
    assert _intact(victims)


def test_an_existing_unmarked_directory_is_not_adopted(base: Path) -> None:
    _victims(base)
    with pytest.raises(StateDirError, match="devmesh did not make it"):
        StateDir.for_project("victim").create()
    assert not (base / "victim" / MARKER).exists()


def test_a_missing_base_is_made_private_and_its_parent_is_left_alone(base: Path) -> None:
    parent = base.parent
    os.chmod(parent, 0o755)
    StateDir.for_project("shop").create()
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    assert stat.S_IMODE(parent.stat().st_mode) == 0o755


def test_an_existing_open_base_is_reported_not_chmodded(base: Path) -> None:
    base.mkdir()
    os.chmod(base, 0o755)
    with pytest.raises(StateDirError, match="has mode 0755"):
        StateDir.for_project("shop").create()
    assert stat.S_IMODE(base.stat().st_mode) == 0o755
    assert not (base / "shop").exists()


def test_up_with_a_path_like_project_makes_no_directory_and_chmods_nothing(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victims = _victims(base)
    os.chmod(base.parent, 0o755)
    mesh = tmp_path / "devmesh.yaml"
    mesh.write_text("mesh: shop\nservices:\n  web: {image: x:1, port: 80}\n")
    before = sorted(p.name for p in base.iterdir())
    for value in ("../x", "..", "x/y", "-dash"):
        assert run(["up", "-d", "-f", str(mesh), f"--project={value}"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert stat.S_IMODE(base.parent.stat().st_mode) == 0o755
    assert sorted(p.name for p in base.iterdir()) == before
    assert not (base.parent / "x").exists()
    assert _intact(victims)


def test_the_ingress_port_is_kept_and_cleared(base: Path) -> None:
    state = StateDir.for_project("shop")
    state.create()
    assert state.stored_ingress_port() is None
    state.store_ingress_port(41234)
    assert state.stored_ingress_port() == 41234
    state.store_ingress_port(None)
    assert state.stored_ingress_port() is None
    state.ingress_port_file.write_text("garbage")
    assert state.stored_ingress_port() is None
