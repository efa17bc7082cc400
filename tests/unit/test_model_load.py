"""What a valid mesh file resolves to: every inherited default filled in, shorthands expanded."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

import pytest

from devmesh.core.load import load, load_path
from devmesh.core.model import (
    DEFAULT_ROUTE,
    IMPLICIT_VERSION,
    RETRY_ON,
    Build,
    ConnectionPool,
    Delay,
    Fault,
    Health,
    Mesh,
    Mirror,
    OutlierDetection,
    PathMatch,
    Retries,
    Route,
    Target,
    ValueMatch,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shop" / "devmesh.yaml"


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@pytest.fixture(scope="module")
def shop() -> Mesh:
    return load_path(str(EXAMPLE))


# -- the example file -----------------------------------------------------------------------


def test_example_mesh_has_its_services_in_file_order(shop: Mesh) -> None:
    assert shop.name == "shop"
    assert [s.name for s in shop.services] == ["frontend", "catalog", "stock"]
    assert shop.source == str(EXAMPLE)
    assert shop.base_dir == os.path.dirname(EXAMPLE)


def test_example_ingress_listens_on_loopback_only(shop: Mesh) -> None:
    assert shop.ingress is not None
    assert (shop.ingress.port, shop.ingress.host) == (8080, "127.0.0.1")
    assert [(r.name, r.service, r.match.path) for r in shop.ingress.routes] == [
        ("api", "catalog", PathMatch("prefix", "/catalog/")),
        ("site", "frontend", PathMatch("prefix", "/")),
    ]
    assert [s.name for s in shop.ingress_services()] == ["catalog", "frontend"]


def test_example_frontend_inherits_mesh_defaults_and_keeps_its_own_retries(shop: Mesh) -> None:
    frontend = shop.service("frontend")

    assert (frontend.port, frontend.protocol, frontend.calls) == (
        8000,
        "http",
        ("catalog", "stock"),
    )
    assert frontend.versions[0].name == IMPLICIT_VERSION
    assert frontend.versions[0].build == Build(context="./app")
    assert frontend.versions[0].image == "devmesh-shop-app:1"
    assert frontend.routes == (
        Route(
            DEFAULT_ROUTE,
            (Target(IMPLICIT_VERSION, 100),),
            retries=Retries(attempts=2, on=("connect-failure", "reset")),
            timeout_ms=5000,
        ),
    )
    assert frontend.health == Health(path="/healthz", interval_ms=1000, timeout_ms=1000)
    assert frontend.connection_pool == ConnectionPool(connect_timeout_ms=1000)
    assert [s.name for s in shop.upstreams(frontend)] == ["catalog", "stock"]


def test_example_catalog_versions(shop: Mesh) -> None:
    catalog = shop.service("catalog")

    v1, v2 = catalog.versions
    assert (v1.name, v1.replicas, v1.env) == ("v1", 1, ())
    assert (v2.name, v2.replicas, v2.env) == ("v2", 2, (("FEATURE", "on"),))


def test_example_catalog_routes(shop: Mesh) -> None:
    catalog = shop.service("catalog")

    canary = catalog.route("canary")
    assert canary.to == (Target("v2", 100),)
    assert canary.match.headers == (ValueMatch("x-canary", "exact", "1"),)
    assert (canary.retries, canary.timeout_ms) == (None, 5000)

    main = catalog.route("main")
    assert main.to == (Target("v1", 80), Target("v2", 20))
    assert main.match.path == PathMatch("prefix", "/")
    assert main.retries == Retries(attempts=3, on=("5xx", "reset"), per_try_timeout_ms=1000)
    assert main.timeout_ms == 2000
    assert main.fault == Fault(delay=Delay(fixed_ms=200, percent=5.0))
    assert main.mirror == Mirror(service="catalog", version="v2", percent=10.0)
    assert catalog.outlier_detection == OutlierDetection(
        consecutive_5xx=5, interval_ms=5000, base_ejection_ms=30_000, max_ejection_percent=10
    )


def test_example_stock_is_tcp_and_health_checked_by_connecting(shop: Mesh) -> None:
    stock = shop.service("stock")

    assert (stock.port, stock.protocol, stock.is_http) == (7000, "tcp", False)
    assert stock.routes == (Route(DEFAULT_ROUTE, (Target(IMPLICIT_VERSION, 100),)),)
    assert stock.health == Health(path=None, interval_ms=1000, timeout_ms=1000)


# -- inheritance: mesh defaults -> service -> route -----------------------------------------

INHERITANCE = doc(
    """
    mesh: demo
    defaults:
      protocol: http2
      timeout: 3s
      retries: {attempts: 2}
      health: {path: /healthz}
      egress: all
      outlier_detection: {consecutive_5xx: 7}
      connection_pool: {connect_timeout: 250ms, max_requests: 64}
    services:
      plain:
        image: plain:1
        port: 8000
      own:
        image: own:1
        port: 8001
        protocol: grpc
        timeout: 1s
        retries: {attempts: 4, on: [unavailable], per_try_timeout: 200ms}
        health: {path: /ready, interval: 5s}
        egress: declared
        outlier_detection: {consecutive_5xx: 3, interval: 1s}
        connection_pool: {max_connections: 10}
        routes:
          - name: report
            match: {path_prefix: /report}
            to: default
            timeout: 30s
            retries: {attempts: 1}
          - name: rest
            to: default
    """
)


@pytest.fixture(scope="module")
def inherited() -> Mesh:
    return load(INHERITANCE)


def test_service_without_its_own_policy_takes_the_mesh_defaults(inherited: Mesh) -> None:
    plain = inherited.service("plain")

    assert plain.protocol == "http2"
    assert plain.egress == "all"
    assert plain.health == Health(path="/healthz", interval_ms=2000, timeout_ms=1000)
    assert plain.outlier_detection == OutlierDetection(7, 10_000, 30_000, 10)
    assert plain.connection_pool == ConnectionPool(connect_timeout_ms=250, max_requests=64)
    (route,) = plain.routes
    assert route.timeout_ms == 3000
    assert route.retries == Retries(attempts=2, on=RETRY_ON)


def test_service_policy_blocks_merge_key_by_key_over_the_mesh_defaults(inherited: Mesh) -> None:
    # health, outlier_detection and connection_pool given on the service tune the mesh's
    # `defaults:` block: keys the service leaves out come from it (retries replace instead).
    own = inherited.service("own")

    assert own.protocol == "grpc"
    assert own.egress == "declared"
    assert own.health == Health(path="/ready", interval_ms=5000, timeout_ms=1000)
    assert own.outlier_detection == OutlierDetection(3, 1000, 30_000, 10)
    assert own.connection_pool == ConnectionPool(
        connect_timeout_ms=250, max_connections=10, max_requests=64
    )


def test_route_takes_the_service_policy_unless_it_sets_its_own(inherited: Mesh) -> None:
    own = inherited.service("own")

    report = own.route("report")
    assert report.timeout_ms == 30_000
    assert report.retries == Retries(attempts=1, on=RETRY_ON)
    rest = own.route("rest")
    assert rest.timeout_ms == 1000
    assert rest.retries == Retries(attempts=4, on=("unavailable",), per_try_timeout_ms=200)


@pytest.mark.parametrize(
    ("text", "service", "route"),
    [
        (
            "mesh: demo\ndefaults: {retries: {attempts: 3}}\n"
            "services:\n  web: {image: w, port: 8000, retries: {attempts: 0}}\n",
            "web",
            DEFAULT_ROUTE,
        ),
        (
            "mesh: demo\nservices:\n  web:\n    image: w\n    port: 8000\n"
            "    retries: {attempts: 3}\n"
            "    routes: [{name: once, to: default, retries: {attempts: 0}}]\n",
            "web",
            "once",
        ),
    ],
    ids=["service-over-defaults", "route-over-service"],
)
def test_zero_retry_attempts_switch_inherited_retries_off(
    text: str, service: str, route: str
) -> None:
    assert load(text).service(service).route(route).retries is None


# -- versions and workloads -----------------------------------------------------------------


def test_versions_inherit_the_service_workload_and_merge_env_over_it() -> None:
    mesh = load(
        doc(
            """
            mesh: demo
            services:
              web:
                image: web:1
                port: 8000
                env: {MODE: prod, LEVEL: info}
                command: [serve, --quiet]
                replicas: 2
                versions:
                  v1:
                  v2: {image: web:2, env: {LEVEL: debug, NEW: "1"}, replicas: 1}
            """
        )
    )
    v1, v2 = mesh.service("web").versions

    assert (v1.image, v1.env, v1.command, v1.replicas) == (
        "web:1",
        (("LEVEL", "info"), ("MODE", "prod")),
        ("serve", "--quiet"),
        2,
    )
    assert (v2.image, v2.env, v2.command, v2.replicas) == (
        "web:2",
        (("LEVEL", "debug"), ("MODE", "prod"), ("NEW", "1")),
        ("serve", "--quiet"),
        1,
    )


def test_service_without_versions_has_one_implicit_version_and_a_catch_all_route() -> None:
    web = load("mesh: demo\nservices:\n  web: {image: web:1, port: 8000}\n").service("web")

    assert [v.name for v in web.versions] == [IMPLICIT_VERSION]
    assert web.version(IMPLICIT_VERSION).replicas == 1
    assert web.routes == (Route(DEFAULT_ROUTE, (Target(IMPLICIT_VERSION, 100),)),)
    assert web.route(DEFAULT_ROUTE).match.path == PathMatch("prefix", "/")


@pytest.mark.parametrize(
    ("versions", "weights"),
    [
        ("{v1: }", [("v1", 100)]),
        ("{v1: , v2: }", [("v1", 50), ("v2", 50)]),
        ("{a: , b: , c: }", [("a", 34), ("b", 33), ("c", 33)]),
        (
            "{a: , b: , c: , d: , e: , f: }",
            [("a", 17), ("b", 17), ("c", 17), ("d", 17), ("e", 16), ("f", 16)],
        ),
    ],
    ids=["one", "two", "three", "six"],
)
def test_default_route_splits_evenly_across_versions_the_remainder_going_first(
    versions: str, weights: list[tuple[str, int]]
) -> None:
    mesh = load(f"mesh: demo\nservices:\n  web: {{image: w, port: 8000, versions: {versions}}}\n")

    route = mesh.service("web").route(DEFAULT_ROUTE)
    assert [(t.version, t.weight) for t in route.to] == weights
    assert sum(t.weight for t in route.to) == 100


def test_route_to_a_single_version_shorthand_sends_it_everything() -> None:
    mesh = load(
        "mesh: demo\nservices:\n  web:\n    image: w\n    port: 8000\n"
        "    versions: {v1: , v2: }\n    routes: [{to: v2}]\n"
    )

    route = mesh.service("web").routes[0]
    assert route.name == "route-0"
    assert route.to == (Target("v2", 100),)


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("\"sh -c 'echo hi there'\"", ("sh", "-c", "echo hi there")),
        ("'serve --port 8000'", ("serve", "--port", "8000")),
        ("[sh, -c, 'echo hi there']", ("sh", "-c", "echo hi there")),
    ],
    ids=["quoted-string", "plain-string", "list"],
)
def test_command_string_is_split_like_a_shell_and_a_list_kept(
    command: str, argv: tuple[str, ...]
) -> None:
    mesh = load(f"mesh: demo\nservices:\n  web: {{image: w, port: 8000, command: {command}}}\n")

    assert mesh.service("web").versions[0].command == argv


def test_build_shorthand_is_a_context_and_the_long_form_keeps_its_args() -> None:
    mesh = load(
        doc(
            """
            mesh: demo
            services:
              web:
                build: ./web
                port: 8000
              api:
                build: {context: ./api, dockerfile: Dockerfile.dev, args: {B: "2", A: "1"}}
                port: 9000
            """
        )
    )

    assert mesh.service("web").versions[0].build == Build(context="./web")
    assert mesh.service("web").versions[0].image is None
    assert mesh.service("api").versions[0].build == Build(
        context="./api", dockerfile="Dockerfile.dev", args=(("A", "1"), ("B", "2"))
    )


# -- matches ----------------------------------------------------------------------------------


def _match_of(match: str) -> Route:
    mesh = load(
        "mesh: demo\nservices:\n  web:\n    image: w\n    port: 8000\n"
        f"    routes: [{{match: {match}, to: default}}]\n"
    )
    return mesh.service("web").routes[0]


@pytest.mark.parametrize(
    ("method", "methods"),
    [("get", ("GET",)), ("[get, Post]", ("GET", "POST"))],
    ids=["one", "list"],
)
def test_methods_are_upper_cased(method: str, methods: tuple[str, ...]) -> None:
    assert _match_of(f"{{method: {method}}}").match.methods == methods


def test_header_names_are_lower_cased_and_each_value_form_resolves() -> None:
    route = _match_of(
        "{headers: {X-Canary: '1', X-User: {prefix: adm}, X-Id: {regex: '[0-9]+'}, "
        "X-Debug: {present: true}, X-Legacy: {present: false}, X-Exact: {exact: ''}}}"
    )

    assert route.match.headers == (
        ValueMatch("x-canary", "exact", "1"),
        ValueMatch("x-user", "prefix", "adm"),
        ValueMatch("x-id", "regex", "[0-9]+"),
        ValueMatch("x-debug", "present"),
        ValueMatch("x-legacy", "absent"),
        ValueMatch("x-exact", "exact", ""),
    )


def test_query_parameter_names_keep_their_case() -> None:
    route = _match_of("{query: {Page: '2'}}")

    assert route.match.query == (ValueMatch("Page", "exact", "2"),)


@pytest.mark.parametrize(
    ("match", "path"),
    [
        ("{}", PathMatch("prefix", "/")),
        ("{path_prefix: /api}", PathMatch("prefix", "/api")),
        ("{path: /api/v1}", PathMatch("exact", "/api/v1")),
        ("{path_regex: '/item/[0-9]+'}", PathMatch("regex", "/item/[0-9]+")),
    ],
    ids=["none", "prefix", "exact", "regex"],
)
def test_path_match_kinds(match: str, path: PathMatch) -> None:
    assert _match_of(match).match.path == path


# -- reachability -----------------------------------------------------------------------------


def test_egress_all_makes_every_other_service_an_upstream() -> None:
    mesh = load(
        doc(
            """
            mesh: demo
            services:
              web: {image: w, port: 8000, egress: all}
              api: {image: a, port: 8001}
              db: {image: d, port: 5432, protocol: tcp}
            """
        )
    )

    assert [s.name for s in mesh.upstreams(mesh.service("web"))] == ["api", "db"]
    assert mesh.upstreams(mesh.service("api")) == ()


# -- values -----------------------------------------------------------------------------------


def test_replaced_mesh_looks_up_its_own_services(shop: Mesh) -> None:
    catalog = shop.service("catalog")
    shifted = dataclasses.replace(
        catalog,
        routes=tuple(
            dataclasses.replace(r, to=(Target("v1", 50), Target("v2", 50)))
            if r.name == "main"
            else r
            for r in catalog.routes
        ),
    )

    new = dataclasses.replace(
        shop, services=tuple(shifted if s.name == "catalog" else s for s in shop.services)
    )

    assert new.service("catalog") is shifted
    assert new.service("catalog").route("main").to == (Target("v1", 50), Target("v2", 50))
    assert shop.service("catalog").route("main").to == (Target("v1", 80), Target("v2", 20))
    assert new != shop


def test_replaced_mesh_without_a_service_no_longer_finds_it(shop: Mesh) -> None:
    smaller = dataclasses.replace(
        shop, services=tuple(s for s in shop.services if s.name != "stock")
    )

    assert not smaller.has_service("stock")
    with pytest.raises(KeyError, match="no service 'stock' in mesh 'shop'"):
        smaller.service("stock")


def test_loading_the_same_text_twice_gives_equal_meshes() -> None:
    text = EXAMPLE.read_text()

    assert load(text) == load(text)
