"""Values are range-checked where they enter, and `validate` refuses what `up` would fail on.

Each case adds a few lines to one valid service (`web`, from line 3) and names the one problem
that must come back: line, column, dotted path and the telling part of the message.
"""

from __future__ import annotations

import http.server
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from devmesh.adapters.probe import probe
from devmesh.core import limits
from devmesh.core.limits import check_fault_values
from devmesh.core.load import load
from devmesh.core.model import HEALTH_INTERVAL_MS, HEALTH_TIMEOUT_MS, HEALTHY_STATUSES, Health
from devmesh.core.problems import MeshInvalid, Problem
from devmesh.core.schema import image_reference_problem, json_schema


def mesh_with(extra: str, *, image: str = "web:1") -> str:
    """A valid mesh whose service `web` gets `extra` from line 6, column 5."""
    body = textwrap.indent(textwrap.dedent(extra).strip("\n"), "    ")
    return f"mesh: demo\nservices:\n  web:\n    image: {image}\n    port: 8000\n{body}\n"


def problems_of(text: str, base_dir: str = ".") -> tuple[Problem, ...]:
    with pytest.raises(MeshInvalid) as caught:
        load(text, "devmesh.yaml", base_dir)
    return caught.value.problems


class Case(NamedTuple):
    extra: str
    line: int
    col: int
    path: str
    message: str


def _route(field: str) -> str:
    return "routes:\n  - to: default\n    " + field


