"""Certificates issued ahead of their renewal (injected clocks), and a renewal push that only
swaps the secrets into what was served."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from devmesh.adapters.ca import load_or_create
from devmesh.adapters.xds_cache import SnapshotCache
from devmesh.adapters.xds_server import XdsServer
from devmesh.core.load import load
from devmesh.daemon.eventlog import EventLog
from devmesh.daemon.identities import PREPARE_AT, RENEW_AT, Identities
from devmesh.daemon.publisher import Publisher
from devmesh.envoy.render import render
from devmesh.envoy.resources import placeholder_endpoints
from devmesh.envoy.snapshot import SECRET, SnapshotError, new_snapshots, with_secrets

MESH = """
mesh: m
tls: {mode: STRICT, cert_lifetime: 10s}
services:
  web: {image: w, port: 8000, calls: [api]}
  api: {image: a, port: 8000}
"""


class Clocks:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = dt.datetime(2026, 12, 3, tzinfo=dt.UTC).timestamp()

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def identities(tmp_path: Path, clocks: Clocks) -> Identities:
    return Identities(
        lambda: load_or_create(tmp_path / "ca"), lambda: clocks.mono, lambda: clocks.wall
    )


def test_the_replacement_is_issued_ahead_and_the_renewal_serves_it(
    identities: Identities, clocks: Clocks
) -> None:
    mesh = load(MESH)
    first = identities.secrets(mesh)
    start = clocks.mono
    assert identities.next_wake() == start + 10 * PREPARE_AT  # before the renewal
    assert identities.next_renewal() == start + 10 * RENEW_AT
    clocks.advance(10 * PREPARE_AT - 0.1)
    assert identities.prepare(mesh) == {} and identities.ready == {}  # not yet
    clocks.advance(0.1)
    made = identities.prepare(mesh)
    assert set(made) == set(first) and identities.ready == made
    assert identities.secrets(mesh) == first  # issued ahead, not yet served
    assert identities.generation == len(first)
    assert identities.next_wake() == start + 10 * RENEW_AT  # only the renewal is left
    assert identities.prepare(mesh) == {}  # once per certificate
    clocks.advance(10 * (RENEW_AT - PREPARE_AT))
    renewed = identities.secrets(mesh)
    assert {g: c.serial for g, c in identities.certs.items()} == {
        g: c.serial for g, c in made.items()
    }
    assert all(renewed[g] == made[g].secrets for g in renewed)
    assert identities.ready == {} and identities.rotations == len(first)


def test_a_served_certificate_never_outlives_its_expiry(
    identities: Identities, clocks: Clocks
) -> None:
    """Renewals taken at every wake the loop is told, over many lifetimes: whatever is
    served is always valid, and each replacement was issued ahead."""
    mesh = load(MESH)
    identities.secrets(mesh)
    for _ in range(40):
        wake = identities.next_wake()
        assert wake is not None and wake > clocks.mono
        clocks.advance(wake - clocks.mono)
        identities.prepare(mesh)
        before = dict(identities.certs)
        ready = {g: c.serial for g, c in identities.ready.items()}
        identities.secrets(mesh)
        for group, cert in identities.certs.items():
            # Valid now, and for at least the time to its own renewal.
            assert cert.not_after >= clocks.wall + (cert.renew_at - clocks.mono)
            assert cert.not_after > clocks.wall + 10 * (1 - RENEW_AT - 0.01)
            if cert is not before[group]:  # swapped in: the one issued ahead
                assert cert.serial == ready[group]
    assert identities.rotations >= 6 * len(identities.certs)


def test_a_replacement_too_old_by_the_renewal_is_not_served(
    identities: Identities, clocks: Clocks
) -> None:
    """The loop was held up past the replacement's own renewal: a fresh one is issued."""
    mesh = load(MESH)
    identities.secrets(mesh)
    clocks.advance(10 * PREPARE_AT)
    ahead = identities.prepare(mesh)
    clocks.advance(10 * RENEW_AT + 1)
    identities.secrets(mesh)
    for group, cert in identities.certs.items():
        assert cert.serial != ahead[group].serial and cert.renew_at > clocks.mono


def test_a_replacement_for_another_lifetime_is_dropped(
    identities: Identities, clocks: Clocks
) -> None:
    mesh = load(MESH)
    identities.secrets(mesh)
    clocks.advance(10 * PREPARE_AT)
    ahead = identities.prepare(mesh)
    longer = load(MESH.replace("10s", "20s"))
    identities.secrets(longer)  # a changed lifetime: everything issued anew, now
    assert identities.ready == {}
    assert all(c.serial != ahead[g].serial for g, c in identities.certs.items())
    assert all(c.lifetime_ms == 20_000 for c in identities.certs.values())


