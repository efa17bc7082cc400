"""Config delivery: render the whole mesh, check every node group's snapshot, hand them all
to the xDS cache at once. Owned and called by the loop alone."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
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
from devmesh.envoy.snapshot import (
    SECRET,
    Digests,
    Snapshot,
    SnapshotError,
    new_snapshots,
    with_secrets,
)
from devmesh.plan.desired import Desired

Endpoints = dict[tuple[str, str], list[str]]

log = logging.getLogger("devmesh.publish")


def endpoints(
    want: Desired | None, infos: Mapping[str, ContainerInfo], health: Mapping[str, Result]
) -> Endpoints:
    """(service, version) -> the addresses of its pods whose current app passes its check."""
    out: Endpoints = {}
    for pod in want.pods if want else ():
        info, app, result = infos.get(pod.name), infos.get(pod.app.name), health.get(pod.name)
        if info and info.ip and app and result and result.ok and result.app_id == app.id:
            out.setdefault((pod.service, pod.version), []).append(info.ip)
    return out


class Publisher:
    def __init__(
        self, xds: XdsServer, events: EventLog, identities: Identities | None = None
    ) -> None:
        self._xds = xds
        self._events = events
        self.identities = identities if identities is not None else Identities()
        self.ingress_cert = IngressCert(self.identities.ensure_ca)  # one CA for both
        self._published: tuple[Mesh, Endpoints, str | None, int, int] | None = None
        self.groups: frozenset[str] = frozenset()  # node groups served
        # The last render, by what it was made from: a renewal changes secrets alone, so
        # its push skips rendering the mesh again.
        self._rendered: tuple[tuple[Mesh, Endpoints, str | None], dict[str, Any]] | None = None
        self._snapshots: dict[str, Snapshot] | None = None  # made from `_rendered`, served
        self.error: str | None = None  # why the last config could not be delivered

    def publish(self, mesh: Mesh, served: Endpoints, host: str | None) -> bool:
        """False (and `error` says why) if the config could not be served; what the Envoys
        have stays as it was."""
        try:
            # Certificates first: one due for renewal makes this push differ (SDS alone).
            secrets = self.identities.secrets(mesh)
            ingress = self.ingress_cert.secrets(mesh)  # user files that went bad: refused
        except MeshError as exc:  # the CA cannot be used: the Envoys keep what they have
            return self._failed(exc)
        if ingress:
            gateway = gateway_group(mesh)
            secrets = {**secrets, gateway: (*secrets.get(gateway, ()), *ingress)}
        key = (mesh, served, host, self.identities.generation, self.ingress_cert.generation)
        if key == self._published and self.error is None:
            return True  # the timer's passes over an unchanged mesh build nothing
        try:
            # Without the host's address (no network yet) the gateway's hops admit anyone;
            # the pass after the network exists pushes them locked to the host.
            rendered = self._rendered
            last = self._snapshots if rendered is not None else None
            if rendered is None or rendered[0] != (mesh, served, host):
                rendered, last = ((mesh, served, host), render(mesh, served, host)), None
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
