"""Every examples/*/devmesh.yaml comes up and serves through its ingress."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, Mesh

EXAMPLES = sorted(ROOT.glob("examples/*/devmesh.yaml"))


@pytest.mark.docker
@pytest.mark.parametrize("mesh_file", EXAMPLES, ids=lambda p: p.parent.name)
def test_example_comes_up_and_serves(mesh_file: Path, make_mesh: Any) -> None:
    text = mesh_file.read_text()
    # Its own port may be taken by a demo running on this machine: use a free one, and build
    # contexts from where the example lives.
    text = re.sub(r"(ingress:\n  port: )\d+", r"\g<1>@PORT@", text)
    text = re.sub(r"build: \./", f"build: {mesh_file.parent}/", text)
    mesh: Mesh = make_mesh(text)
    mesh.up_ok()
    resp = mesh.get("/")
    assert resp.status == 200, resp
    assert resp.headers.get("x-devmesh-served-by")
    assert mesh.ps()["ready"] is True
