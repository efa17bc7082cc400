"""Property tests: thousands of generated and mutated mesh files either load or give located
problems; whatever loads renders to configuration Envoy's API (and the real Envoy) accepts,
and is accepted by the published JSON Schema too."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, event, given, settings

from devmesh.adapters.xds_types import bootstrap_proto
from devmesh.core.load import load
from devmesh.core.model import Mesh
from devmesh.core.problems import MeshFileError, MeshInvalid
from devmesh.core.schema import json_schema
from devmesh.core.source import parse
from devmesh.envoy.render import render_mesh
from tests.envoy_check import envoy_rejections
from tests.strategies import dump, mangled_text, mutated_document, valid_mesh

# `make test` runs 400 / 25 (each CI run draws new examples); `make fuzz` goes deeper.
EXAMPLES = int(os.environ.get("DEVMESH_PROPERTY_EXAMPLES", "400"))
ENVOY_EXAMPLES = int(os.environ.get("DEVMESH_ENVOY_EXAMPLES", "25"))
VALIDATOR = jsonschema.Draft7Validator(json_schema())
FAST = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def load_or_problems(text: str) -> Mesh | None:
    """The property itself: a Mesh, or located problems; never any other exception."""
    try:
        mesh = load(text, "gen.yaml")
    except MeshInvalid as exc:
        assert exc.problems
        last_line = text.count("\n") + 2
        for p in exc.problems:
            assert p.file == "gen.yaml"
            assert 1 <= p.line <= last_line, p
            assert p.col >= 1, p
            assert p.message, p
            assert str(p).startswith(f"gen.yaml:{p.line}:{p.col}: ")
        event("invalid")
        return None
    except MeshFileError:
        event("not a mesh file")
        return None
    event("valid")
    for item in render_mesh(mesh):
        bootstrap_proto(item.bootstrap)  # strict: unknown fields or bad enums raise
    return mesh


def schema_agrees(text: str) -> None:
    located, _ = parse(text, "gen.yaml")
    errors = list(VALIDATOR.iter_errors(located.data))
    assert not errors, errors[0].message


@FAST
@given(doc=valid_mesh())
def test_generated_mesh_files_load_or_report_located_problems(doc: dict[str, Any]) -> None:
    text = dump(doc)
    if load_or_problems(text) is not None:
        schema_agrees(text)


@FAST
@given(doc=mutated_document())
def test_mutated_mesh_files_load_or_report_located_problems(doc: dict[str, Any]) -> None:
    text = dump(doc)
    if load_or_problems(text) is not None:
        schema_agrees(text)


@FAST
@given(text=mangled_text())
def test_mangled_yaml_text_never_raises_anything_else(text: str) -> None:
    load_or_problems(text)


@pytest.mark.envoy
@settings(max_examples=ENVOY_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=valid_mesh())
def test_everything_that_validates_is_accepted_by_real_envoy(
    doc: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    try:
        mesh = load(dump(doc), "gen.yaml")
    except MeshInvalid:
        event("invalid: not sent to Envoy")
        return
    event("valid: checked by Envoy")
    directory: Path = tmp_path_factory.mktemp("gen")
    assert envoy_rejections(render_mesh(mesh), directory) == [], json.dumps(doc)
