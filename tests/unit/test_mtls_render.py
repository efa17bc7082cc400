"""mTLS and authorization in the rendered config, the `tls:`/`allow:` keys, denial stats in
mesh terms, and certificate renewal (pure, or with a CA in a temporary directory)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from devmesh.adapters.ca import load_or_create
from devmesh.api.types import GATEWAY_CALLER, UNKNOWN_CALLER, Denial
from devmesh.core.load import load
from devmesh.core.problems import MeshInvalid
from devmesh.daemon.identities import Identities, group_identities
from devmesh.envoy.names import parse_denial, sidecar_stats, spiffe_id
from devmesh.envoy.render import render
from devmesh.envoy.resources import Json, placeholder_endpoints
from devmesh.envoy.snapshot import SECRET, new_snapshots

MESH = """
mesh: m
tls: {mode: @MODE@}
ingress:
  port: 8080
  routes: [{name: site, service: web}]
services:
  web: {image: w, port: 8000, calls: [api, db]}
  api:
    image: a
    port: 8000
    allow:
      - {method: [GET, HEAD], path_prefix: /public}
  other: {image: o, port: 8000, egress: all}
  db: {image: d, port: 5432, protocol: tcp, tls: {mode: PERMISSIVE}}
  legacy: {image: l, port: 8000, tls: {mode: DISABLED}}
