"""What should run for a mesh, as values: every container of every pod and the gateway.

Pure: no Docker here. The daemon resolves images and paths first and passes them in; each
container spec carries a hash of itself, stored as a label, so that a container is
recreated only when what it would be created with has changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from devmesh import labels
from devmesh.core.addressing import (
    GATEWAY_PORT,
    RESERVED_PORTS,
    gateway_hop_ports,
    service_addresses,
)
from devmesh.core.model import HEALTH_INTERVAL_MS, HEALTH_TIMEOUT_MS, Health, Mesh, Service, Version
from devmesh.core.transport import HOST_GATEWAY, Transport
from devmesh.envoy import tracing
from devmesh.envoy.bootstrap import XdsTcp, ads_bootstrap
from devmesh.envoy.render import gateway_group
from devmesh.envoy.resources import Json, sidecar_node

FAILURES_TO_DROP = 3  # as daemon/health.py: failed checks in a row before a pod is unhealthy
EXEC_ALLOWANCE_MS = 3000  # tcp health checks: the engine's exec of the probe, beyond the app
POD_MOUNT = "/devmesh"  # bootstrap.json and admin.sock inside the sidecar / gateway
XDS_MOUNT = "/devmesh-xds"  # the directory holding the daemon's xds.sock (a directory, so a
#                             restarted daemon's new socket file is seen without recreation)
XDS_SOCKET = f"{XDS_MOUNT}/xds.sock"
STATSD_SOCKET = f"{XDS_MOUNT}/{tracing.STATSD_SOCKET_NAME}"  # the daemon's StatsD relay
ENVOY_BINARY = "/usr/local/bin/envoy"
GUARD_IMAGE = "devmesh/netguard:1"  # built by adapters/images.py from templates/netguard
GUARD_RULES = "/guard.rules"  # where the guard reads its rules (bind-mounted, read-only)
GUARD_BINARY = "/sbin/xtables-multi"  # templates/netguard: the host's iptables, its argv[1]
# Transport tcp: nothing of the host's is mounted. Files go in by put-archive into an
# anonymous volume (a read-only root filesystem takes none) before the container starts;
# Envoy's admin socket goes in a tmpfs of the proxy's own (the volume is root's).
ADMIN_DIR = "/devmesh-admin"
GUARD_DIR = "/devmesh-guard"
ADMIN_TMPFS = "rw,noexec,nosuid,size=1m,mode=1777"  # seen by the proxy's container alone
PROBE_BINARY = "/probe"  # in the tcp pause image (templates/pause/probe.c): the HEALTHCHECK


def stable_hash(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """A Docker HEALTHCHECK (transport tcp): the engine runs `test` in the container and
    reports each change of its status as an event."""

    test: tuple[str, ...]
    interval_ms: int
    timeout_ms: int
    retries: int


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    name: str
    role: str  # pod | app | sidecar | gateway
    image: str  # an image id where known, so a rebuilt tag counts as a change
    labels: tuple[tuple[str, str], ...]
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    network: str | None = None  # joins this network (namespace owners and the gateway)
    network_mode: str | None = None  # "container:NAME" for app and sidecar
    dns: tuple[str, ...] = ()
    ports: tuple[tuple[int, str, int], ...] = ()  # (container port, host ip, host port)
    binds: tuple[tuple[str, str, str], ...] = ()  # (host path, container path, mode)
    restart: str = "unless-stopped"
    init: bool = False
    # Privileges (see PROXY, PAUSE and _app_security). None / empty: Docker's default.
    user: str | None = None  # "UID:GID"
    cap_drop: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    read_only: bool = False  # the root filesystem; binds and tmpfs stay writable
    tmpfs: tuple[tuple[str, str], ...] = ()  # (container path, mount options)
    pids_limit: int | None = None
    mem_limit: str | None = None  # "256m"
    sysctls: tuple[tuple[str, str], ...] = ()
    files: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # host path, text
    # Transport tcp (none of these is set for unix):
    # (container path, text), put into the created container before it starts
    archive: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    volumes: tuple[str, ...] = ()  # anonymous volumes' container paths (removed with it)
    extra_hosts: tuple[tuple[str, str], ...] = ()  # Docker's /etc/hosts: name -> address
    healthcheck: HealthCheck | None = None

    @property
    def config_hash(self) -> str:
        data = asdict(self)
        data.pop("name")
        data["files"] = [(path, stable_hash(text)) for path, text in self.files]
        data["archive"] = [(path, stable_hash(text)) for path, text in self.archive]
        for key in ("archive", "volumes", "extra_hosts", "healthcheck"):
            if not data[key]:
                del data[key]  # unix pods keep the hash they had before these existed
        return stable_hash(data)

    def all_labels(self) -> dict[str, str]:
        return {**dict(self.labels), labels.CONFIG_HASH: self.config_hash}


@dataclass(frozen=True, slots=True)
class PodSpec:
    name: str
    service: str
    version: str
    replica: int
    pause: ContainerSpec
    app: ContainerSpec
    sidecar: ContainerSpec
    # Run once in the pod's namespace after `pause` starts and before `app` does: closes
    # every port but the sidecar's to the network (guard_rules). Not kept running.
    guard: ContainerSpec
    generation: int = 0
    guarded: bool = True  # False: the guard is not run (DEVMESH_GUARD=off)

    @property
    def slot(self) -> tuple[str, str, int]:
        """The replica this pod is one generation of: (service, version, replica)."""
        return (self.service, self.version, self.replica)

    @property
    def node_id(self) -> str:
        return self.sidecar.name

    @property
    def containers(self) -> tuple[ContainerSpec, ContainerSpec, ContainerSpec]:
        return (self.pause, self.app, self.sidecar)


@dataclass(frozen=True, slots=True)
class Desired:
    project: str
    network: str
    pods: tuple[PodSpec, ...]
    gateway: ContainerSpec | None
    # (service, version) that cannot run now, and why (e.g. its image is missing). Their
    # existing pods are left as they are.
    failed: Mapping[tuple[str, str], str]


PROXY_UID = 1337  # the proxies' user under a root daemon (Istio's sidecar uid)


def proxy_user(uid: int, gid: int) -> str:
    """Who sidecars and the gateway run as, given the daemon's user: never root.

    Each proxy connects to the daemon's xds.sock (0600) and the daemon reads the proxy's
    admin.sock (0600). A daemon started as a normal user runs them as that same user, so
    both ends are one user and need neither wider modes nor chown. A root daemon runs them
    as PROXY_UID: the xDS server hands its socket to that uid and the engine hands it each
    proxy's pod directory; root reads their admin sockets whatever the owner.
    """
    if uid == 0:
        return f"{PROXY_UID}:{PROXY_UID}"
    return f"{uid}:{gid}"


@dataclass(frozen=True, slots=True)
class Inputs:
    """What the daemon resolved before planning."""

    project: str
    state_dir: str  # host path of the per-mesh state directory
    envoy_image: str
    pause_image: str
    app_images: Mapping[tuple[str, str], str]  # (service, version) -> image id
    failed: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # "UID:GID" of sidecars and the gateway: proxy_user() of the daemon's user (the daemon
    # asks the OS; this module does no I/O). Nobody's, where a caller does not say.
    proxy_user: str = "65534:65534"
    # (service, version, replica) -> the generation its pod is made as (0 where not given).
    # A roll asks for the next one: a new pod under a new name beside the old (plan/roll.py).
    generations: Mapping[tuple[str, str, int], int] = field(default_factory=dict)
    guard_image: str = GUARD_IMAGE  # an image id where known (adapters/images.py)
    # The mesh network's gateway address: where the host's connections to a pod come from
    # (the daemon's health probes). None: not known, and then nothing but the sidecar's
    # ports is open to it either.
    host: str | None = None
    # False (DEVMESH_GUARD=off): pods get no firewall guard; for an engine that gives no
    # NET_ADMIN (rootless, userns-remapped). Their owner's label says so: switching makes new pods.
    guard: bool = True
    # How the pods reach the daemon (core/transport.py); with tcp, where and with what token.
    transport: Transport = Transport.UNIX
    xds_tcp: XdsTcp | None = None


def network_name(project: str) -> str:
    return f"devmesh-{project}"


def pod_name(project: str, service: str, version: str, replica: int, generation: int = 0) -> str:
    """A replica's first pod keeps the plain name; each roll's pod gets `-gN`: old and new
    run side by side while a roll drains the old one, so their names must differ."""
    base = f"{project}-{service}-{version}-{replica}"
    return base if generation == 0 else f"{base}-g{generation}"


def gateway_name(project: str) -> str:
    return f"{project}-gateway"


def pod_key(name: str) -> str:
    """A pod's directory name: short and fixed, so socket paths stay under the UNIX limit."""
    return hashlib.sha256(name.encode()).hexdigest()[:12]


