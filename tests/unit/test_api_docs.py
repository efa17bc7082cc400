"""docs/api.md is checked against the code: the same endpoints, the same types."""

from __future__ import annotations

import re
from pathlib import Path

from devmesh.api import types as api
from devmesh.daemon.handlers import Handlers

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _endpoints() -> set[tuple[str, str]]:
    handlers = Handlers.__new__(Handlers)  # the table only: no daemon behind it
    return {(e.method, e.path) for e in handlers.endpoints()}


def test_docs_list_exactly_the_endpoints_the_daemon_serves() -> None:
    documented = set(re.findall(r"^## (GET|POST) (/v1/\S+)$", DOC.read_text(), re.M))
    assert documented == _endpoints()


def test_every_request_type_the_daemon_decodes_is_documented() -> None:
    handlers = Handlers.__new__(Handlers)
    text = DOC.read_text()
    for endpoint in handlers.endpoints():
        if endpoint.request is not None:
            assert f"`{endpoint.request.__name__}`" in text, endpoint.path


def test_every_type_named_in_the_docs_exists() -> None:
    named = set(re.findall(r"`([A-Z][A-Za-z]+)`", DOC.read_text()))
    assert named, "the docs name no type"
    missing = {n for n in named if not hasattr(api, n)} - {"DaemonRefused", "DaemonUnavailable"}
    assert not missing


def test_every_enum_value_is_documented() -> None:
    text = DOC.read_text()
    for enum in (api.PodState, api.EventKind, api.Severity, api.ErrorCode):
        for member in enum:
            assert f"`{member.value}`" in text, f"{enum.__name__}.{member.name}"