def test_with_secrets_swaps_only_the_secrets_and_refuses_other_names(
    identities: Identities, clocks: Clocks
) -> None:
    mesh = load(MESH)
    groups = render(mesh, placeholder_endpoints(mesh))
    first = identities.secrets(mesh)
    served = new_snapshots({g: dataclasses.replace(r, secrets=first[g]) for g, r in groups.items()})
    clocks.advance(10)
    second = identities.secrets(mesh)
    swapped = with_secrets(served, second)
    assert swapped is not None
    for group, snapshot in swapped.items():
        old = served[group]
        assert snapshot.listeners is old.listeners and snapshot.clusters is old.clusters
        assert snapshot.secrets.items == second[group]
        assert snapshot.secrets.version != old.secrets.version
    assert with_secrets(served, first) == served  # nothing new: the same snapshots
    renamed = {g: (dict(s[0], name="other"), s[1]) for g, s in second.items()}
    assert with_secrets(served, renamed) is None  # references must be checked again


def test_the_cache_serves_secrets_packed_ahead(identities: Identities, clocks: Clocks) -> None:
    mesh = load(MESH)
    groups = render(mesh, placeholder_endpoints(mesh))
    first = identities.secrets(mesh)
    cache = SnapshotCache()
    served = new_snapshots({g: dataclasses.replace(r, secrets=first[g]) for g, r in groups.items()})
    cache.set_snapshots(served)
    clocks.advance(10 * PREPARE_AT)
    ahead = identities.prepare(mesh)
    cache.prepare(
        SECRET, ((d, s) for c in ahead.values() for s, d in zip(c.secrets, c.digests, strict=True))
    )
    packed = {d: m for d, m in cache._ready.items()}
    # Each new identity packed ahead; the CA's secret, already served, is not packed again.
    assert {c.digests[0] for c in ahead.values()} == set(packed)
    clocks.advance(10 * (RENEW_AT - PREPARE_AT))
    second = identities.secrets(mesh)
    swapped = with_secrets(served, second)
    assert swapped is not None
    changed = cache.set_snapshots(swapped)
    assert changed == set(served)
    for group, cert in identities.certs.items():
        now = cache.served(group)
        assert now is not None
        assert now.types[SECRET].packed["identity"] is packed[cert.digests[0]]  # not repacked
        before = now.types  # the other types: the objects served before the rotation
        assert before["type.googleapis.com/envoy.config.listener.v3.Listener"].version == (
            served[group].listeners.version
        )
    assert cache._ready == {}  # what was served moved to the packed resources


def test_a_secret_that_does_not_parse_is_not_prepared() -> None:
    cache = SnapshotCache()
    with pytest.raises(SnapshotError, match="identity"):
        cache.prepare(SECRET, [("x", {"name": "identity", "no_such_field": 1})])
    assert cache._ready == {}


def test_the_publisher_pushes_a_renewal_from_the_last_render(
    identities: Identities, clocks: Clocks, tmp_path: Path
) -> None:
    xds = XdsServer(tmp_path / "xds.sock")  # never started: its cache is what is served
    publisher = Publisher(xds, EventLog(), identities)
    mesh = load(MESH)
    eps = {k: list(v) for k, v in placeholder_endpoints(mesh).items()}
    assert publisher.publish(mesh, eps, None)
    before = {g: xds.cache.served(g) for g in publisher.groups}
    clocks.advance(10 * PREPARE_AT)
    publisher.prepare(mesh)
    ahead = {g: c.serial for g, c in identities.ready.items()}
    assert ahead and publisher.publish(mesh, eps, None)  # nothing due yet: nothing pushed
    assert {g: xds.cache.served(g) for g in publisher.groups} == before
    clocks.advance(10 * (RENEW_AT - PREPARE_AT))
    assert publisher.publish(mesh, eps, None)
    assert {g: c.serial for g, c in identities.certs.items()} == ahead
    for group, old in before.items():
        now = xds.cache.served(group)
        assert old is not None and now is not None
        assert now.versions[SECRET] != old.versions[SECRET]
        assert now.snapshot.listeners is old.snapshot.listeners  # not rebuilt
        assert now.snapshot.secrets.items == identities.certs[group].secrets
    # A changed mesh after a rotation renders and checks everything again.
    changed = load(MESH.replace("calls: [api]", "calls: []"))
    assert publisher.publish(changed, eps, None) and publisher.error is None
