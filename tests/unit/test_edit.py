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


# Routes sharing weights through YAML anchors, aliases and merge keys (issue 15): an edit
# must keep the file parsing and must never change another route's weights silently.
SHARED = textwrap.dedent(
    """\
    mesh: m
    services:
      a:
        image: x   # a's image
        port: 80
        env: &env {A: "1"}
        versions: {v1: {}, v2: {}}
        routes:
          - name: main
            to: &split {v1: 90, v2: 10}   # the split
      b:
        image: y
        port: 80
        env: {<<: *env, B: "2"}
        versions: {v1: {}, v2: {}}
        routes:
          - name: main
            to: *split
      c:
        image: z
        port: 80
        versions: {v1: {}, v2: {}}
        routes:
          - name: main
            to: *split
    """
)


def weights_of(text: str, service: str) -> dict[str, int]:
    return {t.version: t.weight for t in load(text).service(service).route("main").to}


def test_shift_of_an_alias_gives_that_route_its_own_weights_and_keeps_the_anchor() -> None:
    after, _ = set_weights(SHARED, load(SHARED), "b", None, {"v1": 50, "v2": 50})
    assert changed_lines(SHARED, after) == ["-        to: *split", "+        to: {v1: 50, v2: 50}"]
    assert weights_of(after, "b") == {"v1": 50, "v2": 50}
    assert weights_of(after, "a") == weights_of(after, "c") == {"v1": 90, "v2": 10}
    merged_env = dict(load(after).service("b").version("v1").env)
    assert merged_env == {"A": "1", "B": "2"}  # the merge key still works


def test_shift_of_an_anchor_other_routes_use_is_refused_naming_them() -> None:
    with pytest.raises(EditError) as caught:
        set_weights(SHARED, load(SHARED), "a", None, {"v1": 50, "v2": 50})
    message = str(caught.value)
    assert "&split" in message
    assert "route 'main' of 'b'" in message
    assert "route 'main' of 'c'" in message
    assert "Shift the routes that use it first" in message


def test_anchor_nobody_uses_any_more_is_kept_when_its_own_route_shifts() -> None:
    text = SHARED
    for service in ("b", "c"):
        text, _ = set_weights(text, load(text), service, None, {"v1": 0, "v2": 100})
    after, _ = set_weights(text, load(text), "a", None, {"v1": 30, "v2": 70})
    assert changed_lines(text, after) == [
        "-        to: &split {v1: 90, v2: 10}   # the split",
        "+        to: &split {v1: 30, v2: 70}   # the split",
    ]
    assert weights_of(after, "a") == {"v1": 30, "v2": 70}
    assert weights_of(after, "b") == weights_of(after, "c") == {"v1": 0, "v2": 100}


MERGED_ROUTE = textwrap.dedent(
    """\
    mesh: m
    services:
      a:
        image: x
        port: 80
        versions: {v1: {}, v2: {}}
        routes:
          - &main
            name: main
            to: {v1: 90, v2: 10}
            timeout: 2s
      b:
        image: y
        port: 80
        versions: {v1: {}, v2: {}}
        routes:
          - <<: *main
            retries: {attempts: 2}
      c: &svc
        image: z
        port: 80
        versions: {v1: {}, v2: {}}
        routes: [{name: main, to: {v1: 100}}]
      d:
        <<: *svc
        image: w
    """
)


@pytest.mark.parametrize(
    ("service", "message"),
    [
        pytest.param("b", "`to:` comes from a `<<` merge", id="to-through-a-route-merge"),
        pytest.param("a", "route at line 8 holds the anchor &main", id="route-others-merge"),
        pytest.param("d", "route list at line 23 comes from a `<<` merge", id="service-merge"),
        pytest.param("c", "service at line 19 holds the anchor &svc", id="service-others-merge"),
    ],
)
def test_shift_through_a_merge_key_is_refused_and_the_file_is_left_alone(service, message) -> None:
    with pytest.raises(EditError, match=message.replace("*", r"\*")):
        set_weights(MERGED_ROUTE, load(MERGED_ROUTE), service, None, {"v1": 50, "v2": 50})


# compose's habit: a service is a base that others merge, each writing its own `routes`
BASE_MERGED = textwrap.dedent(
    """\
    mesh: m
    services:
      a: &base
        image: x
        port: 80
        versions: {v1: {}, v2: {}}
        routes:
          - &main
            name: main
            to: {v1: 90, v2: 10}
            timeout: 2s
      b:
        <<: *base
        routes:
          - {name: main, to: {v1: 50, v2: 50}}
      c:
        <<: *base
        routes:
          - <<: *main
            to: {v1: 0, v2: 100}
    """
)


