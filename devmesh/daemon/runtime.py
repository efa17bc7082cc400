"""The daemon: one per mesh instance. It builds its parts and starts and stops them; what
it does is the loop's (`controller.py`), whose state no other thread writes.

Threads (docs/architecture.md has the picture):
- loop: the one owner of state; consumes the command queue (controller.Controller);
- watch: the mesh source reads and validates each save, then enqueues it;
- health: probes the apps, enqueues health changes;
- events: Docker's container events, enqueued as deaths;
- api: one thread per API connection (reads the loop's view; changes go through the loop);
- xDS: grpc.aio's event loop thread, a coroutine per sidecar stream, serving the cache.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from devmesh import labels
from devmesh.adapters.access_log_service import AccessLogService
from devmesh.adapters.engine import Engine
from devmesh.adapters.envoy_admin import StatsReader, StatsSource
from devmesh.adapters.images import ImageResolver, prune_built
from devmesh.adapters.metrics_service import PushedStats
from devmesh.adapters.tlsfiles import TlsFileError, ingress_problems
from devmesh.adapters.xds_cache import NodeEvent, SnapshotCache
from devmesh.adapters.xds_server import TcpListen, XdsServer
from devmesh.api.types import EventKind, Severity
from devmesh.core.engines import PODMAN_HOST, EngineKind
from devmesh.core.model import Mesh
from devmesh.core.problems import MeshError
from devmesh.core.transport import (
    HOST_GATEWAY,
    XDS_ADDRESS_ENV,
    Transport,
    TransportError,
    parse_address,
)
from devmesh.daemon.accesslog import AccessLog, Directory, directory_of
from devmesh.daemon.api import ApiServer
from devmesh.daemon.controller import (
    Acked,
    ContainerDied,
    Controller,
    Resample,
    Tick,
    port_busy,
)
from devmesh.daemon.eventlog import EventLog
from devmesh.daemon.handlers import Handlers
from devmesh.daemon.health import EngineHealth
from devmesh.daemon.logfollow import Which, follow_ticking
from devmesh.daemon.logtail import LogTails
from devmesh.daemon.metrics import MetricsServer
from devmesh.daemon.metrics import render as render_metrics
from devmesh.daemon.state import StateDir
from devmesh.daemon.tracing import Telemetry
from devmesh.envoy.bootstrap import XdsTcp
from devmesh.plan.desired import network_name
from devmesh.plan.effective import effective

# Transport tcp: where the daemon listens. `loopback` (the default): 127.0.0.1, which Docker
# Desktop's `host.docker.internal` (and the test suite's remote engine) forward to. `mesh`:
# the mesh network's own gateway address, which the pods reach on a local engine (the
# engine's `host-gateway` is docker0 there, not loopback); never any other address.
XDS_LISTEN_ENV = "DEVMESH_XDS_LISTEN"

log = logging.getLogger("devmesh.daemon")


class DaemonRunning(MeshError):
    pass


class Daemon:
    def __init__(
        self,
        mesh_file: Path,
        mesh: Mesh,
        project: str,
        engine: Engine,
        state: StateDir,
        ingress_port: int | None = None,
        transport: Transport = Transport.UNIX,
        transport_why: str = "",
    ) -> None:
        self.transport = transport
        self.transport_why = transport_why
        self.mesh_file = mesh_file
        self.project = project
        self.engine = engine
        self.state = state
        self.ingress_port = ingress_port
        self.events = EventLog()
        self._directory_for: object = None
        self.metrics_port: int | None = None  # `up --metrics-port`; None: the mesh file's
        self._metrics: MetricsServer | None = None
        self._metrics_lock = threading.Lock()  # the sweep moves it; stop ends it
        self._metrics_refused: int | None = None  # a port asked for and in use: said once
        self._directory_cache = Directory()
        # every request every Envoy saw (daemon/accesslog.py), on the xDS socket too
        self.access = AccessLog(self._directory)
        self.access_service = AccessLogService(self.access.offer)
        # spans and sinks; the collector shares the xDS server's socket
        self.telemetry = Telemetry(
            lambda: self.controller.view.served,
            state.xds_dir,
            lambda text: self.events.add(EventKind.DAEMON, text, "", Severity.ERROR),
        )
        tcp = transport is Transport.TCP
        # tcp: the Envoys push their stats (their admin sockets are out of the host's reach)
        self._pushed = PushedStats() if tcp else None
        services = [self.telemetry.collector.register, self.access_service.register]
        if self._pushed is not None:
            services.append(self._pushed.register)
        self.xds = XdsServer(state.xds_socket, cache=SnapshotCache(self._on_xds), services=services)
        self.engine_health = EngineHealth() if tcp else None
        self.images = ImageResolver(engine.client, project, self._note_image)
        self.images.tcp = tcp
        self.controller = Controller(
            mesh_file,
            mesh,
            project,
            engine,
            self.images,
            self.xds,
            state,
            self.events,
            ingress_port,
            engine_health=self.engine_health,
        )
        self.controller.sampling = lambda: self.telemetry.chosen
        self._stats: StatsSource = self._pushed if self._pushed is not None else StatsReader()
        self._log_tails = LogTails(
            engine.follow_logs, lambda name, n: engine.logs(name, follow=False, tail=n)
        )
        self.handlers = Handlers(
            self.controller,
            self.xds,
            state,
            self.events,
            self._stats,
            self._log_tails,
            lambda req, stop: follow_ticking(
                engine, project, Which(req.service, req.proxy, req.timestamps), req.tail, stop
            ),
            self.request_stop,
        )
        self.handlers.telemetry = self.telemetry
        self.handlers.transport = transport.value
        self.handlers.access = self.access
        self._api: ApiServer | None = None
        self._stop = threading.Event()
        self._lock_handle: IO[str] | None = None
        self.phase = "starting"

    def _on_xds(self, event: NodeEvent) -> None:
        if event.kind == "nack":
            self.events.add(
                EventKind.PUSH, f"config NACKed: {event.detail}", event.node_id, Severity.ERROR
            )
        elif event.kind == "connected":
            self.events.add(EventKind.PUSH, "connected to the control plane", event.node_id)
        elif event.kind == "configured":
            self.controller.submit(Acked())  # a healthy pod may wait for it to serve
        else:
            self.events.add(
                EventKind.PUSH,
                "disconnected from the control plane",
                event.node_id,
                Severity.WARNING,
            )

    def _metrics_port_wanted(self) -> int | None:
        """The flag's port, else the mesh file's; None: no /metrics."""
        return self.metrics_port or self.controller.view.mesh.observability.metrics_port

    def _start_metrics(self) -> None:
        """Prometheus /metrics on 127.0.0.1, when the flag or the mesh file asks for it."""
        port = self._metrics_port_wanted()
        if not port:
            return
        server = MetricsServer(port, self._scrape)
        server.start()  # MeshError when the port is taken
        self._metrics = server
        self.handlers.metrics_url = server.url

    def _sync_metrics(self) -> None:
        """The sweep's: /metrics follows the mesh file's `observability.metrics.port` (the
        flag, when given, wins). The new port is bound before the old one is let go: a port
        in use is an event and the old one serves on."""
        want = self._metrics_port_wanted()
        with self._metrics_lock:
            old = self._metrics
            if self._stop.is_set() or (old.port if old else None) == want:
                self._metrics_refused = None
                return
            server = None
            if want:
                server = MetricsServer(want, self._scrape)
                try:
                    server.start()
                except MeshError as exc:  # tried again each second; said once a port
                    if want != self._metrics_refused:
                        self._metrics_refused = want
                        kept = f"; /metrics stays on {old.url}" if old else ""
                        self.events.add(EventKind.DAEMON, f"{exc}{kept}", "", Severity.ERROR)
                    return
            self._metrics, self._metrics_refused = server, None
            self.handlers.metrics_url = server.url if server else None
            if old is not None:
                old.stop()
        self.events.add(
            EventKind.DAEMON,
            f"/metrics now on {server.url}" if server else "/metrics no longer served",
        )

    def _scrape(self) -> str:
        return render_metrics(self.handlers.stats(), self.handlers.state(), self.access.counters())

    def _directory(self) -> Directory:
        """Who is who, for the access log; made again only when the loop's view changed."""
        view = self.controller.view
        if self._directory_for is not view:
            self._directory_cache = directory_of(view.desired, view.infos, view.mesh)
            self._directory_for = view
        return self._directory_cache

    def _note_image(self, text: str) -> None:
        self.events.add(EventKind.IMAGE, text)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Take the lock, start the control plane and the API, bring the mesh up once."""
        self._lock_handle = self.state.acquire()
        if self._lock_handle is None:
            raise DaemonRunning(
                f"a daemon already runs for mesh '{self.project}' (pid {self.state.daemon_pid()})"
            )
        self._preflight()
        self._start_metrics()  # a port in use stops the start here, before anything runs
        if self.transport is Transport.TCP:
            self._start_tcp()
        else:
            self.xds.start()
        self.telemetry.sync(None)  # the StatsD relay's socket exists before any sidecar starts
        self._api = ApiServer(self.state.api_socket, self.handlers.endpoints())
        self._api.start()
        self.events.add(
            EventKind.DAEMON,
            f"daemon {os.getpid()} for mesh '{self.project}' from {self.mesh_file}",
        )
        if self.engine_health is not None:  # health changes during the first pass count
            threading.Thread(target=self._events_loop, name="events", daemon=True).start()
        self.controller.start()
        self.handlers.sidecar_image = str(self.images.envoy) if self.images.envoy else None
        self.phase = "serving"
        if self.engine_health is None:
            threading.Thread(target=self._events_loop, name="events", daemon=True).start()
        threading.Thread(target=self._sweep_loop, name="logtails", daemon=True).start()

    def _start_tcp(self) -> None:
        """Transport tcp: the xDS server on TCP too, with the mesh's token; the pods are
        told where to dial it (DEVMESH_XDS_ADDRESS, else host.docker.internal)."""
        listen = os.environ.get(XDS_LISTEN_ENV, "loopback").strip() or "loopback"
        if listen == "loopback":
            host = "127.0.0.1"
        elif listen == "mesh":
            network = network_name(self.project)
            self.engine.ensure_network(network, self.project)
            gateway = self.engine.network_gateway(network)
            if gateway is None:
                raise TransportError(f"{XDS_LISTEN_ENV}=mesh: network {network} has no gateway")
            host = gateway
        else:
            raise TransportError(f"{XDS_LISTEN_ENV}={listen!r}: expected 'loopback' or 'mesh'")
        token = self.state.xds_token()
        stored = self.state.stored_xds_port()
        self.xds.tcp = TcpListen(host, stored or 0, token)
        try:
            self.xds.start()
        except MeshError:
            if not stored:
                raise
            self.xds.tcp = TcpListen(host, 0, token)  # the stored port is taken: any other
            self.xds.start()
        port = self.xds.tcp_port or 0
        self.state.store_xds_port(port)
        override = os.environ.get(XDS_ADDRESS_ENV, "").strip()
        if override:
            dial_host, dial_port = parse_address(override)
        elif listen == "mesh":
            dial_host, dial_port = host, port
        else:
            dial_host, dial_port = HOST_GATEWAY, port
            if self.engine.identity().kind is EngineKind.PODMAN:
                # Podman writes the host's name into every container's hosts file itself
                # (and takes `host-gateway` for a name): on a Podman machine (macOS) its
                # gvproxy forwards that name to the host's loopback, as Desktop does.
                dial_host = PODMAN_HOST
        self.controller.reconciler.transport = Transport.TCP
        self.controller.reconciler.xds_tcp = XdsTcp(dial_host, dial_port, token)
        self.handlers.control_plane = f"{dial_host}:{dial_port}"
        self.events.add(
            EventKind.DAEMON,
            f"transport tcp ({self.transport_why}): listening on {host}:{port}, "
            f"pods dial {dial_host}:{dial_port}",
        )

    def wait(self, also: threading.Event | None = None) -> None:
        """Until a stop is requested (the API's shutdown, or `also`: a signal)."""
        while not self._stop.wait(0.2):
            if also is not None and also.is_set():
                return

    def request_stop(self) -> None:
        """Safe anywhere (signal handlers, API threads): the owner then calls stop()."""
        self._stop.set()

    @property
    def started(self) -> bool:
        return self.phase == "serving"

    def stop(self, teardown: bool = False) -> None:
        """Stop serving. With `teardown`, also remove the mesh; only a daemon that came up
        may do that: one that failed to start must not remove what another one runs. Every
        part is stopped even when another fails to (the lock is let go last)."""
        if self.phase == "stopping":
            return
        teardown = teardown and self.phase == "serving"
        self.phase = "stopping"
        self.request_stop()
        try:
            if not self.controller.stop():
                log.warning("a pass under way did not end: the mesh is left as it is")
                teardown = False  # the loop may still act on the engine
            if self._api is not None:
                _quietly("the API", self._api.stop)
            _quietly("the xDS server", lambda: self.xds.stop(grace=0.5))
            _quietly("the stats reader", self._stats.close)
            _quietly("the log tails", self._log_tails.close)
            with self._metrics_lock:
                if self._metrics is not None:
                    _quietly("the metrics server", self._metrics.stop)
            _quietly("the trace forwarder and relays", self.telemetry.close)
            if teardown:
                containers, networks = self.engine.remove_all(self.project)
                prune_built(self.engine.client, self.project, frozenset())
                self.events.add(
                    EventKind.DAEMON, f"removed {containers} containers, {networks} networks"
                )
                self.state.remove()
            elif self._lock_handle is not None:
                self.state.pid_file.unlink(missing_ok=True)
        finally:
            if self._lock_handle is not None:
                self._lock_handle.close()

    def _preflight(self) -> None:
        ingress = effective(self.controller.view.mesh, {}, self.ingress_port).ingress
        if ingress is None:
            return
        problems = ingress_problems(self.controller.view.mesh)
        if problems:  # the user's certificate files: say so before anything starts
            raise TlsFileError(list(problems))
        mine = self.engine.containers(self.project).get(f"{self.project}-gateway")
        if mine is not None and mine.state == "running":
            return  # it is ours, adopted
        if port_busy(ingress):
            raise MeshError(
                f"ingress port {ingress.host}:{ingress.port} is in use by another program; "
                "free it or change ingress.port in the mesh file"
            )

    # -- the threads that only enqueue -------------------------------------------------------

    def _events_loop(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self.engine.events(self.project):
                    if self._stop.is_set():
                        return
                    status = str(event.get("status", ""))
                    if status.startswith("health_status") and self.engine_health is not None:
                        name = event.get("Actor", {}).get("Attributes", {}).get("name", "")
                        self.engine_health.reported(name, status.rpartition(":")[2].strip())
                        self.controller.health.poke()
                        continue
                    if event.get("status") in ("die", "destroy", "oom"):
                        attributes = event.get("Actor", {}).get("Attributes", {})
                        name = attributes.get("name", "?")
                        self.events.add(
                            EventKind.CONTAINER, str(event.get("status")), name, Severity.WARNING
                        )
                        if attributes.get(labels.ROLE) != "guard":  # run once: it is to end
                            self.controller.submit(ContainerDied(name, str(event.get("id", ""))))
            except Exception as exc:  # the engine went away: the loop notices it too
                log.debug("Docker events: %s; retrying", exc)
            self.controller.submit(Tick())  # the stream broke: the loop looks at the engine
            self._stop.wait(1.0)

    def _sync_sinks(self) -> None:
        # The network's gateway address as the loop last saw it (a str, read whole): the
        # X-Ray relay listens there.
        self.telemetry.sync(self.controller.reconciler.host)

    def _adapt_sampling(self) -> None:
        if self.telemetry.adapt(time.monotonic()):
            self.controller.submit(Resample())

    def _sweep_loop(self) -> None:
        while not self._stop.wait(1.0):
            self._log_tails.sweep()
            _quietly("syncing the sinks", self._sync_sinks)
            _quietly("adapting the tracing", self._adapt_sampling)
            _quietly("moving /metrics", self._sync_metrics)


def _quietly(what: str, stop: Callable[[], object]) -> None:
    """Stop one part; a failure is logged, and the others are stopped all the same."""
    try:
        stop()
    except Exception:
        log.exception("stopping %s failed", what)