CASES: dict[str, Case] = {
    # -- percentages: finite, 0 to 100 ---------------------------------------------------
    "percent-infinity": Case(
        _route("fault: {abort: {status: 503, percent: .inf}}"),
        8,
        47,
        "services.web.routes[0].fault.abort.percent",
        "between 0 and 100, got inf",
    ),
    "percent-overflowing-to-infinity": Case(
        _route("fault: {abort: {status: 503, percent: 1.0e+309}}"),
        8,
        47,
        "services.web.routes[0].fault.abort.percent",
        "between 0 and 100, got inf",
    ),
    "percent-1e309-is-text-in-yaml": Case(
        _route("fault: {abort: {status: 503, percent: 1e309}}"),
        8,
        47,
        "services.web.routes[0].fault.abort.percent",
        "expected a percentage (0 to 100), got '1e309'",
    ),
    "percent-nan": Case(
        _route("fault: {abort: {status: 503, percent: .nan}}"),
        8,
        47,
        "services.web.routes[0].fault.abort.percent",
        "expected a percentage",
    ),
    "percent-negative": Case(
        _route("fault: {delay: {fixed: 1s, percent: -50}}"),
        8,
        45,
        "services.web.routes[0].fault.delay.percent",
        "between 0 and 100, got -50",
    ),
    "percent-string-over-100": Case(
        _route("mirror: {version: default, percent: 150%}"),
        8,
        45,
        "services.web.routes[0].mirror.percent",
        "between 0 and 100, got 150",
    ),
    # -- ports and statuses --------------------------------------------------------------
    "status-below-200": Case(
        _route("fault: {abort: {status: 199}}"),
        8,
        33,
        "services.web.routes[0].fault.abort.status",
        "must be at least 200, got 199",
    ),
    "status-over-599": Case(
        _route("fault: {abort: {status: 600}}"),
        8,
        33,
        "services.web.routes[0].fault.abort.status",
        "must be at most 599, got 600",
    ),
    # -- durations: non-negative, at most a day (a fault's delay: an hour) ---------------
    "timeout-over-a-day": Case(
        "timeout: 25h", 6, 14, "services.web.timeout", "must be at most 24h, got 25h"
    ),
    "negative-timeout": Case("timeout: -1s", 6, 14, "services.web.timeout", "not a duration"),
    "health-interval-of-a-year": Case(
        "health: {interval: 8760h}",
        6,
        24,
        "services.web.health.interval",
        "must be at most 24h",
    ),
    "fault-delay-over-an-hour": Case(
        _route("fault: {delay: {fixed: 61m}}"),
        8,
        32,
        "services.web.routes[0].fault.delay.fixed",
        "must be at most 1h, got 61m",
    ),
    "huge-duration": Case(
        "timeout: " + "9" * 400 + "h", 6, 14, "services.web.timeout", "is too long"
    ),
    # -- counts --------------------------------------------------------------------------
    "replicas-over-50": Case("replicas: 51", 6, 15, "services.web.replicas", "at most 50"),
    "replicas-negative": Case("replicas: -1", 6, 15, "services.web.replicas", "at least 0"),
    "attempts-over-10": Case(
        "retries: {attempts: 11}", 6, 25, "services.web.retries.attempts", "at most 10"
    ),
    # -- what Docker would refuse at `up` ------------------------------------------------
    "nul-in-env-value": Case(
        'env: {A: "x\\0y"}', 6, 14, "services.web.env.A", "contains a NUL character"
    ),
    "nul-in-env-name": Case('env: {"A\\0B": x}', 6, 11, "services.web.env.A\\x00B", "NUL"),
    "lone-surrogate-in-env-value": Case(
        'env: {A: "\\udc80"}', 6, 14, "services.web.env.A", "lone surrogate"
    ),
    "lone-surrogate-in-a-query-name": Case(
        _route('match: {query: {"\\ud800": x}}'),
        8,
        25,
        "services.web.routes[0].match.query.\\ud800",
        "lone surrogate",
    ),
    "nul-in-build-arg": Case(
        'build: {context: ., args: {A: "\\0"}}',
        6,
        35,
        "services.web.build.args.A",
        "NUL character",
    ),
    "nul-in-command": Case(
        'command: ["sh", "a\\0b"]', 6, 21, "services.web.command[1]", "NUL character"
    ),
    "header-names-equal-but-for-case": Case(
        _route("match: {headers: {X-User: a, x-user: b}}"),
        8,
        38,
        "services.web.routes[0].match.headers.x-user",
        "'x-user' is the header 'X-User' again",
    ),
    "dockerfile-up-and-out": Case(
        "build: {context: ., dockerfile: ../../etc/passwd}",
        6,
        37,
        "services.web.build.dockerfile",
        "'../../etc/passwd' is outside the build context '.'",
    ),
    "dockerfile-absolute": Case(
        "build: {context: app, dockerfile: /etc/passwd}",
        6,
        39,
        "services.web.build.dockerfile",
        "outside the build context 'app'",
    ),
    "dockerfile-out-of-a-version-context": Case(
        "versions: {v1: {build: {context: app, dockerfile: ../Dockerfile}}}",
        6,
        55,
        "services.web.versions.v1.build.dockerfile",
        "outside the build context",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_value_out_of_bounds_is_one_located_problem(case: Case) -> None:
    found = problems_of(mesh_with(case.extra))
    assert len(found) == 1, found
    (problem,) = found
    assert (problem.line, problem.col) == (case.line, case.col), problem
    assert str(problem).startswith(f"devmesh.yaml:{case.line}:{case.col}: {case.path}: ")
    assert case.message in problem.message, problem


@pytest.mark.parametrize(
    ("port", "message"),
    [("0", "at least 1"), ("65536", "at most 65535"), ("-1", "at least 1"), ("80.5", "integer")],
    ids=["zero", "65536", "negative", "fraction"],
)
def test_a_port_is_1_to_65535(port: str, message: str) -> None:
    (problem,) = problems_of(mesh_with("").replace("port: 8000", f"port: {port}"))
    assert (problem.line, problem.col, problem.path) == (5, 11, "services.web.port")
    assert message in problem.message


COUNTS: dict[str, tuple[str, str, str]] = {
    # name: (text, path, message)
    "too-many-services": (
        "mesh: demo\nservices:\n"
        + "".join(f"  s{i}: {{image: web, port: 80}}\n" for i in range(limits.MAX_SERVICES + 1)),
        "services",
        f"at most {limits.MAX_SERVICES} entries",
    ),
    "too-many-versions": (
        mesh_with(
            "versions: {" + ", ".join(f"v{i}: {{}}" for i in range(limits.MAX_VERSIONS + 1)) + "}"
        ),
        "services.web.versions",
        f"at most {limits.MAX_VERSIONS} entries",
    ),
    "too-many-routes": (
        mesh_with("routes: [" + ", ".join(["{to: default}"] * (limits.MAX_ROUTES + 1)) + "]"),
        "services.web.routes",
        f"at most {limits.MAX_ROUTES} items",
    ),
    "string-longer-than-linux-takes": (
        mesh_with("env: {A: '" + "a" * (limits.MAX_STRING + 1) + "'}"),
        "services.web.env.A",
        f"longer than {limits.MAX_STRING} characters",
    ),
}


@pytest.mark.parametrize(("text", "path", "message"), COUNTS.values(), ids=COUNTS.keys())
def test_counts_and_lengths_are_bounded(text: str, path: str, message: str) -> None:
    (problem,) = problems_of(text)
    assert problem.path == path
    assert message in problem.message


# -- service names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["localhost", "ip6-localhost", "ip6-loopback", "ip6-allnodes"], ids=str
)
def test_a_name_the_pods_hosts_file_shadows_is_reserved(name: str) -> None:
    text = f"mesh: demo\nservices:\n  {name}:\n    image: web:1\n    port: 80\n"
    (problem,) = problems_of(text)
    assert (problem.line, problem.col, problem.path) == (3, 3, f"services.{name}")
    assert "is reserved" in problem.message


# -- image references: Docker's grammar ------------------------------------------------

IMAGES_OK = {
    "plain": "web",
    "tag": "web:1.2-alpine",
    "library-path": "library/web",
    "registry-port-path-tag": "localhost:5000/team/web:1.2",
    "registry-with-capitals": "Registry.Example.com/team/web",
    "ipv6-registry": "[::1]:5000/web",
    "separators": "a.b_c__d--e/f",
    "digest": "ghcr.io/a/b@sha256:" + "a" * 64,
    "tag-and-digest": "web:1@sha256:" + "0" * 64,
    "word-tag": "web:_x.Y-9",
}

IMAGES_BAD = {
    "uppercase-repository": ("Web:1", "repository names are lowercase"),
    "empty-tag": ("web:", "not a valid image reference"),
    "space": ("web app", "not a valid image reference"),
    "leading-dash": ("-web", "not a valid image reference"),
    "empty-component": ("a//b", "not a valid image reference"),
    "tag-too-long": ("web:" + "t" * 129, "not a valid image reference"),
    "tag-starting-with-dot": ("web:.x", "not a valid image reference"),
    "short-digest": ("web@sha256:abc", "not a valid image reference"),
    "trailing-separator": ("web_", "not a valid image reference"),
    "triple-underscore": ("a___b", "not a valid image reference"),
    "repository-too-long": ("a" * 256, "longer than 255"),
    "huge": ("a" * 5000, "too long"),
}


@pytest.mark.parametrize("image", IMAGES_OK.values(), ids=IMAGES_OK.keys())
def test_an_image_docker_takes_is_accepted(image: str) -> None:
    assert image_reference_problem(image) is None
    load(mesh_with("", image=f"'{image}'"))


@pytest.mark.parametrize(("image", "message"), IMAGES_BAD.values(), ids=IMAGES_BAD.keys())
def test_an_image_docker_refuses_is_a_located_problem(image: str, message: str) -> None:
    (problem,) = problems_of(mesh_with("", image=f"'{image}'"))
    assert (problem.line, problem.col, problem.path) == (4, 12, "services.web.image")
    assert message in problem.message


@pytest.mark.parametrize(
    ("build", "image", "ok"),
    [
        (".", "web:1", True),
        (".", "'web@sha256:" + "0" * 64 + "'", False),
        (None, "'web@sha256:" + "0" * 64 + "'", True),
    ],
    ids=["build-tag", "build-tag-with-a-digest", "digest-without-build"],
)
def test_a_build_tag_has_no_digest(build: str | None, image: str, ok: bool) -> None:
    text = mesh_with(f"build: {build}" if build else "", image=image)
    if ok:
        load(text)
        return
    (problem,) = problems_of(text)
    assert (problem.line, problem.col, problem.path) == (4, 12, "services.web.image")
    assert "a tag has no @digest" in problem.message


# -- Dockerfiles through symlinks --------------------------------------------------------


@pytest.fixture
def context(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "real.Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "outside.Dockerfile").write_text("FROM scratch\n")
    return tmp_path


LINKS: dict[str, tuple[str, str | None, str | None]] = {
    # name: (symlink in app/ -> target, dockerfile written, the problem's telling part)
    "default-dockerfile-linked-to-etc-passwd": ("/etc/passwd", None, "is a symlink to"),
    "named-dockerfile-linked-out": ("../outside.Dockerfile", "Dockerfile", "is a symlink"),
    "linked-within-the-context": ("real.Dockerfile", "Dockerfile", None),
    "plain-file-inside": ("real.Dockerfile", "real.Dockerfile", None),
    "dot-dot-that-stays-inside": ("real.Dockerfile", "sub/../real.Dockerfile", None),
}


@pytest.mark.parametrize(("target", "written", "message"), LINKS.values(), ids=LINKS.keys())
def test_a_dockerfile_must_resolve_inside_its_context(
    context: Path, target: str, written: str | None, message: str | None
) -> None:
    (context / "app" / "Dockerfile").symlink_to(target)
    build = "{context: app" + (f", dockerfile: {written}}}" if written else "}")
    text = mesh_with(f"build: {build}")
    if message is None:
        load(text, "devmesh.yaml", str(context))
        return
    (problem,) = problems_of(text, str(context))
    assert problem.path.startswith("services.web.build")
    assert message in problem.message and "outside the build context 'app'" in problem.message


# -- the fault validators the API shares ----------------------------------------------------

FAULTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "all-fine": (
        {"delay_percent": 50, "fixed_ms": 200, "abort_percent": 12.5, "status": 503},
        [],
    ),
    "grpc-fine": ({"grpc_status": 14, "abort_percent": 100}, []),
    "infinity": ({"delay_percent": float("inf")}, ["delay.percent: a percentage must"]),
    "json-1e309": ({"abort_percent": 1e309}, ["abort.percent: a percentage must"]),
    "nan": ({"abort_percent": float("nan")}, ["abort.percent: a percentage must"]),
    "negative": ({"delay_percent": -50}, ["delay.percent: a percentage must be between"]),
    "boolean-percent": ({"delay_percent": True}, ["delay.percent: expected a percentage"]),
    "string-percent": ({"abort_percent": "50"}, ["abort.percent: expected a percentage"]),
    "status-700": ({"status": 700}, ["abort.status: an HTTP status is 200 to 599, got 700"]),
    "status-float": ({"status": 503.0}, ["abort.status: expected an HTTP status"]),
    "grpc-17": ({"grpc_status": 17}, ["abort.grpc_status: a gRPC status is 0 to 16"]),
    "no-delay": ({"fixed_ms": 0}, ["delay.fixed_ms: must be at least 1ms"]),
    "delay-over-an-hour": ({"fixed_ms": 3_600_001}, ["delay.fixed_ms: must be at most 1h"]),
    "huge-int": ({"fixed_ms": 10**5000}, ["a number too large to show"]),
    "several": (
        {"delay_percent": 101, "status": 100},
        ["delay.percent: a percentage", "abort.status: an HTTP status"],
    ),
}


@pytest.mark.parametrize(("values", "expected"), FAULTS.values(), ids=FAULTS.keys())
def test_fault_values_from_the_api_are_checked_like_the_files(
    values: dict[str, Any], expected: list[str]
) -> None:
    found = check_fault_values(**values)
    assert len(found) == len(expected), found
    for problem, start in zip(found, expected, strict=True):
        assert start in problem, problem


# -- health defaults: one declaration for schema, loader and probe ---------------------------


def test_health_defaults_reach_the_loaded_model() -> None:
    mesh = load(mesh_with("health: {path: /healthz}"))
    assert mesh.service("web").health == Health("/healthz", HEALTH_INTERVAL_MS, HEALTH_TIMEOUT_MS)


def test_the_schema_says_what_the_probe_accepts() -> None:
    health = json_schema()["properties"]["services"]["additionalProperties"]["properties"][
        "health"
    ]["properties"]
    assert f"{HEALTHY_STATUSES.start}-{HEALTHY_STATUSES.stop - 1}" in health["path"]["description"]
    assert health["interval"]["description"] == "default 2s"
    assert health["timeout"]["description"] == "default 1s"


@pytest.fixture
def answering() -> Iterator[tuple[str, int, list[int]]]:
    """A local HTTP server answering each GET with the next status of a list."""
    statuses: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses.pop(0))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1], statuses
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "healthy"),
    [(200, True), (204, True), (302, True), (399, True), (400, False), (503, False)],
    ids=["200", "204", "302", "399", "400", "503"],
)
def test_the_probe_accepts_exactly_the_healthy_statuses(
    answering: tuple[str, int, list[int]], status: int, healthy: bool
) -> None:
    ip, port, statuses = answering
    statuses.append(status)
    ok, why = probe(ip, port, Health("/healthz"))
    assert ok is healthy, why
    assert (status in HEALTHY_STATUSES) is healthy


def test_limits_are_what_the_docs_say() -> None:
    assert limits.MAX_FILE_BYTES == 1 << 20
    assert limits.MAX_DURATION_MS == 24 * 3_600_000
    assert limits.PORT_RANGE == (1, 65535)
    assert limits.HTTP_STATUS_RANGE == (200, 599)
