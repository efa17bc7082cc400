"""The loop's view of the mesh file: the first look after start applies nothing."""

from __future__ import annotations

import os
from pathlib import Path

from devmesh.core.load import load_path
from devmesh.daemon.eventlog import EventLog
from devmesh.daemon.filestate import FileState
from devmesh.daemon.meshsource import read_mesh

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop" / "devmesh.yaml"


def test_first_look_at_an_unchanged_file_named_another_way_applies_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    link = tmp_path / "linked"
    link.symlink_to(SHOP.parent)
    monkeypatch.chdir(link)
    given = load_path("devmesh.yaml")  # how `devmesh up` names it: relative, via a symlink
    events = EventLog()
    state = FileState(given, "devmesh.yaml", events)
    resolved = Path("devmesh.yaml").resolve()
    assert str(resolved) != given.source and os.path.samefile(resolved, given.source)
    read = read_mesh(resolved, str(resolved.parent))  # how the watcher reads it
    assert read.mesh is not None and read.mesh != given  # the names differ ...
    assert state.take(read, lambda mesh: ()) is None  # ... and nothing is applied
    assert state.applied == read.digest
    assert list(events.last()) == []


def test_a_changed_file_is_still_applied(tmp_path: Path) -> None:
    path = tmp_path / "devmesh.yaml"
    path.write_text(SHOP.read_text().replace("{v1: 80, v2: 20}", "{v1: 70, v2: 30}"))
    (tmp_path / "app").mkdir()
    state = FileState(load_path(str(SHOP)), str(path), EventLog())
    read = read_mesh(path, str(tmp_path))
    assert state.take(read, lambda mesh: ()) is read.mesh