def pod_dir(state_dir: str, name: str) -> str:
    return f"{state_dir}/pods/{pod_key(name)}"


def hosts_file(state_dir: str, name: str) -> str:
    return f"{pod_dir(state_dir, name)}/hosts"


def hosts_text(mesh: Mesh, service: Service, pod: str) -> str:
    """The pod's /etc/hosts: each reachable service name -> its sidecar listener address.

    Bind-mounted, not baked in (Docker's extra_hosts): the daemon rewrites it in place when
    `calls` change, so a pod is not recreated for a routing change.
    """
    addresses = service_addresses(s.name for s in mesh.services)
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"127.0.0.1\t{pod}",
    ]
    lines += [f"{addresses[u.name]}\t{u.name}" for u in mesh.upstreams(service)]
    return "\n".join(lines) + "\n"


def _labels(project: str, role: str, ident: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Every label of a container; `ident` maps label names (of `devmesh.labels`) to values."""
    out = {labels.MANAGED: "1", labels.MESH: project, labels.ROLE: role, **ident}
    return tuple(sorted(out.items()))


# Every sidecar's and the gateway's Envoy flags; the benchmarks' peers run with the same.
# `--drain-strategy immediate`: a live change that replaces a listener's filter chains (access
# logs, tracing, RBAC from `calls:`, a TLS mode) drains the old chains' connections. With
# Envoy's default (gradual) strategy, Envoy 1.40 answered no request on them with
# `Connection: close` in that second (downstream_cx_drain_close 0) and then closed them under
# requests in flight: 503s between sidecars and dropped client connections at the ingress
# (reproduced with a bare Envoy and a file-LDS update: 18 of 2,311 requests lost over 6
# updates; immediate: 0 lost, 18 closed gracefully). Immediate closes each such connection
# after its next response, so callers move to the new chains with nothing in flight.
SIDECAR_FLAGS = (
    "--concurrency",
    "1",
    "--disable-hot-restart",
    "--drain-time-s",
    "1",
    "--drain-strategy",
    "immediate",
    "--log-level",
    "warning",
)


# What every sidecar and the gateway may do: listen and connect, nothing else. No capability
# is kept, not even NET_BIND_SERVICE for the port-80 listeners: the pod's namespace lets any
# user bind low ports (PAUSE's sysctl). Envoy writes nothing but its admin socket, in the
# bind-mounted pod directory, so the root filesystem is read-only with no tmpfs at all.
# Envoy with --concurrency 1 runs about 15 threads and 65 MiB with 30 clusters (measured).
PROXY_HARDENING: dict[str, Any] = {
    "cap_drop": ("ALL",),
    "security_opt": ("no-new-privileges",),
    "read_only": True,
    "pids_limit": 128,
}
SIDECAR_MEMORY = "256m"
GATEWAY_MEMORY = "512m"  # a cluster per version of every service

# The pod's namespace owner runs one static binary that only waits for signals: no user,
# no capability, no writable file, a few MiB. It owns the network namespace, so it sets
# the namespace's sysctls: ports below 1024 for every user, so the sidecar binds
# `catalog:80` without CAP_NET_BIND_SERVICE (Docker 20.10 sets this by default too; here
# it is explicit, for engines that do not).
PAUSE_HARDENING: dict[str, Any] = {
    "user": "65535:65535",  # the user Kubernetes' pause image runs as
    "cap_drop": ("ALL",),
    "security_opt": ("no-new-privileges",),
    "read_only": True,
    "pids_limit": 8,
    "mem_limit": "32m",
    "sysctls": (("net.ipv4.ip_unprivileged_port_start", "0"),),
}


# The guard: the host's iptables in a FROM-scratch image (templates/netguard), joined to
# the pod's namespace with NET_ADMIN alone, for the few hundred milliseconds it takes to
# load the rules. Nothing in the pod keeps NET_ADMIN, so nothing in it can undo them.
GUARD_HARDENING: dict[str, Any] = {
    "user": "0:0",  # root in the container, but with NET_ADMIN as its only capability
    "cap_drop": ("ALL",),
    "cap_add": ("NET_ADMIN",),
    "security_opt": ("no-new-privileges",),
    "read_only": True,
    "pids_limit": 8,
    "mem_limit": "32m",
    "restart": "no",
}


def guard_rules(host: str | None) -> str:
    """The pod's inbound firewall, as `iptables-restore` input: no way around the sidecar.

    From the network, a new connection is accepted only on the sidecar's ports (the
    reserved range, where an app may not listen: validation checks it); the app's port and
    any other an app opens are refused (TCP reset, so a client fails at once, not after a
    timeout). Exempt: the pod itself (loopback: the sidecar reaching its app), replies to
    connections the pod opened, and the host (`host`: the daemon's health probes go
    straight to the app). IPv4 only: Docker turns IPv6 off in the namespace of a container
    on a network without it, and devmesh makes its networks without it. Only the filter
    table is replaced, so Docker's own NAT rules in the namespace stay as they are.
    """
    first, last = RESERVED_PORTS.start, RESERVED_PORTS.stop - 1
    lines = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        "-A INPUT -i lo -j ACCEPT",
        "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
    ]
    if host is not None:
        lines.append(f"-A INPUT -s {host}/32 -j ACCEPT")
    lines += [
        f"-A INPUT -p tcp -m tcp --dport {first}:{last} -j ACCEPT",
        "-A INPUT -p tcp -j REJECT --reject-with tcp-reset",
        "-A INPUT -p udp -j REJECT --reject-with icmp-port-unreachable",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def guard_file(state_dir: str, name: str) -> str:
    return f"{pod_dir(state_dir, name)}/guard.rules"


def _guard(inputs: Inputs, name: str, ident: dict[str, str]) -> ContainerSpec:
    rules = guard_file(inputs.state_dir, name)
    if inputs.transport is Transport.TCP:
        return ContainerSpec(
            name=f"{name}-guard",
            role="guard",
            image=inputs.guard_image,
            labels=_labels(inputs.project, "guard", ident),
            entrypoint=(GUARD_BINARY,),
            command=("iptables-restore", f"{GUARD_DIR}/guard.rules"),
            network_mode=f"container:{name}",
            volumes=(GUARD_DIR,),
            archive=((f"{GUARD_DIR}/guard.rules", guard_rules(None)),),
            **GUARD_HARDENING,
        )
    return ContainerSpec(
        name=f"{name}-guard",
        role="guard",
        image=inputs.guard_image,
        labels=_labels(inputs.project, "guard", ident),
        entrypoint=(GUARD_BINARY,),
        command=("iptables-restore", GUARD_RULES),
        network_mode=f"container:{name}",
        binds=((rules, GUARD_RULES, "ro"),),
        files=((rules, guard_rules(inputs.host)),),
        **GUARD_HARDENING,
    )


def _app_security(service: Service) -> dict[str, Any]:
    """An app keeps its image's user and Docker's default capabilities (it may need them),
    but a setuid program in it cannot gain privileges unless the mesh file says so."""
    if service.security.no_new_privileges:
        return {"security_opt": ("no-new-privileges",)}
    return {}


def _envoy_command() -> tuple[str, ...]:
    return ("-c", f"{POD_MOUNT}/bootstrap.json", *SIDECAR_FLAGS)


def _bootstrap_file(
    mesh: Mesh, state_dir: str, pod: str, node_id: str, cluster: str
) -> tuple[str, str]:
    bootstrap: Json = ads_bootstrap(
        node_id,
        cluster,
        XDS_SOCKET,
        f"{POD_MOUNT}/admin.sock",
        tracing.stats_sinks(mesh, STATSD_SOCKET),
        tracing.runtime(mesh),
    )
    return (f"{pod_dir(state_dir, pod)}/bootstrap.json", json.dumps(bootstrap, indent=1))


def _proxy_files(
    mesh: Mesh, inputs: Inputs, pod: str, node_id: str, cluster: str
) -> dict[str, Any]:
    """How a sidecar or the gateway gets its bootstrap: a bind-mounted file (unix), or
    put into a volume of its own (tcp; the admin socket in a tmpfs, the stats pushed)."""
    if inputs.transport is Transport.UNIX:
        return {
            "binds": _proxy_binds(inputs, pod),
            "files": (_bootstrap_file(mesh, inputs.state_dir, pod, node_id, cluster),),
        }
    assert inputs.xds_tcp is not None, "transport tcp needs the daemon's address and token"
    bootstrap = ads_bootstrap(
        node_id,
        cluster,
        "",
        f"{ADMIN_DIR}/admin.sock",
        (),  # StatsD relays through a host socket: not with tcp (docs/architecture.md)
        tracing.runtime(mesh),
        tcp=inputs.xds_tcp,
    )
    return {
        "volumes": (POD_MOUNT,),
        "tmpfs": ((ADMIN_DIR, ADMIN_TMPFS),),
        "archive": ((f"{POD_MOUNT}/bootstrap.json", json.dumps(bootstrap, indent=1)),),
        "extra_hosts": _gateway_host(inputs),
    }


def _gateway_host(inputs: Inputs) -> tuple[tuple[str, str], ...]:
    """Transport tcp: the host as the pods reach it (Docker's `host-gateway`), when the
    bootstrap dials it by name."""
    if inputs.xds_tcp is not None and inputs.xds_tcp.host == HOST_GATEWAY:
        return ((HOST_GATEWAY, "host-gateway"),)
    return ()


def health_check(health: Health | None, port: int) -> HealthCheck:
    """Transport tcp: the app's health, checked by the engine inside the pod (the host
    cannot reach a remote engine's container addresses). The pause image's probe: a TCP
    connect to the app's port, or a GET of the path (2xx and 3xx healthy, as the host's
    probes). Unhealthy after FAILURES_TO_DROP failures in a row, as the host's probes."""
    interval = health.interval_ms if health else HEALTH_INTERVAL_MS
    timeout = health.timeout_ms if health else HEALTH_TIMEOUT_MS
    test = [PROBE_BINARY, f"-t{timeout}", str(port)]
    if health is not None and health.path is not None:
        test.append(health.path)
    # Docker runs the first check one interval after the start: readiness waits for it,
    # so no more than a second (Docker 20.10 has no faster start interval). The app has
    # `timeout` to answer (the probe's own); the engine's exec of the probe takes its own
    # time on top (0.1-0.6 s measured on a loaded machine, and all checks failed at once
    # when the exec counted against the app's 1 s), hence Docker's timeout is longer.
    return HealthCheck(
        tuple(test), min(interval, 1000), timeout + EXEC_ALLOWANCE_MS, FAILURES_TO_DROP
    )