def test_a_service_others_merge_shifts_when_each_of_them_writes_its_own_routes() -> None:
    after, _ = set_weights(BASE_MERGED, load(BASE_MERGED), "a", None, {"v1": 30, "v2": 70})
    assert changed_lines(BASE_MERGED, after) == [
        "-        to: {v1: 90, v2: 10}",
        "+        to: {v1: 30, v2: 70}",
    ]
    assert weights_of(after, "a") == {"v1": 30, "v2": 70}
    assert weights_of(after, "b") == {"v1": 50, "v2": 50}
    assert weights_of(after, "c") == {"v1": 0, "v2": 100}
    assert load(after).service("c").route("main").timeout_ms == 2000  # the merge still works
    # one more merger without routes of its own would see a's: refused, file untouched
    more = BASE_MERGED + "  d:\n    <<: *base\n    image: y\n"
    with pytest.raises(EditError, match="service at line 3 holds the anchor &base"):
        set_weights(more, load(more), "a", None, {"v1": 30, "v2": 70})


@pytest.mark.parametrize(
    ("text", "service", "expected"),
    [
        pytest.param(
            "mesh: m\nservices:\n  a: {image: x, port: 80, versions: {v1: {}, v2: {}},"
            " routes: [{name: main, to: &w {v1: 90, v2: 10}}]}\n"
            "  b: {image: y, port: 80, versions: {v1: {}, v2: {}},"
            " routes: [{name: main, to: *w}]}\n",
            "b",
            "  b: {image: y, port: 80, versions: {v1: {}, v2: {}},"
            " routes: [{name: main, to: {v1: 40, v2: 60}}]}",
            id="flow-style-alias",
        ),
        pytest.param(
            "mesh: m\nservices:\n  a:\n    image: x\n    port: 80\n"
            "    versions: {v1: {}, v2: {}}\n    routes:\n      - name: main\n"
            "        to: &w\n          v1: 90  # most\n          v2: 10\n"
            "  b:\n    image: y\n    port: 80\n    versions: {v1: {}, v2: {}}\n"
            "    routes:\n      - name: main\n        to: *w   # same as a\n",
            "b",
            "        to: {v1: 40, v2: 60}   # same as a",
            id="block-anchor-alias-with-comment",
        ),
    ],
)
def test_alias_is_replaced_in_any_style(text, service, expected) -> None:
    after, _ = set_weights(text, load(text), service, None, {"v1": 40, "v2": 60})
    assert [line[1:] for line in changed_lines(text, after) if line[0] == "+"] == [expected]
    assert weights_of(after, "a") == {"v1": 90, "v2": 10}
    assert weights_of(after, service) == {"v1": 40, "v2": 60}


def test_block_weights_keep_an_unused_anchor_on_a_value() -> None:
    text = FILE.replace("v1: 50   # half", "v1: &half 50   # half")
    assert text != FILE
    after, _ = set_weights(text, load(text), "api", "block", {"v1": 20, "v2": 80})
    assert [(line[0], line[1:].strip()) for line in changed_lines(text, after)] == [
        ("-", "v1: &half 50   # half"),
        ("-", "v2: 50"),
        ("+", "v1: &half 20   # half"),
        ("+", "v2: 80"),
    ]
    assert {t.version: t.weight for t in load(after).service("api").route("block").to} == {
        "v1": 20,
        "v2": 80,
    }


def test_daemon_shift_refuses_a_shared_anchor_writing_nothing_and_detaches_an_alias(
    tmp_path,
) -> None:
    """The path `devmesh shift` and the TUI's weight keys take through the daemon."""
    from devmesh.api.types import ErrorCode
    from devmesh.daemon.errors import Refused
    from devmesh.daemon.eventlog import EventLog
    from devmesh.daemon.filestate import FileState

    path = tmp_path / "devmesh.yaml"
    path.write_text(SHARED)
    state = FileState(load(SHARED, str(path), str(tmp_path)), str(path), EventLog())
    with pytest.raises(Refused, match="&split") as caught:
        state.shift("a", {"v1": 50, "v2": 50}, None, str(tmp_path))
    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert path.read_text() == SHARED
    _, shifted, route = state.shift("c", {"v1": 50, "v2": 50}, None, str(tmp_path))
    assert route == "main"
    assert {t.version: t.weight for t in shifted.service("c").route("main").to} == {
        "v1": 50,
        "v2": 50,
    }
    assert weights_of(path.read_text(), "c") == {"v1": 50, "v2": 50}
    assert weights_of(path.read_text(), "b") == {"v1": 90, "v2": 10}
    assert "to: &split {v1: 90, v2: 10}" in path.read_text()
