"""Each node group's certificate: issued from the user's local CA, served by SDS, rotated.

Owned by the loop (the publisher asks for the secrets before every push). A node group (all
replicas of one version, or the gateway) gets one certificate whose URI SAN is its SPIFFE
ID (`envoy.names.spiffe_id`). It is re-issued once half its lifetime has passed, and the
next push carries it; Envoy swaps it in for new connections and keeps open ones as they
are. Certificates live in memory and on the xDS stream only: nothing is written to a file a
pod could read.

The CA is loaded once, when a mesh first needs TLS (a mesh that is all DISABLED never
touches the CA directory), and kept for the daemon's life: one that cannot be loaded is a
CAError naming the path, the push is refused, and the Envoys keep what they have.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from devmesh.adapters.ca import LocalCA, load_or_create
from devmesh.core.model import Mesh
from devmesh.envoy.render import gateway_group
from devmesh.envoy.resources import Json, group_identity, sidecar_node, tls_secrets, uses_tls


@dataclass(frozen=True, slots=True)
class Cert:
    """What a node group serves now."""

    identity: str  # its SPIFFE ID
    not_after: float  # wall clock, epoch seconds
    serial: int
    renew_at: float  # monotonic: half the lifetime from issue
    lifetime_ms: int
    secrets: tuple[Json, ...]


def group_identities(mesh: Mesh) -> dict[str, str]:
    """Node group -> the SPIFFE ID its certificate carries."""
    out = {
        sidecar_node(mesh, s.name, v.name): group_identity(mesh, s.name)
        for s in mesh.services
        for v in s.versions
    }
    if mesh.has_gateway:
        out[gateway_group(mesh)] = group_identity(mesh, None)
    return out


class Identities:
    def __init__(
        self,
        load_ca: Callable[[], LocalCA] = load_or_create,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._load_ca = load_ca
        self._clock = clock
        self._wall = wall
        self._ca: LocalCA | None = None
        self.certs: dict[str, Cert] = {}  # node group -> its certificate now
        self.generation = 0  # changes whenever any certificate is issued
        self.rotations = 0  # re-issues of a certificate before its expiry

    @property
    def ca(self) -> LocalCA | None:
        return self._ca

    def ensure_ca(self) -> LocalCA:
        """The CA, loaded (or made) on first use. CAError when it cannot be used."""
        if self._ca is None:
            self._ca = self._load_ca()
        return self._ca

    def secrets(self, mesh: Mesh) -> dict[str, tuple[Json, ...]]:
        """Node group -> its SDS secrets, issuing what is missing, due or changed. Empty when
        no service of the mesh speaks TLS. CAError when the CA cannot be used."""
        if not uses_tls(mesh):
            self.certs = {}
            return {}
        ca = self.ensure_ca()
        now = self._clock()
        lifetime = mesh.tls.cert_lifetime_ms
        certs: dict[str, Cert] = {}
        for group, identity in group_identities(mesh).items():
            cert = self.certs.get(group)
            fresh = (
                cert is not None
                and cert.identity == identity
                and cert.lifetime_ms == lifetime
                and now < cert.renew_at
            )
            if cert is None or not fresh:
                if cert is not None and cert.identity == identity:
                    self.rotations += 1
                cert = self._issue(ca, identity, lifetime, now)
                self.generation += 1
            certs[group] = cert
        self.certs = certs
        return {group: cert.secrets for group, cert in certs.items()}

    def next_renewal(self) -> float | None:
        """When (monotonic) the next certificate is due, if any is served."""
        return min((c.renew_at for c in self.certs.values()), default=None)

    def _issue(self, ca: LocalCA, identity: str, lifetime_ms: int, now: float) -> Cert:
        issued_at = dt.datetime.fromtimestamp(self._wall(), dt.UTC)
        issued = ca.issue(
            uris=[identity], lifetime=dt.timedelta(milliseconds=lifetime_ms), now=issued_at
        )
        return Cert(
            identity=identity,
            not_after=issued.not_after.timestamp(),
            serial=issued.serial,
            renew_at=now + lifetime_ms / 2000,
            lifetime_ms=lifetime_ms,
            secrets=tls_secrets(issued.cert_pem, issued.key_pem, ca.cert_pem),
        )
