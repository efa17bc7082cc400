"""Config delivery: render the whole mesh, check every node group's snapshot, hand them all
to the xDS cache at once. Owned and called by the loop alone."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from devmesh.adapters.engine import ContainerInfo
from devmesh.adapters.xds_server import XdsServer
from devmesh.api.types import EventKind, Severity
from devmesh.core.model import Mesh
from devmesh.core.problems import MeshError
from devmesh.daemon.eventlog import EventLog
from devmesh.daemon.health import Result
from devmesh.daemon.identities import Identities
from devmesh.daemon.ingress_tls import IngressCert
from devmesh.envoy.render import gateway_group, render
from devmesh.envoy.resources import runtime_layer
from devmesh.envoy.snapshot import (
    LISTENER,
    SECRET,
    Digests,
    Snapshot,
    SnapshotError,
    new_snapshots,
    with_runtime,
    with_secrets,
)
from devmesh.plan.desired import Desired
from devmesh.plan.roll import Retiring

Endpoints = dict[tuple[str, str], list[str]]
Configured = Callable[[str], bool]  # sidecar node id -> it has taken a config (ACKed once)


def serves(
    pod: str,
    app_name: str,
    sidecar: str,
    infos: Mapping[str, ContainerInfo],
    health: Mapping[str, Result],
    configured: Configured,
) -> bool:
    """A pod belongs in its version's endpoints: it has an address, its current app passes
    its check, and its sidecar has taken a config (else callers would reach a pod whose
    inbound listener does not exist yet). Once taken, a later push's ACK does not matter:
    requiring "synced" would drop every pod for the few ms after each push."""
    info, app, result = infos.get(pod), infos.get(app_name), health.get(pod)
    return bool(
        info
        and info.ip
        and app
        and result
        and result.ok
        and result.app_id == app.id
        and configured(sidecar)
    )


log = logging.getLogger("devmesh.publish")


def endpoints(
    want: Desired | None,
    infos: Mapping[str, ContainerInfo],
    health: Mapping[str, Result],
    retiring: Iterable[Retiring] = (),
    configured: Configured = lambda _node: True,
) -> Endpoints:
    """(service, version) -> the addresses of its pods that serve (see `serves`): the
    wanted pods, and the old pods of a roll that keep serving until their successor does."""
    out: Endpoints = {}
    wanted = want.pods if want else ()
    pods = [(p.name, p.app.name, p.sidecar.name, p.service, p.version) for p in wanted]
    pods += [(r.name, r.app, r.sidecar, r.service, r.version) for r in retiring if r.serving]
    for name, app, sidecar, service, version in pods:
        if serves(name, app, sidecar, infos, health, configured):
            ip = infos[name].ip
            assert ip is not None
            out.setdefault((service, version), []).append(ip)
    return out


class Publisher:
    def __init__(
        self, xds: XdsServer, events: EventLog, identities: Identities | None = None
    ) -> None:
        self._xds = xds
        self._events = events
        self.identities = identities if identities is not None else Identities()
        self.ingress_cert = IngressCert(self.identities.ensure_ca)  # one CA for both
        self._published: (
            tuple[Mesh, Endpoints, str | None, object, int, int, float | None] | None
        ) = None
        self.groups: frozenset[str] = frozenset()  # node groups served
        # The last render, by what it was made from: a renewal changes secrets alone, so
        # its push skips rendering the mesh again.
        self._rendered: tuple[tuple[Mesh, Endpoints, str | None, object], dict[str, Any]] | None = (
            None
        )
        self._snapshots: dict[str, Snapshot] | None = None  # made from `_rendered`, served
        self.error: str | None = None  # why the last config could not be delivered

    def configured(self, node_id: str) -> bool:
        """The Envoy with this node id is connected and has ACKed a listener config."""
        try:
            status = self._xds.status(node_id)
        except KeyError:  # never connected
            return False
        return status.connected and LISTENER in status.acked

    def publish(
        self,
        mesh: Mesh,
        served: Endpoints,
        host: str | None,
        host_apps: Mapping[tuple[str, str], tuple[str, int]] | None = None,
        sampling: float | None = None,
    ) -> bool:
        """False (and `error` says why) if the config could not be served; what the Envoys
        have stays as it was. `host_apps`: see `envoy.render.render`. `sampling`: the share
        of requests traced that overrides the mesh's (adaptive tracing), or None."""
        try:
            # Certificates first: one due for renewal makes this push differ (SDS alone).
            secrets = self.identities.secrets(mesh)
            ingress = self.ingress_cert.secrets(mesh)  # user files that went bad: refused
        except MeshError as exc:  # the CA cannot be used: the Envoys keep what they have
            return self._failed(exc)
        if ingress:
            gateway = gateway_group(mesh)
            secrets = {**secrets, gateway: (*secrets.get(gateway, ()), *ingress)}
        apps = dict(host_apps or {})
        key = (
            mesh, served, host, apps, self.identities.generation, self.ingress_cert.generation,
            sampling,
        )  # fmt: skip
        if key == self._published and self.error is None:
            return True  # the timer's passes over an unchanged mesh build nothing
        try:
            # Without the host's address (no network yet) the gateway's hops admit anyone;
            # the pass after the network exists pushes them locked to the host.
            rendered = self._rendered
            last = self._snapshots if rendered is not None else None
            if rendered is None or rendered[0] != (mesh, served, host, apps):
                rendered = ((mesh, served, host, apps), render(mesh, served, host, apps))
                last = None
            snapshots = None
            if last is not None:
                # The same render: a renewal swaps the secrets into what was served and
                # checks only them (their digests were taken when they were issued).
                seen: Digests = {
                    id(item): d
                    for cert in self.identities.certs.values()
                    for item, d in zip(cert.secrets, cert.digests, strict=True)
                }
                snapshots = with_secrets(last, secrets, seen)
            if snapshots is None:
                groups = dict(rendered[1])
                for group, own in secrets.items():
                    if group in groups:
                        groups[group] = dataclasses.replace(groups[group], secrets=own)
                snapshots = new_snapshots(groups)
            # A new share of requests traced: the runtime layer alone (RTDS), no listener
            snapshots = with_runtime(snapshots, runtime_layer(sampling))
            self._xds.set_snapshots(snapshots)
        except (SnapshotError, MeshError, ValueError, OverflowError) as exc:
            return self._failed(exc)
        self.error = None
        self._rendered = rendered
        self._snapshots = snapshots
        self.groups = frozenset(snapshots)
        self._published = key
        return True

    def prepare(self, mesh: Mesh) -> None:
        """Issue ahead the certificates due for renewal soon and pack their secrets into the
        cache, so that their renewal push only swaps them in. Nothing is pushed; a failure
        is only logged (the renewal issues them then, and reports what fails)."""
        try:
            made = self.identities.prepare(mesh)
            self._xds.cache.prepare(
                SECRET,
                (
                    (d, item)
                    for cert in self.identities.ready.values()
                    for item, d in zip(cert.secrets, cert.digests, strict=True)
                ),
            )
        except (MeshError, ValueError, OverflowError) as exc:
            log.warning("certificates not issued ahead: %s", exc)
            return
        if made:
            log.debug("%d certificates issued ahead of their renewal", len(made))

    def _failed(self, exc: Exception) -> bool:
        if self.error != str(exc):
            self._events.add(EventKind.PUSH, f"config not delivered: {exc}", "", Severity.ERROR)
        self.error = str(exc)
        return False