def _pod(mesh: Mesh, inputs: Inputs, service: Service, version: Version, replica: int) -> PodSpec:
    project = inputs.project
    generation = inputs.generations.get((service.name, version.name, replica), 0)
    name = pod_name(project, service.name, version.name, replica, generation)
    ident = {
        labels.SERVICE: service.name,
        labels.VERSION: version.name,
        labels.REPLICA: str(replica),
        labels.POD: name,
    }
    if generation:  # absent on a first pod: pods made before rolls existed keep their hash
        ident[labels.GENERATION] = str(generation)
    guard = _guard(inputs, name, ident)
    tcp = inputs.transport is Transport.TCP
    pause = ContainerSpec(
        name=name,
        role="pod",
        image=inputs.pause_image,
        # The guard's hash: rules that change (another host address, another image) make a
        # new pod, whose namespace gets them before its app starts.
        labels=_labels(
            project, "pod", {**ident, labels.GUARD: guard.config_hash if inputs.guard else "off"}
        ),
        # Never restarted in place: a restarted owner has a new namespace and its members
        # would be cut off. A dead owner makes the daemon replace the pod whole.
        restart="no",
        network=network_name(project),
        # Service names resolve through the pod's hosts file, to the sidecar; nothing else
        # resolves at all, so no lookup leaves the machine through Docker's DNS forwarding.
        dns=("127.0.0.1",),
        **_pod_hosts(mesh, inputs, service, name),
        **PAUSE_HARDENING,
    )
    env = {
        **dict(version.env),
        "DEVMESH_MESH": mesh.name,
        "DEVMESH_SERVICE": service.name,
        "DEVMESH_VERSION": version.name,
        "DEVMESH_PORT": str(service.port),
        "DEVMESH_POD": name,
    }
    if version.host is None:
        app = _app(inputs, service, version, name, ident, env, tcp)
    else:
        app = _host_stand_in(inputs, service, version, name, ident)
    sidecar_name = f"{name}-sidecar"
    cluster = sidecar_node(mesh, service.name, version.name)
    sidecar = ContainerSpec(
        name=sidecar_name,
        role="sidecar",
        image=inputs.envoy_image,
        labels=_labels(project, "sidecar", ident),
        entrypoint=(ENVOY_BINARY,),
        command=_envoy_command(),
        network_mode=f"container:{name}",
        **{
            k: v
            for k, v in _proxy_files(mesh, inputs, name, sidecar_name, cluster).items()
            if k != "extra_hosts"
        },  # the pod's hosts are its owner's
        user=inputs.proxy_user,
        mem_limit=SIDECAR_MEMORY,
        **PROXY_HARDENING,
    )
    return PodSpec(
        name,
        service.name,
        version.name,
        replica,
        pause,
        app,
        sidecar,
        guard,
        generation,
        guarded=inputs.guard,
    )


