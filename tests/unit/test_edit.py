"""`shift` edits the mesh file's text: only the weights change, every other byte stays."""

from __future__ import annotations

import difflib
import textwrap

import pytest

from devmesh.core.edit import EditError, set_weights
from devmesh.core.load import load

FILE = textwrap.dedent(
    """\
    # the shop
    mesh: shop
    services:
      web: {image: w, port: 8000}   # no routes yet
      api:
        image: a:1    # pinned
        port: 8000
        versions: {v1: {}, v2: {}, v3: {}}
        routes:
          - name: canary          # header canary
            match: {headers: {x-canary: "1"}}
            to: v2
          - name: block
            match: {path_prefix: /b}
            to:
              v1: 50   # half
              v2: 50
            # trailing comment
          - name: main
            to: {v1: 90, v2: 10}  # the split
      worker:
        image: k
        port: 9000
        versions: {a: {}, b: {}}
    """
)


def changed_lines(before: str, after: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


@pytest.mark.parametrize(
    ("service", "route", "weights", "expected_route", "diff"),
    [
        pytest.param(
            "api",
            None,
            {"v1": 70, "v2": 30},
            "main",
            ["-    to: {v1: 90, v2: 10}  # the split", "+    to: {v1: 70, v2: 30}  # the split"],
            id="catch-all-flow-mapping",
        ),
        pytest.param(
            "api",
            "canary",
            {"v1": 100},
            "canary",
            ["-    to: v2", "+    to: {v1: 100}"],
            id="scalar-target",
        ),
        pytest.param(
            "api",
            "block",
            {"v1": 20, "v2": 80},
            "block",
            ["-      v1: 50   # half", "-      v2: 50", "+      v1: 20   # half", "+      v2: 80"],
            id="block-mapping-values-in-place",
        ),
        pytest.param(
            "api",
            "block",
            {"v1": 20, "v3": 80},
            "block",
            [
                "-      v1: 50   # half",
                "-      v2: 50",
                "+      v1: 20   # half",
                "+      v2: 0",
                "+      v3: 80",
            ],
            id="block-mapping-new-version",
        ),
        pytest.param(
            "web",
            None,
            {"default": 100},
            "default",
            [
                "-  web: {image: w, port: 8000}   # no routes yet",
                "+  web: {image: w, port: 8000, routes: [{name: default, to: {default: 100}}]}"
                "   # no routes yet",
            ],
            id="flow-service-without-routes",
        ),
        pytest.param(
            "worker",
            None,
            {"a": 25, "b": 75},
            "default",
            ["+    routes:", "+      - {name: default, to: {a: 25, b: 75}}"],
            id="block-service-without-routes",
        ),
    ],
)
def test_shift_rewrites_only_the_weights(service, route, weights, expected_route, diff) -> None:
    mesh = load(FILE)
    after, chosen = set_weights(FILE, mesh, service, route, weights)
    assert chosen == expected_route

    def norm(lines: list[str]) -> list[tuple[str, str]]:
        return [(line[0], line[1:].strip()) for line in lines]

    assert norm(changed_lines(FILE, after)) == norm(diff)
    reloaded = load(after)
    got = {t.version: t.weight for t in reloaded.service(service).route(chosen).to}
    assert got == {**{v: 0 for v in got}, **weights}


@pytest.mark.parametrize(
    ("service", "route", "weights", "message"),
    [
        pytest.param("apx", None, {"v1": 100}, "did you mean 'api'", id="unknown-service"),
        pytest.param("api", "mian", {"v1": 100}, "did you mean 'main'", id="unknown-route"),
        pytest.param("api", None, {"v9": 100}, "no version 'v9'", id="unknown-version"),
        pytest.param("api", None, {"v1": 60, "v2": 30}, "add up to 90", id="not-100"),
        pytest.param("api", None, {"v1": 200, "v2": -100}, "between 0 and 100", id="range"),
    ],
)
def test_bad_shift_is_refused_with_a_clear_message(service, route, weights, message) -> None:
    with pytest.raises(EditError, match=message):
        set_weights(FILE, load(FILE), service, route, weights)


def test_route_must_be_named_when_there_is_no_catch_all() -> None:
    text = FILE.replace("      - name: main\n        to: {v1: 90, v2: 10}  # the split\n", "")
    assert text != FILE
    with pytest.raises(EditError, match="name one with --route"):
        set_weights(text, load(text), "api", None, {"v1": 100})
