"""Every kind of mistake in a mesh file is reported where it stands, like a compiler's error.

Each case is a small document built on the same valid base (`BASE`) with one mistake in it;
the test checks that exactly that one problem comes back, with its line, column, dotted path
and the telling part of its message. Lines and columns are 1-based, as an editor shows them.
"""

from __future__ import annotations

import textwrap
from typing import NamedTuple

import pytest

from devmesh.core.load import load
from devmesh.core.model import IMPLICIT_VERSION, Retries
from devmesh.core.problems import MeshInvalid, Problem


def doc(text: str) -> str:
    """An inline mesh file; its first written line is line 1."""
    return textwrap.dedent(text).lstrip("\n")


def problems_of(text: str, file: str = "devmesh.yaml") -> tuple[Problem, ...]:
    with pytest.raises(MeshInvalid) as caught:
        load(text, file)
    return caught.value.problems


BASE = doc(
    """
    mesh: demo
    services:
      web:
        image: web:1
        port: 8000
    """
)


def test_the_base_document_every_case_starts_from_is_valid() -> None:
    mesh = load(BASE)
    assert mesh.service("web").port == 8000


class Case(NamedTuple):
    text: str
    line: int
    col: int
    path: str
    message: str  # a distinctive part of the message


CASES: dict[str, Case] = {
    # -- YAML itself ----------------------------------------------------------------------
    "yaml-syntax-error": Case(
        doc(
            """
            mesh: demo
            services:
              web:
                image: web:1
               port: 8000
            """
        ),
        5,
        4,
        "",
        "YAML syntax: expected <block end>",
    ),
    "two-documents": Case(
        doc(
            """
            mesh: demo
            ---
            mesh: other
            """
        ),
        2,
        1,
        "",
        "expected a single YAML document, found another after `---`",
    ),
    "duplicate-key": Case(
        doc(
            """
            mesh: demo
            services:
              web:
                image: web:1
                port: 8000
                port: 8001
            """
        ),
        6,
        5,
        "services.web.port",
        "duplicate key 'port' (first defined at line 5)",
    ),
    "duplicate-key-beside-a-merge-key": Case(
        doc(
            """
            mesh: demo
            services:
              web: &base
                image: web:1
                port: 8000
              api:
                <<: *base
                port: 8001
                port: 8002
            """
        ),
        9,
        5,
        "services.api.port",
        "duplicate key 'port' (first defined at line 8)",
    ),
    "key-not-a-plain-value": Case(
        BASE + "    [a, b]: 1\n",
        6,
        5,
        "services.web",
        "a key must be a plain value",
    ),
    # -- shape: keys and types ------------------------------------------------------------
    "unknown-key-near-miss": Case(
        BASE + "    timout: 2s\n",
        6,
        5,
        "services.web.timout",
        "unknown key 'timout' (did you mean 'timeout'?)",
    ),
    "unknown-key-lists-known-keys": Case(
        BASE + "    flavour: spicy\n",
        6,
        5,
        "services.web.flavour",
        "unknown key 'flavour'; known: image, build, env, command, replicas, port, protocol,",
    ),
    "string-for-integer": Case(
        doc(
            """
            mesh: demo
            services:
              web:
                image: web:1
                port: eighty
            """
        ),
        5,
        11,
        "services.web.port",
        "expected an integer, got 'eighty'",
    ),
    "list-for-mapping": Case(
        BASE + "    env: [A, B]\n",
        6,
        10,
        "services.web.env",
        "expected a mapping, got a list",
    ),
    "boolean-for-string": Case(
        BASE + "    health: {path: true}\n",
        6,
        20,
        "services.web.health.path",
        "expected a string, got a boolean (true)",
    ),
    "integer-out-of-range": Case(
        doc(
            """
            mesh: demo
            services:
              web:
                image: web:1
                port: 70000
            """
        ),
        5,
        11,
        "services.web.port",
        "must be at most 65535, got 70000",
    ),
    "enum-near-miss": Case(
        BASE + "    protocol: htp\n",
        6,
        15,
        "services.web.protocol",
        "'htp' is not one of http, http2, grpc, tcp (did you mean 'http'?)",
    ),
    # -- names ----------------------------------------------------------------------------
    "bad-mesh-name": Case(
        doc(
            """
            mesh: Demo
            services:
              web:
                image: web:1
                port: 8000
            """
        ),
        1,
        7,
        "mesh",
        "'Demo' is not a mesh name of lowercase letters",
    ),
    "bad-service-name": Case(
        doc(
            """
            mesh: demo
            services:
              Web_1:
                image: web:1
                port: 8000
            """
        ),
        3,
        3,
        "services.Web_1",
        "'Web_1' is not a name of lowercase letters, digits and '-', starting with a letter",
    ),
    "bad-version-name": Case(
        BASE + "    versions: {v1: , V2.0: }\n",
        6,
        22,
        "services.web.versions.V2.0",
        "'V2.0' is not a version name of lowercase letters",
    ),
    "only-version-name-invalid": Case(
        BASE + "    versions: {V1: }\n",
        6,
        16,
        "services.web.versions.V1",
        "'V1' is not a version name",
    ),
    "bad-header-name": Case(
        BASE + "    routes: [{match: {headers: {'x y': a}}, to: default}]\n",
        6,
        33,
        "services.web.routes[0].match.headers.x y",
        "'x y' is not a valid header name",
    ),
    # -- required keys --------------------------------------------------------------------
    "missing-mesh": Case(
        doc(
            """
            services:
              web:
                image: web:1
                port: 8000
            """
        ),
        1,
        1,
        "",
        "missing required key 'mesh'",
    ),
    "missing-services": Case("mesh: demo\n", 1, 1, "", "missing required key 'services'"),
    "missing-port": Case(
        doc(
            """
            mesh: demo
            services:
              web:
                image: web:1
            """
        ),
        4,
        5,
        "services.web",
        "missing required key 'port'",
    ),
    "missing-route-to": Case(
        BASE + "    routes:\n      - name: main\n",
        7,
        9,
        "services.web.routes[0]",
        "missing required key 'to'",
    ),
    "retries-without-attempts": Case(
        BASE + "    retries: {on: [5xx]}\n",
        6,
        14,
        "services.web.retries",
        "missing required key 'attempts'",
    ),
    "rate-limit-without-requests": Case(
        BASE + "    rate_limit: {per: 1s}\n",
        6,
        17,
        "services.web.rate_limit",
        "missing required key 'requests'",
    ),
    "delay-without-fixed": Case(
        BASE + "    routes: [{to: default, fault: {delay: {percent: 5}}}]\n",
        6,
        43,
        "services.web.routes[0].fault.delay",
        "missing required key 'fixed'",
    ),
    "build-without-context": Case(
        BASE.replace("image: web:1", "build: {dockerfile: Dockerfile}"),
        4,
        12,
        "services.web.build",
        "missing required key 'context'",
    ),
    "empty-services": Case(
        "mesh: demo\nservices: {}\n", 2, 11, "services", "needs at least 1 entry"
    ),
    # -- routes and weights ---------------------------------------------------------------
    "weights-not-100": Case(
        BASE + "    versions: {v1: , v2: }\n    routes: [{to: {v1: 50, v2: 40}}]\n",
        7,
        19,
        "services.web.routes[0].to",
        "weights add up to 90, not 100",
    ),
    "app-mesh-relative-weights": Case(
        BASE + "    versions: {blue: , green: }\n    routes: [{to: {blue: 1, green: 3}}]\n",
        7,
        19,
        "services.web.routes[0].to",
        "weights add up to 4, not 100 (they are percentages, not relative weights:"
        " {blue: 25, green: 75})",
    ),
    "app-mesh-retry-event": Case(
        BASE + "    routes: [{to: default, retries: {attempts: 2, on: [server-error]}}]\n",
        6,
        56,
        "services.web.routes[0].retries.on[0]",
        "(App Mesh's 'server-error' is '5xx' here)",
    ),
    "app-mesh-retry-key": Case(
        BASE + "    routes: [{to: default, retries: {attempts: 2, maxRetries: 3}}]\n",
        6,
        51,
        "services.web.routes[0].retries.maxRetries",
        "unknown key 'maxRetries' (App Mesh's 'maxRetries' is 'attempts' here)",
    ),
    "route-to-unknown-version-near-miss": Case(
        BASE + "    versions: {stable: , canary: }\n    routes: [{to: {stable: 90, canry: 10}}]\n",
        7,
        32,
        "services.web.routes[0].to.canry",
        "'web' has no version 'canry' (did you mean 'canary'?)",
    ),
    "route-to-unknown-version-lists-versions": Case(
        BASE + "    versions: {v1: , v2: }\n    routes: [{to: beta}]\n",
        7,
        19,
        "services.web.routes[0].to",
        "'web' has no version 'beta'; its versions: v1, v2",
    ),
    "duplicate-route-names": Case(
        BASE
        + "    routes:\n"
        + "      - {name: main, to: default}\n"
        + "      - {name: main, to: default}\n",
        8,
        16,
        "services.web.routes[1].name",
        "route name 'main' is used twice",
    ),
    "calls-a-service-that-has-a-problem-of-its-own": Case(
        BASE + "    calls: [api]\n  api:\n    image: api:1\n    port: eighty\n",
        9,
        11,
        "services.api.port",
        "expected an integer, got 'eighty'",
    ),
    "calls-undeclared-service": Case(
        doc(
            """
            mesh: demo
            services:
              web:
                image: web:1
                port: 8000
                calls: [ap]
              api:
                image: api:1
                port: 9000
            """
        ),
        6,
        13,
        "services.web.calls[0]",
        "calls 'ap', which is not a service of this mesh (did you mean 'api'?)",
    ),
    # -- durations, regexes, paths --------------------------------------------------------
    "duration-without-unit": Case(
        BASE + "    timeout: 2\n",
        6,
        14,
        "services.web.timeout",
        "'2' needs a unit: write 2s or 2ms",
    ),
    "duration-garbage": Case(
        BASE + "    timeout: soon\n",
        6,
        14,
        "services.web.timeout",
        "'soon' is not a duration; write e.g. 250ms, 2s, 1m or 1m30s",
    ),
    "duration-finer-than-a-millisecond": Case(
        BASE + "    timeout: 1.5ms\n",
        6,
        14,
        "services.web.timeout",
        "'1.5ms' is finer than a millisecond",
    ),
    "duration-below-minimum": Case(
        BASE + "    retries: {attempts: 1, per_try_timeout: 0s}\n",
        6,
        45,
        "services.web.retries.per_try_timeout",
        "must be at least 1ms",
    ),
    "regex-not-re2": Case(
        BASE + "    routes: [{match: {path_regex: '/(?=a)'}, to: default}]\n",
        6,
        35,
        "services.web.routes[0].match.path_regex",
        "invalid RE2 regex: invalid perl operator: (?=",
    ),
    "path-prefix-without-slash": Case(
        BASE + "    routes: [{match: {path_prefix: api}, to: default}]\n",
        6,
        36,
        "services.web.routes[0].match.path_prefix",
        "'api' must start with '/'",
    ),
    "path-prefix-and-path": Case(
        BASE + "    routes: [{match: {path_prefix: /a, path: /a/b}, to: default}]\n",
        6,
        40,
        "services.web.routes[0].match.path",
        "'path_prefix' and 'path' cannot both be set",
    ),
    # -- retries, faults ------------------------------------------------------------------
    "retry-condition-near-miss": Case(
        BASE + "    retries: {attempts: 2, on: [5xxx]}\n",
        6,
        33,
        "services.web.retries.on[0]",
        "'5xxx' is not one of 5xx, gateway-error, reset, reset-before-request, "
        "connect-failure, retriable-4xx, refused-stream, envoy-ratelimited, cancelled, "
        "deadline-exceeded, internal, resource-exhausted, unavailable (did you mean '5xx'?)",
    ),
    "percent-out-of-range": Case(
        BASE + "    routes: [{to: default, fault: {delay: {fixed: 1s, percent: 150}}}]\n",
        6,
        64,
        "services.web.routes[0].fault.delay.percent",
        "a percentage must be between 0 and 100, got 150",
    ),
    "abort-with-status-and-grpc-status": Case(
        BASE + "    routes: [{to: default, fault: {abort: {status: 503, grpc_status: 14}}}]\n",
        6,
        57,
        "services.web.routes[0].fault.abort.grpc_status",
        "'status' and 'grpc_status' cannot both be set",
    ),
    "fault-with-neither-delay-nor-abort": Case(
        BASE + "    routes: [{to: default, fault: {}}]\n",
        6,
        35,
        "services.web.routes[0].fault",
        "needs one of: delay, abort",
    ),
    # -- workloads ------------------------------------------------------------------------
    "service-with-neither-image-nor-build": Case(
        doc(
            """
            mesh: demo
            services:
              web:
                port: 8000
            """
        ),
        4,
        5,
        "services.web",
        "needs `image` or `build` (here or on the service)",
    ),
    "version-with-neither-image-nor-build": Case(
        doc(
            """
            mesh: demo
            services:
              web:
                port: 8000
                versions:
                  v1: {image: web:1}
                  v2: {env: {A: b}}
            """
        ),
        7,
        11,
        "services.web.versions.v2",
        "needs `image` or `build` (here or on the service)",
    ),
    "command-line-that-cannot-be-split": Case(
        BASE + '    command: "echo \'unclosed"\n',
        6,
        14,
        "services.web.command",
        "cannot split the command line: No closing quotation",
    ),
    "port-reserved-for-the-sidecar": Case(
        doc(
            """
            mesh: demo
            services:
              web:
                image: web:1
                port: 15006
            """
        ),
        5,
        11,
        "services.web.port",
        "port 15006 is taken by the sidecar inside the pod (15000-15199 are reserved)",
    ),
    # -- tcp services ---------------------------------------------------------------------
    "tcp-service-with-two-routes": Case(
        BASE + "    protocol: tcp\n    routes:\n      - to: default\n      - to: default\n",
        9,
        9,
        "services.web.routes[1]",
        "a tcp service takes one route: a connection has no request to match on",
    ),
    "tcp-route-with-match": Case(
        BASE + "    protocol: tcp\n    routes:\n      - to: default\n        match: {path: /}\n",
        9,
        9,
        "services.web.routes[0].match",
        "'match' is for HTTP; a tcp route has only name and to (weights)",
    ),
    "tcp-route-with-retries": Case(
        BASE
        + "    protocol: tcp\n"
        + "    routes:\n"
        + "      - to: default\n"
        + "        retries: {attempts: 1}\n",
        9,
        9,
        "services.web.routes[0].retries",
        "'retries' is for HTTP; a tcp route has only name and to (weights)",
    ),
    "tcp-health-with-path": Case(
        BASE + "    protocol: tcp\n    health: {path: /healthz}\n",
        7,
        20,
        "services.web.health.path",
        "a tcp service is checked by connecting; it takes no path",
    ),
    # -- mirrors --------------------------------------------------------------------------
    "mirror-to-unknown-service": Case(
        doc(
            """
            mesh: demo
            services:
              web:
                image: web:1
                port: 8000
                routes: [{to: default, mirror: {service: shaddow}}]
              shadow:
                image: web:1
                port: 8001
            """
        ),
        6,
        46,
        "services.web.routes[0].mirror.service",
        "no service 'shaddow' to mirror to (did you mean 'shadow'?)",
    ),
    "mirror-to-unknown-version": Case(
        BASE
        + "    versions: {v1: , v2: }\n"
        + "    routes: [{to: v1, mirror: {version: v3, percent: 5}}]\n",
        7,
        41,
        "services.web.routes[0].mirror.version",
        "'web' has no version 'v3'",
    ),
    "mirror-without-version-to-a-service-with-several": Case(
        doc(
            """
            mesh: demo
            services:
              web:
                image: web:1
                port: 8000
                routes: [{to: default, mirror: {service: shadow}}]
              shadow:
                image: web:1
                port: 8001
                versions: {v1: , v2: }
            """
        ),
        6,
        36,
        "services.web.routes[0].mirror",
        "'shadow' has versions v1, v2: name one to mirror to",
    ),
    "mirror-to-a-tcp-service": Case(
        doc(
            """
            mesh: demo
            services:
              web:
                image: web:1
                port: 8000
                routes: [{to: default, mirror: {service: db}}]
              db:
                image: db:1
                port: 5432
                protocol: tcp
            """
        ),
        6,
        36,
        "services.web.routes[0].mirror",
        "cannot mirror HTTP requests to 'db', a tcp service",
    ),
    # -- ingress --------------------------------------------------------------------------
    "ingress-route-to-unknown-service": Case(
        doc(
            """
            mesh: demo
            ingress:
              port: 8080
              routes:
                - service: wbe
            services:
              web:
                image: web:1
                port: 8000
            """
        ),
        5,
        16,
        "ingress.routes[0].service",
        "no service 'wbe' in this mesh (did you mean 'web'?)",
    ),
    "ingress-route-to-tcp-service": Case(
        doc(
            """
            mesh: demo
            ingress:
              port: 8080
              routes:
                - service: db
            services:
              db:
                image: db:1
                port: 5432
                protocol: tcp
            """
        ),
        5,
        16,
        "ingress.routes[0].service",
        "'db' is a tcp service; the ingress is HTTP",
    ),
    "ingress-rewrite-prefix-with-path-regex": Case(
        doc(
            """
            mesh: demo
            ingress:
              port: 8080
              routes:
                - service: web
                  match: {path_regex: "/api/.*"}
                  rewrite_prefix: /
            services:
              web:
                image: web:1
                port: 8000
            """
        ),
        7,
        23,
        "ingress.routes[0].rewrite_prefix",
        "rewrite_prefix needs a path_prefix or path match, not path_regex",
    ),
    "ingress-duplicate-route-names": Case(
        doc(
            """
            mesh: demo
            ingress:
              port: 8080
              routes:
                - {name: site, service: web}
                - {name: site, service: web}
            services:
              web:
                image: web:1
                port: 8000
            """
        ),
        6,
        14,
        "ingress.routes[1].name",
        "route name 'site' is used twice",
    ),
    # -- ports inside a pod ---------------------------------------------------------------
    "calls-an-http-service-on-port-80-from-port-80": Case(
        doc(
            """
            mesh: demo
            services:
              web:
                image: web:1
                port: 80
                calls: [api]
              api:
                image: api:1
                port: 80
            """
        ),
        6,
        13,
        "services.web.calls[0]",
        "'web' listens on port 80, the only port 'api' can be reached on from its pod; "
        "change one of the ports",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_mistake_is_reported_once_at_its_line_column_and_path(case: Case) -> None:
    problems = problems_of(case.text)

    assert len(problems) == 1, "\n".join(map(str, problems))
    (problem,) = problems
    assert (problem.line, problem.col, problem.path) == (case.line, case.col, case.path)
    assert case.message in problem.message


def test_problem_reads_like_a_compiler_diagnostic_with_the_file_name() -> None:
    (problem,) = problems_of(BASE.replace("port: 8000", "port: eighty"), "shop/devmesh.yaml")

    assert problem.file == "shop/devmesh.yaml"
    assert str(problem) == (
        "shop/devmesh.yaml:5:11: services.web.port: expected an integer, got 'eighty'"
    )


def test_every_problem_in_a_file_is_reported_at_once_sorted_by_line() -> None:
    # The rules that span the file (calls) run after the shape check (timeout, port), yet
    # the report reads top to bottom.
    text = doc(
        """
        mesh: demo
        services:
          web:
            image: web:1
            port: 8000
            calls: [nope]
            timeout: 2
          api:
            port: eighty
            flavour: spicy
        """
    )

    with pytest.raises(MeshInvalid) as caught:
        load(text)

    assert [(p.line, p.col, p.path) for p in caught.value.problems] == [
        (6, 13, "services.web.calls[0]"),
        (7, 14, "services.web.timeout"),
        (9, 5, "services.api"),  # needs `image` or `build`
        (9, 11, "services.api.port"),
        (10, 5, "services.api.flavour"),
    ]
    assert str(caught.value).splitlines()[0].startswith("devmesh.yaml:6:13: ")
    assert len(str(caught.value).splitlines()) == 5


# -- what is accepted -------------------------------------------------------------------------


def test_merge_key_overridden_by_an_explicit_key_is_not_a_duplicate() -> None:
    mesh = load(
        doc(
            """
            mesh: demo
            services:
              web: &base
                image: web:1
                port: 8000
              api:
                <<: *base
                port: 8001
            """
        )
    )

    assert mesh.service("api").port == 8001
    assert mesh.service("api").versions[0].image == "web:1"


def test_explicit_key_written_before_the_merge_key_still_overrides_it() -> None:
    mesh = load(
        doc(
            """
            mesh: demo
            services:
              web: &base
                image: web:1
                port: 8000
              api:
                port: 8001
                <<: *base
            """
        )
    )

    assert mesh.service("api").port == 8001


def test_inherited_image_satisfies_every_version() -> None:
    mesh = load(BASE + "    versions:\n      v1:\n      v2: {env: {A: b}}\n")

    assert [v.image for v in mesh.service("web").versions] == ["web:1", "web:1"]


def test_calling_a_service_on_the_callers_own_port_is_fine_while_port_80_is_free() -> None:
    mesh = load(
        doc(
            """
            mesh: demo
            services:
              web:
                image: web:1
                port: 8000
                calls: [api]
              api:
                image: api:1
                port: 8000
            """
        )
    )

    assert mesh.service("web").calls == ("api",)


@pytest.mark.parametrize(
    "retries",
    ["{attempts: 2, on: [5xx]}", "\n      attempts: 2\n      on:\n        - 5xx"],
    ids=["flow", "block"],
)
def test_retries_on_key_is_a_string_not_the_yaml_1_1_boolean(retries: str) -> None:
    mesh = load(BASE + f"    retries: {retries}\n")

    assert mesh.service("web").routes[0].retries == Retries(attempts=2, on=("5xx",))


def test_yes_and_no_stay_strings() -> None:
    mesh = load(BASE + "    env: {ANSWER: yes, COUNTRY: NO, SWITCH: off}\n")

    assert mesh.service("web").version(IMPLICIT_VERSION).env == (
        ("ANSWER", "yes"),
        ("COUNTRY", "NO"),
        ("SWITCH", "off"),
    )


def test_env_values_written_as_numbers_or_booleans_are_kept_as_text() -> None:
    mesh = load(BASE + "    env: {DEBUG: true, WORKERS: 4, RATIO: 0.5, NAME: web}\n")

    assert mesh.service("web").version(IMPLICIT_VERSION).env == (
        ("DEBUG", "true"),
        ("NAME", "web"),
        ("RATIO", "0.5"),
        ("WORKERS", "4"),
    )


# -- bugs found while writing these tests (devmesh code left as it is) ------------------------


def test_mirror_to_a_service_whose_version_names_are_all_invalid_is_reported() -> None:
    text = BASE + (
        "    routes: [{to: default, mirror: {service: api}}]\n"
        "  api:\n"
        "    image: api:1\n"
        "    port: 9000\n"
        "    versions: {V1: }\n"
    )
    problems = problems_of(text)

    assert "services.api.versions.V1" in [p.path for p in problems]


@pytest.mark.parametrize(("written", "ms"), [("1.001s", 1001), ("0.27m", 16_200)])
def test_decimal_duration_of_whole_milliseconds_is_accepted(written: str, ms: int) -> None:
    mesh = load(BASE + f"    timeout: {written}\n")

    assert mesh.service("web").routes[0].timeout_ms == ms


def test_port_collision_is_reported_together_with_an_unrelated_problem() -> None:
    text = doc(
        """
        mesh: demo
        services:
          web:
            image: web:1
            port: 80
            calls: [api]
            timout: 1s
          api:
            image: api:1
            port: 80
        """
    )

    assert [p.path for p in problems_of(text)] == [
        "services.web.calls[0]",
        "services.web.timout",
    ]


CASCADES: dict[str, tuple[str, str]] = {
    "bad-image-type-also-says-image-missing": (
        BASE.replace("image: web:1", "image: true"),
        "services.web.image",
    ),
    "bad-weight-also-says-weights-do-not-add-up": (
        BASE + "    versions: {v1: , v2: }\n    routes: [{to: {v1: 50, v2: fifty}}]\n",
        "services.web.routes[0].to.v2",
    ),
    "bad-service-also-unknown-to-ingress": (
        "mesh: demo\nservices:\n  web: 5\ningress: {port: 8080, routes: [{service: web}]}\n",
        "services.web",
    ),
}


@pytest.mark.parametrize(("text", "path"), CASCADES.values(), ids=CASCADES.keys())
def test_an_invalid_value_is_reported_once_not_again_by_the_rules_that_use_it(
    text: str, path: str
) -> None:
    assert [p.path for p in problems_of(text)] == [path]


def test_path_prefix_with_a_query_string_is_refused() -> None:
    # Envoy 1.40 matches paths without their query string, so such a prefix never matches.
    text = BASE + '    routes: [{match: {path_prefix: "/z?a"}, to: default}]\n'
    with pytest.raises(MeshInvalid) as exc:
        load(text, "m.yaml")
    (problem,) = exc.value.problems
    assert problem.path.endswith("match.path_prefix")
    assert "query" in problem.message


def test_a_route_after_one_that_takes_every_request_is_a_warning_not_an_error() -> None:
    text = BASE + (
        "    versions: {v1: , v2: }\n"
        "    routes:\n"
        "      - {to: v1}\n"
        "      - {name: jason, match: {headers: {end-user: jason}}, to: v2}\n"
    )
    mesh = load(text)  # it loads: Envoy would take it too
    [warning] = mesh.warnings
    assert (warning.line, warning.path) == (9, "services.web.routes[1]")
    assert "route 'jason' can never match: route 'route-0' before it" in warning.message
    in_order = text.replace("      - {to: v1}\n", "").rstrip("\n") + "\n      - {to: v1}\n"
    assert load(in_order).warnings == ()


@pytest.mark.parametrize("name", ["gateway", "ingress"])
def test_a_service_with_a_name_of_the_gateways_is_a_warning(name: str) -> None:
    [warning] = load(BASE.replace("  web:", f"  {name}:")).warnings
    assert warning.path == f"services.{name}"
    assert "also the gateway's name" in warning.message
    assert load(BASE).warnings == ()


def test_the_gateways_names_are_those_the_daemon_gives_it() -> None:
    from devmesh.api import types as api
    from devmesh.core.load import GATEWAY_NAMES
    from devmesh.envoy.tracing import GATEWAY_SERVICE

    assert set(GATEWAY_NAMES) == {api.INGRESS, GATEWAY_SERVICE}


def test_a_try_as_long_as_the_routes_timeout_is_a_warning() -> None:
    route = "      - {to: default, timeout: 1s, retries: {attempts: 2, per_try_timeout: @T@}}\n"
    text = BASE + "    routes:\n" + route
    [warning] = load(text.replace("@T@", "1s")).warnings
    assert warning.path == "services.web.routes[0]"
    assert "per_try_timeout 1s is not shorter than the route's timeout 1s" in warning.message
    assert load(text.replace("@T@", "300ms")).warnings == ()
