"""The state document (`GET /v1/state`) from the loop's view: pure, but for the xDS
statuses it is given. A pod's state is decided here, once, as a `PodState`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from devmesh.adapters.xds_server import NodeStatus
from devmesh.api import types as api
from devmesh.core.addressing import GATEWAY_HOP_BASE
from devmesh.core.explain import describe_match
from devmesh.core.model import Fault, Mesh
from devmesh.daemon.controller import View
from devmesh.daemon.health import NOT_CHECKED, Result
from devmesh.daemon.identities import Cert
from devmesh.daemon.podstate import container_state
from devmesh.envoy.render import gateway_group
from devmesh.envoy.resources import sidecar_node
from devmesh.plan.desired import PodSpec
from devmesh.plan.roll import Retiring

XdsLookup = Callable[[str], "tuple[NodeStatus | None, bool]"]  # node id -> (status, synced)


def xds_status(status: NodeStatus | None, synced: bool) -> api.XdsStatus:
    if status is None:
        return api.XdsStatus()
    nack = status.nack
    return api.XdsStatus(
        connected=status.connected,
        synced=synced,
        version=_short_version(status.acked),
        nack=None
        if nack is None
        else api.Nack(type=nack.type_url.rsplit(".", 1)[-1], message=nack.message),
    )


def pod_status(view: View, pod: PodSpec | Retiring, xds: XdsLookup, taken: bool = True) -> api.Pod:
    """A wanted pod, or a roll's old one (serving until its successor does, or draining).
    `taken`: every connected Envoy has ACKed the config last published; until then a roll's
    old pod left out of it may still be sent requests, so it is not called draining yet."""
    leaving = False
    if isinstance(pod, PodSpec):
        app_name, sidecar_name, draining = pod.app.name, pod.sidecar.name, False
    else:
        app_name, sidecar_name = pod.app, pod.sidecar
        draining, leaving = not pod.serving and taken, not pod.serving and not taken
    info = view.infos.get(pod.name)
    app = view.infos.get(app_name)
    sidecar = view.infos.get(sidecar_name)
    health = view.health.get(pod.name)
    node, synced = xds(sidecar_name)
    state, reason = _pod_state(view, (pod.name, app_name, sidecar_name), node, synced, health)
    if draining and state is not api.PodState.ENGINE_DOWN:
        state, reason = api.PodState.DRAINING, "replaced: out of the endpoints, draining"
    elif leaving and state is api.PodState.READY:
        reason = "replaced: leaving the endpoints (the Envoys are taking the config)"
    elif (
        state is api.PodState.READY
        and isinstance(pod, PodSpec)
        and (info is None or info.ip not in view.endpoints.get((pod.service, pod.version), ()))
    ):
        state, reason = api.PodState.SYNCING, "not in its version's endpoints yet"
    return api.Pod(
        pod=pod.name,
        service=pod.service,
        version=pod.version,
        replica=pod.replica,
        state=state,
        reason=reason,
        address=info.ip if info else None,
        app=app.state if app else "missing",
        restarts=app.restarts if app else 0,
        sidecar=sidecar.state if sidecar else "missing",
        xds=xds_status(node, synced),
        retiring=isinstance(pod, Retiring),
        tls=_tls(
            view.certs.get(sidecar_node(view.served, pod.service, pod.version)),
            _mode(view.served, pod.service),
        ),
    )


def _mode(mesh: Mesh, service: str) -> str:
    return mesh.service(service).tls_mode if mesh.has_service(service) else ""


def _tls(cert: Cert | None, mode: str) -> api.PodTls | None:
    if cert is None:
        return None
    return api.PodTls(
        identity=cert.identity, mode=mode, not_after=cert.not_after, serial=f"{cert.serial:x}"
    )


def _pod_state(
    view: View,
    names: tuple[str, str, str],
    node: NodeStatus | None,
    synced: bool,
    health: Result | None,
) -> tuple[api.PodState, str]:
    """`names`: the pod's, its app's and its sidecar's."""
    pod_name, app_name, sidecar_name = names
    info = view.infos.get(pod_name)
    app = view.infos.get(app_name)
    sidecar = view.infos.get(sidecar_name)
    broken = [
        view.start_errors[n] for n in (pod_name, sidecar_name, app_name) if n in view.start_errors
    ]
    S = api.PodState
    if not view.engine_ok:
        return S.ENGINE_DOWN, f"the container engine does not answer ({view.engine_detail})"
    if broken:
        return S.FAILED, broken[0]
    containers = container_state(info, app, sidecar)
    if containers is not None or app is None:  # (app is known when containers is None)
        return containers or (S.STARTING, "app container missing")
    if view.push_error is not None:
        return S.SYNCING, f"config not delivered: {view.push_error}"
    if node is not None and node.nack is not None:
        return S.NACKED, f"config NACKed: {node.nack.message}"
    if not synced:
        return S.SYNCING, "sidecar has not ACKed its config yet"
    if health is None or health.app_id != app.id or not health.ok:
        why = health.reason if health is not None and health.app_id == app.id else NOT_CHECKED
        return S.UNHEALTHY, f"health failing ({why})"
    return S.READY, ""


