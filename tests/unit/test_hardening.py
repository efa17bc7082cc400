"""Nothing hostile or broken takes devmesh down: locked-down containers, retries that are
never capped behind the route's back, a sidecar-to-app hop that loses nothing, gateway hops
for the host alone, and prefix rewrites that never double a '/'. Pure: no Docker here (the
real Envoy only validates)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from devmesh.adapters.engine import _privileges
from devmesh.adapters.xds_types import LISTENER, ROUTE, to_proto
from devmesh.core.explain import explain, format_explanation, rewritten_path
from devmesh.core.load import load
from devmesh.core.model import PathMatch
from devmesh.core.problems import MeshInvalid
from devmesh.envoy.bootstrap import static_bootstrap
from devmesh.envoy.render import Rendered
from devmesh.envoy.resources import (
    UNLIMITED,
    gateway_resources,
    path_rewrite,
    placeholder_endpoints,
    sidecar_resources,
    version_cluster,
)
from devmesh.plan.desired import ContainerSpec, Inputs, desired, proxy_user
from tests.envoy_check import envoy_rejections

MESH = """
mesh: m
ingress:
  port: 8080
  routes:
    - {name: red, match: {path_prefix: /red}, service: api, rewrite_prefix: /}
    - {name: rest, service: web}
services:
  web: {image: w, port: 3000, calls: [api]}
  api:
    image: a
    port: 8000
    app_connect_timeout: 3s
    security: {no_new_privileges: false}
  db: {image: d, port: 5432, protocol: tcp}