def _app(
    inputs: Inputs,
    service: Service,
    version: Version,
    name: str,
    ident: dict[str, str],
    env: dict[str, str],
    tcp: bool = False,
) -> ContainerSpec:
    # tcp: the pod's /etc/hosts is Docker's, its owner's (shared by the pod)
    hosts = () if tcp else ((hosts_file(inputs.state_dir, name), "/etc/hosts", "ro"),)
    return ContainerSpec(
        name=f"{name}-app",
        role="app",
        image=inputs.app_images[(service.name, version.name)],
        labels=_labels(inputs.project, "app", ident),
        command=version.command,
        env=tuple(sorted(env.items())),
        network_mode=f"container:{name}",
        binds=hosts,
        # An init as PID 1: a shell or busybox server there ignores SIGTERM, and every stop
        # (a rolled pod, an engine restart) then waited Docker's 10 s for the SIGKILL.
        init=True,
        **_app_security(service),
    )


def _host_stand_in(
    inputs: Inputs, service: Service, version: Version, name: str, ident: dict[str, str]
) -> ContainerSpec:
    """A version running on the host: this container only holds the app's place in the pod
    (the pause binary, locked down like the owner; `Inputs.app_images` names the pause
    image for it). The sidecar's `_app` is the host process, reached through the daemon's
    relay on the mesh network's gateway address (envoy/resources.py, adapters/relay.py)."""
    return ContainerSpec(
        name=f"{name}-app",
        role="app",
        image=inputs.app_images[(service.name, version.name)],
        labels=_labels(inputs.project, "app", ident),
        network_mode=f"container:{name}",
        **{k: v for k, v in PAUSE_HARDENING.items() if k != "sysctls"},  # the owner's alone
    )


