"""The ingress's HTTPS certificate (`ingress: {tls: ...}`), served to the gateway by SDS.

`tls: true`: a certificate from the user's local CA (the one `devmesh ca` exports) for
localhost and 127.0.0.1, issued when first needed, kept in memory only, and re-issued once
half its lifetime has passed (a pass runs every 15 s, so no timer of its own).

`tls: {cert, key}`: the user's files, read and checked (adapters/tlsfiles.py) when the mesh
names them and again whenever either file changes on disk (its size, mtime or inode). Files
that no longer pass keep the push from happening: the gateway keeps serving the last good
certificate, and the problem is the push error `devmesh ps` shows.

Owned by the loop, like `Identities` (the publisher asks before every push).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from typing import Any

from devmesh.adapters.ca import LocalCA
from devmesh.adapters.tlsfiles import load_pair
from devmesh.core.model import IngressTls, Mesh
from devmesh.envoy.resources import Json, ingress_secret

INGRESS_CERT_LIFETIME = dt.timedelta(days=30)  # browsers cap server certificates at 398 days
INGRESS_DNS_NAMES = ("localhost",)
INGRESS_IPS = ("127.0.0.1",)  # the gateway publishes on 127.0.0.1 only


def uses_ca(mesh: Mesh) -> bool:
    """Whether the mesh's ingress serves a certificate from the local CA."""
    tls = mesh.ingress.tls if mesh.ingress is not None else None
    return tls is not None and tls.cert_file is None


class IngressCert:
    def __init__(
        self, load_ca: Callable[[], LocalCA], wall: Callable[[], float] = time.time
    ) -> None:
        self._load_ca = load_ca
        self._wall = wall
        self._source: Any = None  # what the served secret was made from
        self._renew_at = 0.0  # wall clock, for a CA-issued one
        self._secret: Json | None = None
        self.not_after: dt.datetime | None = None
        self.generation = 0  # changes whenever the secret does

    def secrets(self, mesh: Mesh) -> tuple[Json, ...]:
        """The gateway's ingress secret (none without `ingress.tls`). CAError or
        TlsFileError (MeshErrors) when it cannot be made; nothing served changes then."""
        tls = mesh.ingress.tls if mesh.ingress is not None else None
        if tls is None:
            self._source, self._secret, self.not_after = None, None, None
            return ()
        source = self._source_of(tls)
        due = tls.cert_file is None and self._wall() >= self._renew_at
        if source != self._source or due or self._secret is None:
            self._secret = self._make(tls)
            self._source = source
            self.generation += 1
        return (self._secret,)

    def _source_of(self, tls: IngressTls) -> Any:
        if tls.cert_file is None or tls.key_file is None:
            return ("ca",)
        return ("files", tls, _signature(tls.cert_file), _signature(tls.key_file))

    def _make(self, tls: IngressTls) -> Json:
        if tls.cert_file is not None and tls.key_file is not None:
            pair = load_pair(tls.cert_file, tls.key_file, tls.cert_at, tls.key_at)
            self.not_after = pair.not_after
            return ingress_secret(pair.cert_pem, pair.key_pem)
        ca = self._load_ca()
        now = dt.datetime.fromtimestamp(self._wall(), dt.UTC)
        issued = ca.issue(
            lifetime=INGRESS_CERT_LIFETIME,
            dns_names=INGRESS_DNS_NAMES,
            ips=INGRESS_IPS,
            common_name="devmesh ingress",
            now=now,
        )
        self.not_after = issued.not_after
        self._renew_at = now.timestamp() + (issued.not_after - now).total_seconds() / 2
        # The chain as browsers want it: the leaf, then the CA they were told to trust.
        return ingress_secret(issued.cert_pem + ca.cert_pem, issued.key_pem)


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None  # load_pair says why
    return (info.st_ino, info.st_size, info.st_mtime_ns)