"""


def _mesh(mode: str = "STRICT") -> Any:
    return load(MESH.replace("@MODE@", mode))


def _group(mode: str, group: str) -> Any:
    mesh = _mesh(mode)
    return render(mesh, placeholder_endpoints(mesh))[group]


def _inbound(mode: str, service: str) -> Json:
    res = _group(mode, f"m/{service}/default")
    return next(item for item in res.listeners if item["name"] == "in")


def _rbac(chain: Json) -> list[Json]:
    first = chain["filters"][0]["typed_config"]
    filters = first.get("http_filters", chain["filters"])
    return [f["typed_config"] for f in filters if "rbac" in f["name"]]


@pytest.mark.parametrize(
    ("mode", "chains"),
    [("STRICT", ["mtls"]), ("PERMISSIVE", ["mtls", "plaintext"])],
    ids=["strict", "permissive"],
)
def test_the_mode_decides_the_inbound_filter_chains(mode: str, chains: list[str]) -> None:
    listener = _inbound(mode, "api")
    assert [c["name"] for c in listener["filter_chains"]] == chains
    mtls = listener["filter_chains"][0]
    assert mtls["filter_chain_match"] == {"transport_protocol": "tls"}
    context = mtls["transport_socket"]["typed_config"]
    assert context["require_client_certificate"] is True
    assert listener["listener_filters"][0]["name"] == "envoy.filters.listener.tls_inspector"


def test_strict_and_permissive_share_the_tls_chain_and_listener_filters() -> None:
    """So a switch is a filter-chain-only update: open mTLS connections stay."""
    strict, permissive = _inbound("STRICT", "api"), _inbound("PERMISSIVE", "api")
    assert strict["filter_chains"][0] == permissive["filter_chains"][0]
    assert strict["listener_filters"] == permissive["listener_filters"]


def test_disabled_is_plaintext_in_and_out() -> None:
    listener = _inbound("STRICT", "legacy")
    assert "listener_filters" not in listener
    assert "transport_socket" not in listener["filter_chains"][0]
    other = _group("STRICT", "m/other/default")
    legacy = next(c for c in other.clusters if c["name"] == "legacy|default")
    assert "transport_socket" not in legacy


def test_a_caller_originates_mtls_and_accepts_only_the_callees_identity() -> None:
    web = _group("STRICT", "m/web/default")
    api = next(c for c in web.clusters if c["name"] == "api|default")
    context = api["transport_socket"]["typed_config"]["common_tls_context"]
    validation = context["combined_validation_context"]["default_validation_context"]
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": spiffe_id("m", "api")}}
    ]
    assert context["tls_certificate_sds_secret_configs"][0]["name"] == "identity"
    assert next(c for c in web.clusters if c["name"] == "_app").get("transport_socket") is None


def test_the_gateway_is_a_mesh_member_with_its_own_identity() -> None:
    mesh = _mesh()
    assert group_identities(mesh)["m/gateway"] == "spiffe://devmesh.local/mesh/m/gateway"
    gateway = render(mesh, placeholder_endpoints(mesh))["m/gateway"]
    api = next(c for c in gateway.clusters if c["name"] == "api|default")
    assert "transport_socket" in api


def _policies(rules: list[Json]) -> dict[str, Json]:
    """The inbound HTTP RBAC: one DENY filter, its policies named by caller."""
    (rbac,) = rules
    assert rbac["rules"]["action"] == "DENY"
    assert rbac["track_per_rule_stats"] is True
    return dict(rbac["rules"]["policies"])


def _identity(policy: Json) -> str:
    (principal,) = policy["principals"]
    return str(principal["authenticated"]["principal_name"]["exact"])


def test_only_declared_callers_and_the_gateway_are_admitted() -> None:
    policies = _policies(_rbac(_inbound("STRICT", "api")["filter_chains"][0]))
    gateway = "spiffe://devmesh.local/mesh/m/gateway"
    # `other` may route everywhere (egress: all) but does not list api in `calls:`
    for caller in ("other", "db", "legacy", "api"):
        assert policies[caller]["permissions"] == [{"any": True}]
        assert _identity(policies[caller]) == spiffe_id("m", caller)
    # Admitted, but narrowed by api's `allow:` (tested below): denied only what it does not allow
    for caller, identity in (("web", spiffe_id("m", "web")), (GATEWAY_CALLER, gateway)):
        assert _identity(policies[caller]) == identity
        assert "not_rule" in policies[caller]["permissions"][0]
    # A peer that is none of the mesh's identities: denied, counted as unknown
    unknown = policies[UNKNOWN_CALLER]
    assert unknown["permissions"] == [{"any": True}]
    (principal,) = unknown["principals"]
    known = {
        p["authenticated"]["principal_name"]["exact"] for p in principal["not_id"]["or_ids"]["ids"]
    }
    assert known == {spiffe_id("m", s) for s in ("web", "other", "db", "legacy", "api")} | {gateway}


def test_a_declared_caller_with_no_allow_rules_has_no_policy() -> None:
    policies = _policies(_rbac(_inbound("STRICT", "web")["filter_chains"][0]))
    assert GATEWAY_CALLER not in policies  # the gateway's door to web, not narrowed
    assert set(policies) == {"web", "api", "other", "db", "legacy", UNKNOWN_CALLER}


def test_every_caller_has_one_policy_and_no_two_match_one_peer() -> None:
    """Envoy tries DENY policies by name and counts the first match: disjoint principals
    make that match the caller's own policy, whatever the names' order."""
    policies = _policies(_rbac(_inbound("STRICT", "api")["filter_chains"][0]))
    identities = [_identity(p) for c, p in policies.items() if c != UNKNOWN_CALLER]
    assert len(identities) == len(set(identities))


def test_allow_rules_narrow_what_a_declared_caller_may_ask() -> None:
    policies = _policies(_rbac(_inbound("STRICT", "api")["filter_chains"][0]))
    assert _identity(policies["web"]) == spiffe_id("m", "web")
    narrowed = policies["web"]["permissions"][0]["not_rule"]
    (rule,) = narrowed["or_rules"]["rules"]
    assert rule["and_rules"]["rules"] == [
        {"header": {"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}},
        {"url_path": {"path": {"prefix": "/public"}}},
    ]


def test_a_tcp_service_is_authorized_by_network_rbac() -> None:
    listener = _inbound("STRICT", "db")
    rules = _rbac(listener["filter_chains"][0])
    assert rules and all("stat_prefix" in r for r in rules)
    assert rules[-1]["stat_prefix"] == "in.caller._unknown."
    plaintext = listener["filter_chains"][1]  # db is PERMISSIVE on its own
    assert _rbac(plaintext) == []


@pytest.mark.parametrize(
    ("name", "caller"),
    [
        ("http.in.rbac.caller.policy.web.denied", "web"),
        ("in.caller.other.rbac.denied", "other"),
        ("http.in.rbac.caller.policy._gateway.denied", GATEWAY_CALLER),
        ("http.in.rbac.caller.policy.web.allowed", None),
        ("http.in.rbac.caller.denied", None),
        ("http.in.rbac.denied", None),
        ("http.ingress.rbac.caller.policy.web.denied", None),
    ],
)
def test_denial_counters_parse_back_to_the_caller(name: str, caller: str | None) -> None:
    assert parse_denial(name) == caller


def test_sidecar_stats_name_each_refused_caller() -> None:
    stats = sidecar_stats(
        "p",
        "api",
        "default",
        {
            "http.in.rbac.caller.policy.other.denied": 4,
            "http.in.rbac.caller.policy._unknown.denied": 1,
            "http.in.rbac.caller.policy.web.denied": 0,
            "http.in.rbac.caller.denied": 5,
        },
    )
    assert stats.denials == (Denial(UNKNOWN_CALLER, 1), Denial("other", 4))


def test_every_group_with_its_secrets_is_consistent_and_refers_to_them() -> None:
    mesh = _mesh()
    identities = Identities(lambda: load_or_create(_ca_dir()))
    groups = render(mesh, placeholder_endpoints(mesh))
    secrets = identities.secrets(mesh)
    assert set(secrets) == set(groups)
    served = new_snapshots(
        {g: dataclasses.replace(r, secrets=secrets[g]) for g, r in groups.items()}
    )
    assert served["m/web/default"].references()[SECRET] == {"identity", "mesh-ca"}


_CA: list[Path] = []


def _ca_dir() -> Path:
    return _CA[0]


@pytest.fixture(autouse=True)
def _ca(tmp_path: Path) -> None:
    _CA[:] = [tmp_path / "ca"]


class Clocks:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = dt.datetime(2026, 12, 3, tzinfo=dt.UTC).timestamp()

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def test_certificates_are_renewed_at_half_their_lifetime_and_not_before() -> None:
    clocks = Clocks()
    identities = Identities(
        lambda: load_or_create(_ca_dir()), lambda: clocks.mono, lambda: clocks.wall
    )
    mesh = load(MESH.replace("@MODE@", "STRICT, cert_lifetime: 10s"))
    first = identities.secrets(mesh)
    cert = identities.certs["m/api/default"]
    assert cert.not_after == clocks.wall + 10 and identities.next_renewal() == clocks.mono + 5
    clocks.advance(4.9)
    assert identities.secrets(mesh) == first and identities.rotations == 0
    clocks.advance(0.2)
    renewed = identities.secrets(mesh)
    assert renewed["m/api/default"] != first["m/api/default"]
    assert identities.rotations == len(first)  # every group, once
    assert identities.certs["m/api/default"].serial != cert.serial


def test_an_all_disabled_mesh_never_touches_the_ca() -> None:
    def no_ca() -> Any:
        raise AssertionError("the CA was loaded")

    mesh = load("mesh: m\ntls: {mode: DISABLED}\nservices:\n  a: {image: a, port: 8000}\n")
    assert Identities(no_ca).secrets(mesh) == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("tls: {mode: @MODE@}", None),
        ("tls: {mode: strict}", "'strict' is not one of STRICT, PERMISSIVE, DISABLED"),
        ("tls: {mode: STRICT, cert_lifetime: 1s}", "must be at least 2000ms"),
        ("tls: {mode: STRICT, cert_lifetime: 2d}", "cert_lifetime"),
    ],
    ids=["ok", "lower-case-mode", "lifetime-too-short", "not-a-duration"],
)
def test_tls_settings_are_checked(change: str, message: str | None) -> None:
    text = MESH.replace("tls: {mode: @MODE@}", change).replace("@MODE@", "STRICT")
    if message is None:
        load(text)
        return
    with pytest.raises(MeshInvalid, match=message):
        load(text)


def test_allow_rules_on_a_tcp_service_are_an_error() -> None:
    text = MESH.replace("@MODE@", "STRICT").replace(
        "protocol: tcp, tls:", "protocol: tcp, allow: [{method: GET}], tls:"
    )
    with pytest.raises(MeshInvalid, match=r"services\.db\.allow: allow rules match HTTP"):
        load(text)


def test_the_mode_is_the_meshs_unless_the_service_sets_its_own() -> None:
    mesh = _mesh("PERMISSIVE")
    modes = {s.name: s.tls_mode for s in mesh.services}
    assert modes == {
        "web": "PERMISSIVE",
        "api": "PERMISSIVE",
        "other": "PERMISSIVE",
        "db": "PERMISSIVE",
        "legacy": "DISABLED",
    }
    assert load(MESH.replace("tls: {mode: @MODE@}\n", "")).service("web").tls_mode == "STRICT"
