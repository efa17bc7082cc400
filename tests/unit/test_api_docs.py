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


def _answer_types() -> dict[str, set[str]]:
    """Each endpoint's answer types, read from its handler's return annotation (an endpoint
    added with a lambda is read through the method the lambda calls, named as the path)."""
    import typing

    out: dict[str, set[str]] = {}
    handlers = Handlers.__new__(Handlers)
    for endpoint in handlers.endpoints():
        name = endpoint.path.removeprefix("/v1/").replace("/", "_")
        method = getattr(Handlers, getattr(endpoint.handler, "__name__", ""), None)
        method = method or getattr(Handlers, name, None)
        if method is None:
            continue
        hint = typing.get_type_hints(method).get("return")
        names = {getattr(a, "__name__", "") for a in _flatten(hint)}
        found = {n for n in names if n and hasattr(api, n)}
        out[endpoint.path] = found
    return out


def _flatten(hint: object) -> list[object]:
    import typing

    args = typing.get_args(hint)
    return [hint] if not args else [t for a in args for t in _flatten(a)]


def test_every_answer_type_is_documented_under_its_endpoint() -> None:
    """A new endpoint (as /v1/restart was) or a changed answer is caught here, not by users."""
    text = DOC.read_text()
    sections = dict(re.findall(r"^## (?:GET|POST) (/v1/\S+)\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    answers = _answer_types()
    assert "/v1/restart" in answers and answers["/v1/restart"] == {"RestartResult"}
    for path, types in answers.items():
        for name in types:
            assert f"`{name}`" in sections.get(path, ""), (
                f"{path} answers {name}: not in its section"
            )