"""


# -- prefix rewrites --------------------------------------------------------------------------

# (match kind, match value, rewrite_prefix, request path, forwarded path)
REWRITES = [
    ("prefix", "/red", "/", "/red/tell", "/tell"),
    ("prefix", "/red", "/", "/red", "/"),
    ("prefix", "/red", "/", "/red/", "/"),
    ("prefix", "/red", "/", "/red?x=1", "/?x=1"),
    ("prefix", "/red", "/", "/red/tell?x=/y", "/tell?x=/y"),
    ("prefix", "/red", "/", "/redder", "/der"),
    ("prefix", "/red", "/blue/", "/red/tell", "/blue/tell"),
    ("prefix", "/red", "/blue", "/red/tell", "/blue/tell"),
    ("prefix", "/red/", "/", "/red/tell", "/tell"),
    ("prefix", "/red/", "/blue/", "/red/tell", "/blue/tell"),
    ("prefix", "/red/", "/blue", "/red/tell", "/blue/tell"),
    ("prefix", "/red/", "/blue", "/red/", "/blue/"),
    ("prefix", "/", "/v1/", "/tell", "/v1/tell"),
    ("prefix", "/", "/v1", "/tell", "/v1/tell"),
    ("prefix", "/a.b", "/", "/a.b/c", "/c"),  # regex metacharacters are literal
    ("exact", "/red", "/", "/red", "/"),
    ("exact", "/red", "/blue", "/red?x=1", "/blue?x=1"),
    ("regex", "/r.d", "/", "/red/tell", "/red/tell"),  # the loader refuses this pair
]
IDS = [f"{k}:{m}->{r}:{p}" for k, m, r, p, _ in REWRITES]


def _envoy_applies(action: dict[str, Any], kind: str, value: str, path: str) -> str:
    """What Envoy does with a RouteAction's rewrite (its documented behaviour): prefix_rewrite
    replaces the matched prefix (or exact path); regex_rewrite substitutes every match of the
    pattern in the path, the query string left out of it and kept."""
    if "prefix_rewrite" in action:
        return str(action["prefix_rewrite"]) + path[len(value) :]
    if "regex_rewrite" in action:
        bare, sep, query = path.partition("?")
        rewrite = action["regex_rewrite"]
        replaced = re.sub(rewrite["pattern"]["regex"], rewrite["substitution"], bare)
        return replaced + sep + query
    return path


@pytest.mark.parametrize(("kind", "match", "rewrite", "path", "forwarded"), REWRITES, ids=IDS)
def test_rewrite_never_doubles_or_drops_the_slash(
    kind: Any, match: str, rewrite: str, path: str, forwarded: str
) -> None:
    pm = PathMatch(kind, match)
    assert rewritten_path(pm, rewrite, path) == (path if kind == "regex" else forwarded)


@pytest.mark.parametrize(("kind", "match", "rewrite", "path", "forwarded"), REWRITES, ids=IDS)
def test_rendered_rewrite_does_what_explain_says(
    kind: Any, match: str, rewrite: str, path: str, forwarded: str
) -> None:
    pm = PathMatch(kind, match)
    assert _envoy_applies(path_rewrite(pm, rewrite), kind, match, path) == rewritten_path(
        pm, rewrite, path
    )


def test_explain_shows_the_rewritten_path() -> None:
    e = explain(load(MESH), "GET", "/red/tell")
    assert e.stages[1].path == "/tell"
    assert "api (path /tell):" in format_explanation(e)


# -- retries and the sidecar's hop to its app ----------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "max_retries"),
    [("", UNLIMITED), ("    connection_pool: {max_retries: 7}\n", 7)],
    ids=["unset-no-limit", "set-kept"],
)
def test_cluster_retries_are_capped_only_when_the_file_says_so(pool: str, max_retries: int) -> None:
    mesh = load(f"mesh: m\nservices:\n  api:\n    image: a\n    port: 80\n{pool}")
    api = mesh.service("api")
    cluster = version_cluster(api, api.versions[0])
    assert cluster["circuit_breakers"]["thresholds"][0]["max_retries"] == max_retries


def test_sidecar_retries_its_app_before_any_request_reached_it() -> None:
    mesh = load(MESH)
    endpoints = placeholder_endpoints(mesh)
    api, web, db = (mesh.service(n) for n in ("api", "web", "db"))
    res = sidecar_resources(mesh, api, api.versions[0], endpoints)
    app = res.clusters[0]
    assert app["name"] == "_app" and app["connect_timeout"] == "3s"
    assert app["circuit_breakers"]["thresholds"][0]["max_retries"] == UNLIMITED
    hcm = res.listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = hcm["route_config"]["virtual_hosts"][0]["routes"]
    policy = route["route"]["retry_policy"]
    assert policy["retry_on"] == "connect-failure,reset-before-request"  # never on a response
    web_app = sidecar_resources(mesh, web, web.versions[0], endpoints).clusters[0]
    assert web_app["connect_timeout"] == "5s"  # the default
    tcp = sidecar_resources(mesh, db, db.versions[0], endpoints).listeners[0]
    assert tcp["filter_chains"][0]["filters"][-1]["typed_config"]["max_connect_attempts"] == 3


# -- the gateway's hops ----------------------------------------------------------------------------


def test_gateway_hops_admit_only_the_host_address() -> None:
    mesh = load(MESH)
    res = gateway_resources(mesh, placeholder_endpoints(mesh), "172.18.0.1")
    listeners = {item["name"]: item for item in res.listeners}
    for hop in ("out|web", "out|api"):
        first = listeners[hop]["filter_chains"][0]["filters"][0]
        assert first["name"] == "envoy.filters.network.rbac"
        (policy,) = first["typed_config"]["rules"]["policies"].values()
        assert policy["principals"] == [
            {"direct_remote_ip": {"address_prefix": "172.18.0.1", "prefix_len": 32}},
            {"direct_remote_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}},
        ]
    ingress = listeners["ingress"]["filter_chains"][0]["filters"]
    assert [f["name"] for f in ingress] == ["envoy.filters.network.http_connection_manager"]
    for listener in res.listeners:  # what the xDS server serves: every type known to it
        to_proto(LISTENER, listener)
    for route in res.routes:
        to_proto(ROUTE, route)
    open_hops = gateway_resources(mesh, placeholder_endpoints(mesh))
    assert "rbac" not in str(open_hops.listeners)  # no address known: as before


@pytest.mark.envoy
def test_real_envoy_accepts_the_hardened_gateway_and_rewrites(tmp_path: Path) -> None:
    text = MESH.replace(
        "    - {name: rest, service: web}",
        "    - {name: blue, match: {path_prefix: /blue/}, service: web, rewrite_prefix: /b}\n"
        "    - {name: odd, match: {path_prefix: '/a.b-c~d#e&f(g)[h]{i}*+|^$ j'}, service: web,"
        " rewrite_prefix: /}\n"
        "    - {name: rest, service: web}",
    )
    mesh = load(text)
    resources = gateway_resources(mesh, placeholder_endpoints(mesh), "172.18.0.1")
    rendered = Rendered("gateway.yaml", "m/gateway", static_bootstrap("g", "g", resources))
    assert "regex_rewrite" in str(rendered.bootstrap)
    assert envoy_rejections((rendered,), tmp_path) == []


# -- the mesh file ---------------------------------------------------------------------------------


def test_security_and_app_connect_timeout_inherit_from_defaults() -> None:
    mesh = load(
        "mesh: m\ndefaults:\n  app_connect_timeout: 2s\n  security: {no_new_privileges: false}\n"
        "services:\n  a: {image: a, port: 80}\n"
        "  b: {image: b, port: 80, app_connect_timeout: 250ms, security: {}}\n"
    )
    a, b = mesh.service("a"), mesh.service("b")
    assert (a.app_connect_timeout_ms, a.security.no_new_privileges) == (2000, False)
    assert (b.app_connect_timeout_ms, b.security.no_new_privileges) == (250, False)
    plain = load("mesh: m\nservices:\n  a: {image: a, port: 80}\n").service("a")
    assert (plain.app_connect_timeout_ms, plain.security.no_new_privileges) == (5000, True)


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("security: {no_new_privilege: false}", "did you mean 'no_new_privileges'"),
        ("security: {no_new_privileges: 'no'}", "expected true or false"),
        ("app_connect_timeout: soon", "app_connect_timeout"),
        ("app_connect_timeout: 0s", "must be at least 1ms"),
    ],
    ids=["near-miss-key", "not-a-boolean", "not-a-duration", "zero"],
)
def test_bad_hardening_fields_read_like_a_compiler(snippet: str, message: str) -> None:
    with pytest.raises(MeshInvalid) as err:
        load(f"mesh: m\nservices:\n  a:\n    image: a\n    port: 80\n    {snippet}\n")
    assert message in str(err.value)


# -- container specs -------------------------------------------------------------------------------


def _desired(text: str = MESH, user: str = "1000:1000") -> Any:
    mesh = load(text)
    images = {(s.name, v.name): f"img-{s.name}" for s in mesh.services for v in s.versions}
    inputs = Inputs("p", "/state", "envoy-id", "pause-id", images, proxy_user=user)
    return desired(mesh, inputs)


def test_proxies_and_pause_run_locked_down() -> None:
    want = _desired()
    pod = next(p for p in want.pods if p.service == "web")
    for spec in (pod.sidecar, want.gateway):
        assert spec.user == "1000:1000"
        assert spec.cap_drop == ("ALL",) and spec.cap_add == ()
        assert spec.security_opt == ("no-new-privileges",)
        assert spec.read_only and spec.tmpfs == ()  # Envoy writes only its admin socket
        assert spec.pids_limit and spec.mem_limit
        assert dict((c, m) for _, c, m in spec.binds) == {"/devmesh": "rw", "/devmesh-xds": "ro"}
    pause = pod.pause
    assert pause.user == "65535:65535" and pause.cap_drop == ("ALL",) and pause.read_only
    assert dict(pause.sysctls) == {"net.ipv4.ip_unprivileged_port_start": "0"}


def test_apps_get_no_new_privileges_unless_the_file_opts_out() -> None:
    want = _desired()
    apps = {p.service: p.app for p in want.pods}
    assert apps["web"].security_opt == ("no-new-privileges",)
    assert apps["api"].security_opt == ()  # security: {no_new_privileges: false}
    assert apps["web"].user is None and apps["web"].cap_drop == ()  # the image's own user


def test_opting_out_recreates_only_that_app() -> None:
    before = {c.name: c.config_hash for p in _desired().pods for c in p.containers}
    opted = MESH.replace(
        "  web: {image: w,", "  web: {security: {no_new_privileges: false}, image: w,"
    )
    after = {c.name: c.config_hash for p in _desired(opted).pods for c in p.containers}
    assert {n for n in before if before[n] != after[n]} == {"p-web-default-0-app"}


@pytest.mark.parametrize(
    ("uid", "gid", "user"), [(1000, 1000, "1000:1000"), (0, 0, "1337:1337")], ids=["user", "root"]
)
def test_proxies_never_run_as_root(uid: int, gid: int, user: str) -> None:
    assert proxy_user(uid, gid) == user


def test_engine_passes_only_what_the_spec_sets() -> None:
    bare = ContainerSpec(name="x", role="app", image="i", labels=())
    assert _privileges(bare) == {}
    full = ContainerSpec(
        name="x",
        role="sidecar",
        image="i",
        labels=(),
        user="1:2",
        cap_drop=("ALL",),
        cap_add=("NET_BIND_SERVICE",),
        security_opt=("no-new-privileges",),
        read_only=True,
        tmpfs=(("/tmp", "size=1m"),),
        pids_limit=64,
        mem_limit="64m",
        sysctls=(("net.ipv4.ip_unprivileged_port_start", "0"),),
    )
    assert _privileges(full) == {
        "user": "1:2",
        "cap_drop": ["ALL"],
        "cap_add": ["NET_BIND_SERVICE"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "tmpfs": {"/tmp": "size=1m"},
        "pids_limit": 64,
        "mem_limit": "64m",
        "sysctls": {"net.ipv4.ip_unprivileged_port_start": "0"},
    }