def _config_taken(view: View, xds: XdsLookup) -> bool:
    """Every connected Envoy of the mesh (the wanted pods' sidecars, the gateway) has ACKed
    the config last published for it."""
    want = view.desired
    if want is None:
        return True
    nodes = [p.sidecar.name for p in want.pods]
    if want.gateway is not None:
        nodes.append(want.gateway.name)
    for node in nodes:
        status, synced = xds(node)
        if status is not None and status.connected and not synced:
            return False
    return True


def gateway_status(view: View, xds: XdsLookup) -> api.Gateway | None:
    want = view.desired
    if want is None or want.gateway is None:
        return None
    info = view.infos.get(want.gateway.name)
    node, synced = xds(want.gateway.name)
    ingress = view.served.ingress
    published = info.ports if info else {}
    services = {
        svc.name: f"http://127.0.0.1:{published[GATEWAY_HOP_BASE + i]}/"
        for i, svc in enumerate(view.served.gateway_services())
        if GATEWAY_HOP_BASE + i in published
    }
    return api.Gateway(
        name=want.gateway.name,
        state=(info.state if info else "missing") if view.engine_ok else "unknown",
        ready=bool(
            view.engine_ok
            and view.push_error is None
            and info
            and info.state == "running"
            and synced
        ),
        url=f"{'https' if ingress.tls else 'http'}://{ingress.host}:{ingress.port}/"
        if ingress
        else None,
        services=services,
        xds=xds_status(node, synced),
        tls=_tls(view.certs.get(gateway_group(view.served)), ""),
        reason=view.start_errors.get(want.gateway.name, ""),
    )


def mesh_state(
    view: View,
    xds: XdsLookup,
    project: str,
    mesh_file: str,
    sidecar_image: str | None,
    events: tuple[api.Event, ...],
) -> api.MeshState:
    want = view.desired
    pods = tuple(pod_status(view, p, xds) for p in want.pods) if want else ()
    taken = _config_taken(view, xds) if view.retiring else True
    pods += tuple(pod_status(view, r, xds, taken) for r in view.retiring)
    gateway = gateway_status(view, xds)
    failed = [api.Failure(s, v, r) for (s, v), r in view.failed.items()]
    failed += [
        api.Failure(p.service, p.version, p.reason) for p in pods if p.state is api.PodState.FAILED
    ]
    ready = (
        view.phase == "serving"
        and view.engine_ok
        and view.push_error is None
        and not view.errors
        and not failed
        and all(p.ready for p in pods if not p.retiring)
        and (gateway is None or gateway.ready)
        and not any(b.running for b in view.builds)  # a version's first pods may wait on it
    )
    return api.MeshState(
        mesh=view.mesh.name,
        project=project,
        phase=api.Phase(view.phase),
        ready=ready,
        file=mesh_file,
        pid=os.getpid(),
        problems=view.problems,
        reloads=view.reloads,
        reload_failures=view.reload_failures,
        errors=view.errors,
        push_error=view.push_error,
        engine=api.EngineStatus(view.engine_ok, view.engine_detail),
        failed=tuple(failed),
        sidecar_image=sidecar_image,
        pods=pods,
        gateway=gateway,
        events=events,
        builds=tuple(
            api.BuildStatus(b.service, b.version, b.running, b.step, b.error) for b in view.builds
        ),
    )


def _short_version(acked: dict[str, str]) -> str | None:
    if not acked:
        return None
    joined = "".join(v for _, v in sorted(acked.items()))
    return hashlib.sha256(joined.encode()).hexdigest()[:8]


def routes(mesh: Mesh, overrides: frozenset[tuple[str, str]]) -> api.Routes:
    """`GET /v1/routes`: every service's routes as served (`mesh` is the effective one)."""
    services = []
    for service in mesh.services:
        infos = tuple(
            api.RouteInfo(
                name=r.name,
                # tcp: no request to match, every connection takes the route (not "path_prefix /")
                match=describe_match(r.match) if service.is_http else "",
                to={t.version: t.weight for t in r.to},
                retries=None
                if r.retries is None
                else api.RetrySpec(r.retries.attempts, r.retries.on),
                timeout_ms=r.timeout_ms,
                fault=None if r.fault is None else _fault_spec(r.fault),
                mirror=None
                if r.mirror is None
                else api.MirrorSpec(r.mirror.service, r.mirror.version, r.mirror.percent),
                fault_override=(service.name, r.name) in overrides,
            )
            for r in service.routes
        )
        services.append(
            api.ServiceRoutes(
                name=service.name,
                protocol=service.protocol,
                port=service.port,
                versions={v.name: v.replicas for v in service.versions},
                routes=infos,
            )
        )
    ingress = None
    if mesh.ingress is not None:
        ingress = api.IngressRoutes(
            address=f"{mesh.ingress.host}:{mesh.ingress.port}",
            routes=tuple(
                api.IngressRoute(r.name, describe_match(r.match), r.service)
                for r in mesh.ingress.routes
            ),
        )
    return api.Routes(mesh.name, tuple(services), ingress)


def _fault_spec(fault: Fault) -> api.FaultSpec:
    delay, abort = fault.delay, fault.abort
    return api.FaultSpec(
        delay=None if delay is None else api.DelaySpec(delay.fixed_ms, delay.percent),
        abort=None
        if abort is None
        else api.AbortSpec(abort.percent, abort.http_status, abort.grpc_status),
    )
