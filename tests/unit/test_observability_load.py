"""The mesh file's `observability:` block: what it resolves to, and every mistake located."""

from __future__ import annotations

import textwrap

import jsonschema
import pytest

from devmesh.core.load import load
from devmesh.core.model import (
    HostAddress,
    Observability,
    Statsd,
    TraceForward,
    Tracing,
)
from devmesh.core.problems import MeshInvalid, Problem
from devmesh.core.schema import json_schema


def mesh_with(block: str) -> str:
    """A valid mesh whose `observability:` block is `block` (written at column 3)."""
    body = textwrap.indent(textwrap.dedent(block).strip("\n"), "  ")
    return (
        "mesh: demo\n"
        "ingress:\n  port: 8080\n  routes:\n    - service: web\n"
        f"observability:\n{body}\n"
        "services:\n  web:\n    image: web:1\n    port: 8000\n"
    )


# The block starts on line 6; its first key is at column 3.
FIRST = 7


def problems_of(text: str) -> tuple[Problem, ...]:
    with pytest.raises(MeshInvalid) as caught:
        load(text)
    return caught.value.problems


def test_a_mesh_without_the_block_logs_and_traces_but_serves_no_metrics() -> None:
    mesh = load("mesh: demo\nservices:\n  web: {image: web:1, port: 8000}\n")

    assert mesh.observability == Observability()
    assert mesh.observability.access_log is True
    assert mesh.observability.metrics_port is None
    assert mesh.observability.tracing == Tracing(
        provider="otel", sampling_percent=100.0, adaptive=True
    )
    assert mesh.observability.statsd is None


@pytest.mark.parametrize(
    ("written", "adaptive", "percent"),
    [
        ("{}", True, 100.0),
        ("{sampling: auto}", True, 100.0),
        ("{sampling: 100}", False, 100.0),
        ("{sampling: '5%'}", False, 5.0),
        ("true", True, 100.0),
    ],
)
def test_sampling_is_auto_unless_a_number_is_written(
    written: str, adaptive: bool, percent: float
) -> None:
    tracing = load(mesh_with(f"tracing: {written}")).observability.tracing
    assert tracing is not None
    assert (tracing.adaptive, tracing.sampling_percent) == (adaptive, percent)


def test_a_word_other_than_auto_is_refused_naming_both_choices() -> None:
    (problem,) = problems_of(mesh_with("tracing: {sampling: automatic}"))
    assert "expected a percentage (0 to 100) or 'auto'" in problem.message


def test_the_whole_block_resolves_to_typed_values() -> None:
    mesh = load(
        mesh_with(
            """
            access_log: false
            metrics: {port: 9464}
            tracing:
              provider: otel
              sampling: 25
              forward: http://127.0.0.1:4318/v1/traces
            statsd: {address: 127.0.0.1:8125, flavor: dogstatsd}
            """
        )
    )

    assert mesh.observability == Observability(
        access_log=False,
        metrics_port=9464,
        tracing=Tracing(
            provider="otel",
            sampling_percent=25.0,
            adaptive=False,
            forward=TraceForward(
                url="http://127.0.0.1:4318/v1/traces",
                kind="otlp",
                address=HostAddress("127.0.0.1", 4318),
                path="/v1/traces",
            ),
        ),
        statsd=Statsd(HostAddress("127.0.0.1", 8125), "dogstatsd"),
    )


@pytest.mark.parametrize(
    ("url", "kind", "address", "path"),
    [
        ("http://127.0.0.1:9411/api/v2/spans", "zipkin", HostAddress("127.0.0.1", 9411), None),
        ("http://localhost:4318/v1/traces", "otlp", HostAddress("127.0.0.1", 4318), None),
        ("http://127.0.0.2/v1/traces", "otlp", HostAddress("127.0.0.2", 80), None),
        ("http://127.0.0.1:4318", "otlp", HostAddress("127.0.0.1", 4318), "/"),
    ],
    ids=["zipkin-by-path", "localhost-is-127.0.0.1", "port-80-by-default", "no-path"],
)
def test_a_forward_url_is_told_apart_by_its_path(
    url: str, kind: str, address: HostAddress, path: str | None
) -> None:
    tracing = load(mesh_with(f"tracing: {{forward: '{url}'}}")).observability.tracing

    assert tracing is not None and tracing.forward is not None
    assert (tracing.forward.kind, tracing.forward.address) == (kind, address)
    if path is not None:
        assert tracing.forward.path == path


def test_xray_defaults_to_the_x_ray_daemons_own_address() -> None:
    tracing = load(mesh_with("tracing: {provider: xray}")).observability.tracing

    assert tracing == Tracing(provider="xray", xray_address=HostAddress("127.0.0.1", 2000))


def test_xray_takes_the_address_given() -> None:
    tracing = load(
        mesh_with("tracing: {provider: xray, address: '127.0.0.5:3000', sampling: 1.5}")
    ).observability.tracing

    assert tracing == Tracing(
        provider="xray",
        sampling_percent=1.5,
        adaptive=False,
        xray_address=HostAddress("127.0.0.5", 3000),
    )


