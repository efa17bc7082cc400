"""Each node group's certificate: issued from the user's local CA, served by SDS, rotated.

Owned by the loop (the publisher asks for the secrets before every push). A node group (all
replicas of one version, or the gateway) gets one certificate whose URI SAN is its SPIFFE
ID (`envoy.names.spiffe_id`). It is replaced once half its lifetime has passed, and the
next push carries it; Envoy swaps it in for new connections and keeps open ones as they
are. The replacement is issued ahead, at PREPARE_AT of the lifetime (`prepare`, a step of
the loop of its own, not a push), so the renewal push only swaps in secrets that are ready;
one not ready by then (the loop was busy) is issued at the renewal, as before.
Certificates live in memory and on the xDS stream only: nothing is written to a file a
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
from devmesh.envoy.snapshot import digest

# Of a certificate's lifetime, from its issue: when its replacement is issued ahead, and
# when the replacement is served. A ready replacement is itself renewed at RENEW_AT of its
# own lifetime, so nothing served is ever past RENEW_AT + (RENEW_AT - PREPARE_AT) of its.
PREPARE_AT = 0.4
RENEW_AT = 0.5


@dataclass(frozen=True, slots=True)
class Cert:
    """What a node group serves now."""

    identity: str  # its SPIFFE ID
    not_after: float  # wall clock, epoch seconds
    serial: int
    renew_at: float  # monotonic: RENEW_AT of the lifetime from issue
    lifetime_ms: int
    secrets: tuple[Json, ...]
    prepare_at: float = 0.0  # monotonic: PREPARE_AT of the lifetime from issue
    digests: tuple[str, ...] = ()  # of `secrets`, computed off the push path


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
        self.ready: dict[str, Cert] = {}  # node group -> its next certificate, issued ahead
        self._tried: set[int] = set()  # serials whose replacement was attempted ahead
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
            self.certs, self.ready = {}, {}
            return {}
        ca = self.ensure_ca()
        now = self._clock()
        lifetime = mesh.tls.cert_lifetime_ms
        certs: dict[str, Cert] = {}
        ready: dict[str, Cert] = {}
        for group, identity in group_identities(mesh).items():
            cert = self.certs.get(group)
            fresh = (
                cert is not None
                and cert.identity == identity
                and cert.lifetime_ms == lifetime
                and now < cert.renew_at
            )
            next_ = self.ready.get(group)
            if next_ is not None and not (
                next_.identity == identity and next_.lifetime_ms == lifetime
            ):
                next_ = None  # issued for what the mesh no longer is
            if cert is None or not fresh:
                if cert is not None and cert.identity == identity:
                    self.rotations += 1
                if next_ is not None and now < next_.renew_at:
                    cert = next_  # issued ahead: the push only swaps it in
                else:
                    cert = self._issue(ca, identity, lifetime, now)
                next_ = None
                self.generation += 1
            certs[group] = cert
            if next_ is not None:
                ready[group] = next_
        self.certs, self.ready = certs, ready
        self._tried &= {c.serial for c in certs.values()}
        return {group: cert.secrets for group, cert in certs.items()}

    def prepare(self, mesh: Mesh) -> dict[str, Cert]:
        """Issue ahead the replacement of every served certificate past PREPARE_AT of its
        lifetime that has none yet; the next renewal serves them. Returns those issued now.
        Each certificate's replacement is attempted once: one that fails (CAError,
        ValueError) leaves the renewal to issue it."""
        if not uses_tls(mesh):
            return {}
        now = self._clock()
        lifetime = mesh.tls.cert_lifetime_ms
        made: dict[str, Cert] = {}
        for group, identity in group_identities(mesh).items():
            cert = self.certs.get(group)
            if (
                cert is None
                or cert.identity != identity
                or cert.lifetime_ms != lifetime
                or now < cert.prepare_at
                or cert.serial in self._tried
                or group in self.ready
            ):
                continue
            self._tried.add(cert.serial)
            made[group] = self.ready[group] = self._issue(self.ensure_ca(), identity, lifetime, now)
        return made

    def next_renewal(self) -> float | None:
        """When (monotonic) the next certificate is due, if any is served."""
        return min((c.renew_at for c in self.certs.values()), default=None)

    def next_wake(self) -> float | None:
        """When (monotonic) the loop must next call `prepare` or push a renewal."""
        times = [c.renew_at for c in self.certs.values()]
        times += [
            c.prepare_at
            for group, c in self.certs.items()
            if group not in self.ready and c.serial not in self._tried
        ]
        return min(times, default=None)

    def _issue(self, ca: LocalCA, identity: str, lifetime_ms: int, now: float) -> Cert:
        issued_at = dt.datetime.fromtimestamp(self._wall(), dt.UTC)
        issued = ca.issue(
            uris=[identity], lifetime=dt.timedelta(milliseconds=lifetime_ms), now=issued_at
        )
        secrets = tls_secrets(issued.cert_pem, issued.key_pem, ca.cert_pem)
        return Cert(
            identity=identity,
            not_after=issued.not_after.timestamp(),
            serial=issued.serial,
            renew_at=now + lifetime_ms / 1000 * RENEW_AT,
            lifetime_ms=lifetime_ms,
            secrets=secrets,
            prepare_at=now + lifetime_ms / 1000 * PREPARE_AT,
            digests=tuple(digest(s) for s in secrets),
        )