def _pod_hosts(mesh: Mesh, inputs: Inputs, service: Service, name: str) -> dict[str, Any]:
    """The pod's /etc/hosts. unix: the daemon's file, bind-mounted and rewritten in place.
    tcp: Docker's, from extra_hosts (a file put into a container is hidden under the one
    Docker mounts at /etc/hosts when it starts, and a mount point cannot be replaced by
    put-archive), so a change of `calls` makes new pods (a roll); and the HEALTHCHECK."""
    if inputs.transport is Transport.UNIX:
        return {"binds": ((hosts_file(inputs.state_dir, name), "/etc/hosts", "ro"),)}
    addresses = service_addresses(s.name for s in mesh.services)
    hosts = tuple((u.name, addresses[u.name]) for u in mesh.upstreams(service))
    return {
        "extra_hosts": hosts + _gateway_host(inputs),
        "healthcheck": health_check(service.health, service.port),
    }


def _proxy_binds(inputs: Inputs, name: str) -> tuple[tuple[str, str, str], ...]:
    return (
        (pod_dir(inputs.state_dir, name), POD_MOUNT, "rw"),  # Envoy creates admin.sock here
        # Read-only: connecting to a UNIX socket needs write permission on the socket
        # alone, which a read-only mount does not take away; removing or replacing the
        # daemon's socket does need the mount writable.
        (f"{inputs.state_dir}/xds", XDS_MOUNT, "ro"),
    )