@pytest.mark.parametrize(
    ("written", "expected"),
    [("true", Tracing()), ("false", None)],
    ids=["true-is-the-default", "false-turns-it-off"],
)
def test_tracing_as_a_boolean(written: str, expected: Tracing | None) -> None:
    assert load(mesh_with(f"tracing: {written}")).observability.tracing == expected


CASES = {
    "unknown-key-did-you-mean": (
        "acess_log: true",
        (FIRST, 3, "observability.acess_log", "did you mean 'access_log'?"),
    ),
    "access-log-not-a-boolean": (
        "access_log: sometimes",
        (FIRST, 15, "observability.access_log", "expected true or false, got 'sometimes'"),
    ),
    "metrics-port-missing": (
        "metrics: {}",
        (FIRST, 12, "observability.metrics", "missing required key 'port'"),
    ),
    "metrics-port-out-of-range": (
        "metrics: {port: 70000}",
        (FIRST, 19, "observability.metrics.port", "must be at most 65535, got 70000"),
    ),
    "metrics-port-is-the-ingress-port": (
        "metrics: {port: 8080}",
        (FIRST, 19, "observability.metrics.port", "is the ingress port"),
    ),
    "provider-misspelt": (
        "tracing: {provider: xrey}",
        (FIRST, 23, "observability.tracing.provider", "did you mean 'xray'?"),
    ),
    "sampling-over-100": (
        "tracing: {sampling: 150}",
        (FIRST, 23, "observability.tracing.sampling", "between 0 and 100"),
    ),
    "tracing-a-string": (
        "tracing: yes",
        (FIRST, 12, "observability.tracing", "expected true or false or a mapping, got 'yes'"),
    ),
    "forward-off-the-machine": (
        "tracing: {forward: 'http://10.0.0.7:4318/v1/traces'}",
        (FIRST, 22, "observability.tracing.forward", "10.0.0.7 is not on the loopback"),
    ),
    "forward-a-name": (
        "tracing: {forward: 'http://jaeger:4318/v1/traces'}",
        (FIRST, 22, "observability.tracing.forward", "'jaeger' is not an IP address"),
    ),
    "forward-https": (
        "tracing: {forward: 'https://127.0.0.1:4318/v1/traces'}",
        (FIRST, 22, "observability.tracing.forward", "must start with http://"),
    ),
    "forward-bad-port": (
        "tracing: {forward: 'http://127.0.0.1:99999/v1/traces'}",
        (FIRST, 22, "observability.tracing.forward", "is not a URL"),
    ),
    "forward-with-xray": (
        "tracing: {provider: xray, forward: 'http://127.0.0.1:4318/v1/traces'}",
        (FIRST, 29, "observability.tracing.forward", "`forward` is for provider otel"),
    ),
    "address-with-otel": (
        "tracing: {address: '127.0.0.1:2000'}",
        (FIRST, 13, "observability.tracing.address", "for provider: xray"),
    ),
    "statsd-address-missing": (
        "statsd: {flavor: statsd}",
        (FIRST, 11, "observability.statsd", "missing required key 'address'"),
    ),
    "statsd-address-no-port": (
        "statsd: {address: 127.0.0.1}",
        (FIRST, 21, "observability.statsd.address", "is not HOST:PORT"),
    ),
    "statsd-address-off-the-machine": (
        "statsd: {address: '192.168.1.4:8125'}",
        (FIRST, 21, "observability.statsd.address", "not on the loopback (127.0.0.0/8)"),
    ),
    "statsd-flavor-misspelt": (
        "statsd: {address: '127.0.0.1:8125', flavor: datadog}",
        (FIRST, 47, "observability.statsd.flavor", "is not one of statsd, dogstatsd"),
    ),
}


@pytest.mark.parametrize(("block", "where"), CASES.values(), ids=CASES.keys())
def test_a_mistake_in_the_block_is_reported_once_where_it_stands(
    block: str, where: tuple[int, int, str, str]
) -> None:
    problems = problems_of(mesh_with(block))

    assert len(problems) == 1, "\n".join(map(str, problems))
    (problem,) = problems
    line, col, path, message = where
    assert (problem.line, problem.col, problem.path) == (line, col, path), str(problem)
    assert message in problem.message, str(problem)


def test_the_json_schema_takes_the_block_and_refuses_unknown_keys() -> None:
    validator = jsonschema.Draft7Validator(json_schema())
    good = {
        "mesh": "demo",
        "observability": {
            "access_log": True,
            "metrics": {"port": 9464},
            "tracing": {"provider": "xray", "sampling": 5, "address": "127.0.0.1:2000"},
            "statsd": {"address": "127.0.0.1:8125", "flavor": "dogstatsd"},
        },
        "services": {"web": {"image": "web:1", "port": 8000}},
    }
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors({**good, "observability": {"tracing": False}})) == []
    bad = {**good, "observability": {"metrics": {"port": 9464, "path": "/m"}}}
    assert [e.message for e in validator.iter_errors(bad)]