def desired(mesh: Mesh, inputs: Inputs) -> Desired:
    pods = []
    for service in mesh.services:
        for version in service.versions:
            if (service.name, version.name) not in inputs.app_images:
                continue  # failed: see inputs.failed
            for replica in range(version.replicas):
                pods.append(_pod(mesh, inputs, service, version, replica))
    gateway = None
    if mesh.has_gateway:
        name = gateway_name(inputs.project)
        hops = gateway_hop_ports(len(mesh.gateway_services()))
        ports = [(port, "127.0.0.1", 0) for port in hops]  # spares too: see the function
        if mesh.ingress is not None:
            ports.insert(0, (GATEWAY_PORT, mesh.ingress.host, mesh.ingress.port))
        gateway = ContainerSpec(
            name=name,
            role="gateway",
            image=inputs.envoy_image,
            labels=_labels(inputs.project, "gateway", {labels.POD: name}),
            entrypoint=(ENVOY_BINARY,),
            command=_envoy_command(),
            network=network_name(inputs.project),
            dns=("127.0.0.1",),
            ports=tuple(ports),  # host port 0: any free one, read back from Docker
            **_proxy_files(mesh, inputs, name, name, gateway_group(mesh)),
            user=inputs.proxy_user,
            mem_limit=GATEWAY_MEMORY,
            **PROXY_HARDENING,
        )
    return Desired(
        project=inputs.project,
        network=network_name(inputs.project),
        pods=tuple(pods),
        gateway=gateway,
        failed=dict(inputs.failed),
    )
