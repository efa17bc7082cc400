"""The daemon: one per mesh. Level-triggered: every trigger (start, a reload, a Docker event,
a timer, a health change) re-runs load → desired → observe → plan → apply → publish.

Collaborators are built here and passed in; nothing connects or starts at import time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from devmesh import labels
from devmesh.adapters import images
from devmesh.adapters.engine import ContainerInfo, Engine, EngineError
from devmesh.adapters.envoy_admin import StatsReader
from devmesh.adapters.probe import probe
from devmesh.adapters.watch import FileWatcher
from devmesh.adapters.xds_server import XdsServer
from devmesh.core.addressing import GATEWAY_HOP_BASE
from devmesh.core.edit import pick_route, write_file
from devmesh.core.edit import set_weights as shift_text
from devmesh.core.load import load
from devmesh.core.model import Abort, Delay, Fault, Ingress, Mesh, Service, Version
from devmesh.core.problems import MeshError, MeshInvalid
from devmesh.core.source import read_text
from devmesh.core.summary import mesh_routes_json
from devmesh.daemon.api import ApiServer
from devmesh.daemon.logtail import LogTails
from devmesh.daemon.state import StateDir
from devmesh.envoy.resources import gateway_resources, sidecar_node, sidecar_resources
from devmesh.plan.desired import (
    Desired,
    Inputs,
    PodSpec,
    desired,
    gateway_cluster,
    hosts_file,
    hosts_text,
)
from devmesh.plan.plan import plan

log = logging.getLogger("devmesh.daemon")
RECONCILE_EVERY = 15.0  # seconds, a safety net: Docker events and saves trigger it at once
HEALTH_TICK = 0.25
PUSH_WAIT = 5.0  # seconds an API change waits for the sidecars to ACK it


class DaemonRunning(MeshError):
    pass


@dataclass
class _Health:
    app_id: str  # the app container checked: a new one starts unhealthy
    ok: bool = False
    reason: str = "not checked yet"
    next_at: float = 0.0


class Daemon:
    def __init__(
        self,
        mesh_file: Path,
        mesh: Mesh,
        project: str,
        engine: Engine,
        state: StateDir,
        ingress_port: int | None = None,
    ) -> None:
        self.mesh_file = mesh_file
        self.mesh = mesh  # the file's, as last validated: the source of truth
        self.ingress_port = ingress_port  # -p instances of one file each get their own port
        # Faults set through the API (TUI, tests): applied on top of the file, not written.
        self.overrides: dict[tuple[str, str], Fault | None] = {}
        self.project = project
        self.engine = engine
        self.state = state
        self.xds = XdsServer(state.xds_socket, max_workers=256)
        self.phase = "starting"
        self.problems: list[str] = []  # of the mesh file's last reload that did not validate
        self.apply_errors: list[str] = []
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._stats = StatsReader()
        self._log_tails = LogTails(
            engine.follow_logs, lambda name, n: engine.logs(name, follow=False, tail=n)
        )
        self.failed: dict[tuple[str, str], str] = {}
        self.events: deque[tuple[float, str]] = deque(maxlen=200)
        self.envoy_image: images.ImageChoice | None = None
        self.pause_image: images.ImageChoice | None = None
        self._images: dict[Any, str | MeshError] = {}
        self.start_errors: dict[str, str] = {}  # container -> why it could not be started
        self._failed_passes = 0
        self._desired: Desired | None = None
        self._infos: dict[str, ContainerInfo] = {}
        self._health: dict[str, _Health] = {}
        self._published: set[str] = set()
        self._last_published: tuple[Mesh, dict[tuple[str, str], list[str]]] | None = None
        self._reconcile_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock_handle: IO[str] | None = None
        self._api: ApiServer | None = None
        self._watcher: FileWatcher | None = None
        self._base_dir = str(mesh_file.resolve().parent)
        # Not known yet: the file may change between the caller's load and the watcher's
        # start, so the first look after the watcher starts compares meshes, not bytes.
        self._applied = ""
        self._reported = ""  # digest of the invalid text last reported
        self._pending = ""  # digest of invalid text seen once, given a moment to settle
        self.reloads = 0
        self.reload_failures = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def note(self, text: str) -> None:
        log.info("%s", text)
        self.events.append((time.time(), text))

    def start(self) -> None:
        """Take the lock, start the control plane and the API, bring the mesh up once."""
        self._lock_handle = self.state.acquire()
        if self._lock_handle is None:
            raise DaemonRunning(
                f"a daemon already runs for mesh '{self.project}' (pid {self.state.daemon_pid()})"
            )
        self._preflight()
        self.xds.start()
        self._api = ApiServer(
            self.state.api_socket,
            {
                ("GET", "/v1/state"): lambda _: (200, self.snapshot()),
                ("POST", "/v1/reload"): self._api_reload,
                ("POST", "/v1/shutdown"): lambda _: self._api_shutdown(),
                ("POST", "/v1/shift"): self._api_shift,
                ("GET", "/v1/routes"): lambda _: (200, self.routes_json()),
                ("GET", "/v1/stats"): lambda _: (200, self.stats_json()),
                ("GET", "/v1/events"): lambda _: (200, self.events_json()),
                ("POST", "/v1/fault"): self._api_fault,
                ("POST", "/v1/restart"): self._api_restart,
                ("POST", "/v1/logs"): self._api_logs,
            },
        )
        self._api.start()
        self.note(f"daemon {os.getpid()} for mesh '{self.project}' from {self.mesh_file}")
        client = self.engine.client
        policy = images.pull_policy()
        self.envoy_image = images.ensure_envoy_image(client, None, policy, self.note)
        self.note(f"sidecar image: {self.envoy_image}")
        self.pause_image = images.ensure_pause_image(client, policy, self.note)
        self.reconcile("start")
        self._watcher = FileWatcher(self.mesh_file, self._on_save)
        self._watcher.start()
        self._watcher.poke()  # a save made while starting is not lost
        self.phase = "serving"
        for target, name in (
            (self._health_loop, "health"),
            (self._reconcile_loop, "reconcile"),
            (self._events_loop, "events"),
        ):
            threading.Thread(target=target, name=name, daemon=True).start()

    def wait(self, also: threading.Event | None = None) -> None:
        """Until a stop is requested (the API's shutdown, or `also`: a signal)."""
        while not self._stop.wait(0.2):
            if also is not None and also.is_set():
                return

    def request_stop(self) -> None:
        """Safe anywhere (signal handlers, API threads): the owner then calls stop()."""
        self._stop.set()
        self._wake.set()

    @property
    def started(self) -> bool:
        return self.phase == "serving"

    def stop(self, teardown: bool = False) -> None:
        """Stop serving. With `teardown`, also remove the mesh; only a daemon that came up
        may do that: one that failed to start must not remove what another one runs."""
        if self.phase == "stopping":
            return
        teardown = teardown and self.phase == "serving"
        self.phase = "stopping"
        self.request_stop()
        with self._reconcile_lock:  # let a pass under way finish before letting go
            pass
        if self._watcher is not None:
            self._watcher.stop()
        if self._api is not None:
            self._api.stop()
        self.xds.stop(grace=0.5)
        self._pool.shutdown(wait=False)
        self._stats.close()
        self._log_tails.close()
        if teardown:
            containers, networks = self.engine.remove_all(self.project)
            self.note(f"removed {containers} containers, {networks} networks")
            self.state.remove()
        elif self._lock_handle is not None:
            self.state.pid_file.unlink(missing_ok=True)
        if self._lock_handle is not None:
            self._lock_handle.close()

    def effective(self) -> Mesh:
        """The mesh as served: the file's, with the instance's ingress port and API faults."""
        mesh = self.mesh
        if self.ingress_port is not None and mesh.ingress is not None:
            mesh = dataclasses.replace(
                mesh, ingress=dataclasses.replace(mesh.ingress, port=self.ingress_port)
            )
        if self.overrides:
            services = []
            for service in mesh.services:
                routes = tuple(
                    dataclasses.replace(r, fault=self.overrides[(service.name, r.name)])
                    if (service.name, r.name) in self.overrides
                    else r
                    for r in service.routes
                )
                services.append(dataclasses.replace(service, routes=routes))
            mesh = dataclasses.replace(mesh, services=tuple(services))
        return mesh

    def _preflight(self) -> None:
        ingress = self.effective().ingress
        if ingress is None:
            return
        mine = self.engine.containers(self.project).get(f"{self.project}-gateway")
        if mine is not None and mine.state == "running":
            return  # it is ours, adopted
        if _port_busy(ingress):
            raise MeshError(
                f"ingress port {ingress.host}:{ingress.port} is in use by another program; "
                "free it or change ingress.port in the mesh file"
            )

    # -- API ----------------------------------------------------------------------------------

    def _api_reload(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A second `up`: re-read the file now, rebuild images, reconcile; say what failed."""
        asked = body.get("file")
        if asked and Path(asked).resolve() != self.mesh_file.resolve():
            return 200, {
                "ok": False,
                "problems": [
                    f"the running daemon of '{self.project}' serves {self.mesh_file}, not "
                    f"{asked}; run `devmesh down` first, or give another -p name"
                ],
            }
        try:
            raw = self.mesh_file.read_bytes()
        except OSError as exc:
            return 200, {"ok": False, "problems": [f"{self.mesh_file}: {exc.strerror}"]}
        mesh, problems = self._parse(raw)
        if mesh is None:
            self._report(raw, problems)
            return 200, {"ok": False, "problems": problems}
        self._apply(raw, mesh, "up", rebuild=True)
        failures = [f"{s}/{v}: {r}" for (s, v), r in self.failed.items()]
        failures += [f"{name}: {why}" for name, why in self.start_errors.items()]
        failures += self.apply_errors
        return 200, {"ok": not failures, "problems": failures}

    def _on_save(self) -> None:
        """The watcher saw a save. Valid text applies at once; invalid text is reported only
        if it is still there a moment later (an editor may be halfway through a save)."""
        try:
            raw = self.mesh_file.read_bytes()
        except OSError:
            if self._watcher is not None:
                self._watcher.poke(0.3)  # renamed away mid-save: look again
            return
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self._applied and self.problems:
            # An invalid edit undone: the file is again what serves, and has no problems.
            self.problems, self._reported, self._pending = [], "", ""
            self.note(f"{self.mesh_file}: back to the config that serves; no problems")
            return
        if digest in (self._applied, self._reported):
            return  # no change (an editor touched it, or `shift` wrote what it applied)
        mesh, problems = self._parse(raw)
        if mesh is not None and mesh == self.mesh:
            self._applied = digest  # what already runs (the first look after start)
        elif mesh is not None:
            self._apply(raw, mesh, "save", rebuild=False)
        elif digest != self._pending:
            self._pending = digest
            if self._watcher is not None:
                self._watcher.poke(0.3)
        else:
            self._report(raw, problems)

    def _parse(self, raw: bytes) -> tuple[Mesh | None, list[str]]:
        try:
            mesh = load(read_text(raw, str(self.mesh_file)), str(self.mesh_file), self._base_dir)
        except MeshInvalid as exc:
            return None, [str(p) for p in exc.problems]
        except MeshError as exc:
            return None, [str(exc)]
        if mesh.name != self.mesh.name and self.project == self.mesh.name:
            return None, [
                f"the mesh is now named '{mesh.name}'; "
                f"run `devmesh down` for '{self.mesh.name}' first"
            ]
        old, new = self.mesh.ingress, mesh.ingress
        if self.ingress_port is not None:
            pass  # this instance's port is its own, whatever the file says
        elif new is not None and (old is None or old.port != new.port) and _port_busy(new):
            # Checked before the working gateway is replaced by one that could not start.
            return None, [
                f"{self.mesh_file}: ingress port {new.host}:{new.port} is in use by another "
                "program; the gateway stays where it is"
            ]
        return mesh, []

    def _report(self, raw: bytes, problems: list[str]) -> None:
        """Invalid text: the last good mesh keeps serving; the problems are shown everywhere."""
        self._reported = hashlib.sha256(raw).hexdigest()
        self.problems = problems
        self.reload_failures += 1
        self.note(f"{self.mesh_file}: {len(problems)} problem(s); the last good config serves on")
        for problem in problems:
            log.info("  %s", problem)

    def _apply(self, raw: bytes, mesh: Mesh, why: str, rebuild: bool) -> None:
        started = time.monotonic()
        self._applied = hashlib.sha256(raw).hexdigest()
        self.problems = []
        self.mesh = mesh
        for service, route in list(self.overrides):
            svc = mesh.service(service) if mesh.has_service(service) else None
            if svc is None or route not in {r.name for r in svc.routes}:
                del self.overrides[(service, route)]
        self.reloads += 1
        if rebuild:
            self._images.clear()  # Docker's cache makes an unchanged build quick
        self.reconcile(why)
        self.note(f"{why}: applied in {(time.monotonic() - started) * 1000:.0f} ms")

    def _api_shift(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """New weights for one route: validated, written into the mesh file (comments and
        layout kept), applied at once. The file stays the source of truth."""
        service = body.get("service")
        weights = body.get("weights")
        if not isinstance(service, str) or not isinstance(weights, dict):
            return 400, {"error": "shift needs a service and weights"}
        if self.problems:
            return 409, {"error": "the mesh file has problems; fix them first: " + self.problems[0]}
        with self._reconcile_lock:  # one writer of the file at a time
            try:
                text = self.mesh_file.read_text()
                new_text, route = shift_text(text, self.mesh, service, body.get("route"), weights)
            except (OSError, UnicodeDecodeError) as exc:
                return 500, {"error": f"{self.mesh_file}: {exc}"}
            except MeshError as exc:
                return 400, {"error": str(exc)}
            raw = new_text.encode()
            mesh, problems = self._parse(raw)
            if mesh is None:
                return 400, {"error": "the edited file would not validate: " + problems[0]}
            write_file(self.mesh_file, new_text)
        self._apply(raw, mesh, "shift", rebuild=False)
        return 200, {
            "ok": True,
            "service": service,
            "route": route,
            "weights": weights,
            "synced": self._wait_pushed(),
        }

    def routes_json(self) -> dict[str, Any]:
        out = mesh_routes_json(self.effective())
        for service in out["services"]:
            for route in service["routes"]:
                route["fault_override"] = (service["name"], route["name"]) in self.overrides
        return out

    def _api_fault(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Set (or with neither delay nor abort, clear) a fault on one route, live, without
        touching the file: for the TUI's toggle and tests' `with mesh.fault(...)`."""
        service = body.get("service")
        if not isinstance(service, str) or not self.mesh.has_service(service):
            return 400, {"error": f"no service {service!r} in mesh '{self.mesh.name}'"}
        svc = self.mesh.service(service)
        if not svc.is_http:
            return 400, {"error": f"'{service}' is a tcp service: faults are HTTP"}
        try:
            route = pick_route(svc, body.get("route"))
            fault = _fault_from_json(body)
        except (MeshError, KeyError, TypeError, ValueError) as exc:
            return 400, {"error": f"bad fault: {exc}"}
        key = (service, route.name)
        if fault is None:
            self.overrides.pop(key, None)
        else:
            self.overrides[key] = fault
        self.note(f"fault on {service}/{route.name}: {'cleared' if fault is None else body}")
        with self._reconcile_lock:
            self._publish()
        return 200, {
            "ok": True,
            "service": service,
            "route": route.name,
            "active": fault is not None,
            "synced": self._wait_pushed(),
        }

    def _api_restart(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Restart the app containers of a service, or of one pod (its sidecar stays)."""
        want = self._desired
        pods = list(want.pods) if want else []
        if "pod" in body:
            chosen = [p for p in pods if p.name == body["pod"]]
        else:
            chosen = [p for p in pods if p.service == body.get("service")]
        if not chosen:
            return 404, {"error": f"no pod matches {body}"}
        names = [p.app.name for p in chosen]
        try:
            self.engine.restart(names)
        except MeshError as exc:
            return 500, {"error": str(exc)}
        self.note(f"restarted {', '.join(names)}")
        self._wake.set()
        return 200, {"ok": True, "restarted": names}

    def _api_logs(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The last `tail` lines (1-1000, default 100) of one pod's app log, for the TUI. A
        POST with a JSON body: the API hands handlers the body, not the query string."""
        want = self._desired
        chosen = [p for p in (want.pods if want else ()) if p.name == body.get("pod")]
        if not chosen:
            return 404, {"error": f"no pod {body.get('pod')!r} in mesh '{self.project}'"}
        try:
            tail = max(1, min(int(body.get("tail", 100)), 1000))
        except (TypeError, ValueError):
            return 400, {"error": "tail must be a number"}
        app = self._infos.get(chosen[0].app.name)
        running = app is not None and app.state == "running"
        try:
            lines = self._log_tails.tail(chosen[0].app.name, tail, running)
        except MeshError as exc:
            return 404, {"error": str(exc)}
        return 200, {"pod": chosen[0].name, "lines": lines}

    def stats_json(self) -> dict[str, Any]:
        """Each sidecar's (and the gateway's) request counters, read from its admin socket."""
        want = self._desired
        if want is None:
            return {"time": time.time(), "sidecars": {}}
        names = [p.name for p in want.pods] + ([want.gateway.name] if want.gateway else [])
        read = self._stats.read_many({n: self.state.admin_socket(n) for n in names})
        return {"time": time.time(), "sidecars": read}

    def events_json(self) -> dict[str, Any]:
        return {"events": [{"time": t, "text": text} for t, text in self.events]}

    def _api_shutdown(self) -> tuple[int, dict[str, Any]]:
        self.request_stop()
        return 200, {"ok": True}

    # -- reconcile ----------------------------------------------------------------------------

    def reconcile(self, why: str) -> None:
        with self._reconcile_lock:
            if self._stop.is_set():
                return
            mesh = self.effective()
            inputs = self._inputs(mesh)
            want = desired(mesh, inputs)
            if inputs.failed and self._desired is not None:
                # A version that cannot run its new spec keeps its old pods, serving.
                kept = tuple(
                    p for p in self._desired.pods if (p.service, p.version) in inputs.failed
                )
                want = dataclasses.replace(want, pods=want.pods + kept)
            if want == self._desired and self.phase != "starting":
                # The same containers (a change of routes, weights, faults, calls): push the
                # new config before asking the engine anything. Two or three Engine API
                # round trips come off a save's time to traffic; the pass below still checks
                # the containers and publishes again if they changed.
                self._publish()
            actual, infos = self.engine.look(self.project)
            self._write_hosts(mesh, want)
            todo = plan(want, actual, network_exists=self.engine.network_exists(want.network))
            errors: list[EngineError] = []
            if not todo.empty:
                self.note(f"reconcile ({why}): " + ", ".join(todo.describe()))
                errors = self.engine.apply(todo, self.project, want.network, log.info)
                for error in errors:
                    self.note(f"error: {error.container or 'engine'}: {error}")
                infos = self.engine.containers(self.project)  # what applying changed
            self.start_errors = {e.container: str(e) for e in errors if e.container}
            self._failed_passes = self._failed_passes + 1 if errors else 0
            self.apply_errors = [str(e) for e in errors if not e.container]
            self._desired = want
            self._infos = infos
            if self.phase == "starting":
                self._probe_round()  # adopted pods keep their traffic: no empty first push
            self._publish()

    def _write_hosts(self, mesh: Mesh, want: Desired) -> None:
        for pod in want.pods:
            path = Path(hosts_file(str(self.state.path), pod.name))
            text = hosts_text(mesh, mesh.service(pod.service), pod.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_file() and path.read_text() == text:
                continue
            # In place, never by rename: the pod's bind mount holds on to this very inode.
            with open(path, "a+") as fh:
                fh.seek(0)
                fh.truncate()
                fh.write(text)

    def _inputs(self, mesh: Mesh) -> Inputs:
        assert self.envoy_image is not None and self.pause_image is not None
        app_images: dict[tuple[str, str], str] = {}
        failed: dict[tuple[str, str], str] = {}
        for service in mesh.services:
            for version in service.versions:
                key = (service.name, version.name)
                try:
                    app_images[key] = self._app_image(mesh, service, version)
                except MeshError as exc:
                    failed[key] = str(exc)
        for key, reason in failed.items():
            if self.failed.get(key) != reason:
                self.note(f"{key[0]}/{key[1]}: {reason}")
        self.failed = failed
        return Inputs(
            project=self.project,
            state_dir=str(self.state.path),
            envoy_image=self.envoy_image.image_id,
            pause_image=self.pause_image.image_id,
            app_images=app_images,
            failed=failed,
        )

    def _app_image(self, mesh: Mesh, service: Service, version: Version) -> str:
        """The image id a version runs. Failures are remembered until the next `up`, so a
        missing image is not looked for again on every pass."""
        build = version.build
        if build is not None:
            tag = version.image or f"devmesh-{self.project}-{service.name}:{version.name}"
            context = Path(mesh.base_dir) / build.context
            key: Any = ("build", str(context), build.dockerfile, build.args, tag)
        else:
            assert version.image is not None
            key = ("image", version.image)
        if key not in self._images:
            try:
                self._images[key] = self._resolve_image(key, version)
            except MeshError as exc:
                self._images[key] = exc
        found = self._images[key]
        if isinstance(found, MeshError):
            raise found
        return found

    def _resolve_image(self, key: Any, version: Version) -> str:
        client = self.engine.client
        if key[0] == "build":
            _, context, dockerfile, args, tag = key
            self.note(f"building {tag} from {context}")
            return images.build(
                client, Path(context), dockerfile, tag, dict(args), {labels.ROLE: "image"}, log.info
            )
        name = key[1]
        found = images.image_id(client, name)
        if found:
            return found
        if images.pull_policy() == "missing":
            self.note(f"pulling {name}")
            try:
                return images.pull(client, name)
            except MeshError as exc:
                raise MeshError(f"image {name} not found, and {exc}") from None
        raise MeshError(f"image {name} not found (pulling is off: DEVMESH_PULL=never)")

    def _endpoints(self) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = {}
        want = self._desired
        if want is None:
            return out
        for pod in want.pods:
            info = self._infos.get(pod.name)
            health = self._health.get(pod.name)
            if info and info.ip and health and health.ok:
                out.setdefault((pod.service, pod.version), []).append(info.ip)
        return out

    def _publish(self) -> None:
        """Each node group's resources to the xDS server (it pushes only what changed)."""
        mesh = self.effective()
        endpoints = self._endpoints()
        if (mesh, endpoints) == self._last_published:
            return  # the timer's passes over an unchanged mesh build nothing
        clusters: set[str] = set()
        for service in mesh.services:
            for version in service.versions:
                cluster = sidecar_node(mesh, service.name, version.name)
                clusters.add(cluster)
                self.xds.set_snapshot(cluster, sidecar_resources(mesh, service, version, endpoints))
        if mesh.has_gateway:
            cluster = gateway_cluster(mesh)
            clusters.add(cluster)
            self.xds.set_snapshot(cluster, gateway_resources(mesh, endpoints))
        for gone in self._published - clusters:
            self.xds.remove_snapshot(gone)
        self._published = clusters
        self._last_published = (mesh, endpoints)

    def _wait_pushed(self) -> bool:
        """Wait until every connected sidecar and gateway has ACKed what was just published,
        so an API change is in force when its call returns (a test's `with mesh.fault(...)`
        sends its first request straight after). False after PUSH_WAIT seconds (a NACK, or
        an Envoy that is not answering); the change stays published either way."""
        nodes = [
            s.node_id for s in self.xds.statuses() if s.connected and s.cluster in self._published
        ]
        return self.xds.wait_synced(nodes, PUSH_WAIT)

    # -- loops --------------------------------------------------------------------------------

    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            triggered = self._wake.wait(RECONCILE_EVERY)
            if self._stop.is_set():
                return
            if triggered:
                # Let a burst of events settle into one pass; after failures, back off (a
                # container that cannot start would otherwise be retried in a tight loop).
                backoff = min(30.0, 0.5 * 2**self._failed_passes) if self._failed_passes else 0.2
                self._stop.wait(backoff)
            self._wake.clear()
            try:
                self.reconcile("event" if triggered else "timer")
            except MeshError as exc:
                self.note(f"reconcile failed: {exc}")
            except Exception:
                log.exception("reconcile failed")

    def _events_loop(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self.engine.events(self.project):
                    if self._stop.is_set():
                        return
                    if event.get("status") in ("die", "destroy", "oom"):
                        name = event.get("Actor", {}).get("Attributes", {}).get("name", "?")
                        self.note(f"{name}: {event.get('status')}")
                        self._wake.set()
            except Exception as exc:
                log.warning("Docker events: %s; retrying", exc)
            self._stop.wait(1.0)

    def _health_loop(self) -> None:
        while not self._stop.wait(HEALTH_TICK):
            self._log_tails.sweep()
            try:
                if self._probe_round():
                    with self._reconcile_lock:
                        self._infos = self.engine.containers(self.project)
                        self._publish()
            except Exception:
                log.exception("health probes failed")

    def _probe_round(self) -> bool:
        """Probe the apps that are due; True if any pod's health changed."""
        want, infos, mesh = self._desired, self._infos, self.mesh
        if want is None:
            return False
        now = time.monotonic()
        due: list[tuple[PodSpec, str, Service, str]] = []
        changed = False
        for pod in want.pods:
            owner, app = infos.get(pod.name), infos.get(pod.app.name)
            if not owner or not owner.ip or not app or not mesh.has_service(pod.service):
                continue
            state = self._health.get(pod.name)
            if state is None or state.app_id != app.id:
                changed = changed or bool(state and state.ok)
                state = self._health[pod.name] = _Health(app.id)
            if app.state != "running":
                changed = changed or state.ok
                state.ok, state.reason = False, f"app {app.state}"
            elif now >= state.next_at:
                due.append((pod, owner.ip, mesh.service(pod.service), app.id))
        results = self._pool.map(lambda job: probe(job[1], job[2].port, job[2].health), due)
        for (pod, _, service, app_id), (ok, reason) in zip(due, results, strict=True):
            state = self._health.get(pod.name)
            if state is None or state.app_id != app_id:
                continue  # the app was replaced meanwhile: this result is about the old one
            interval = (service.health.interval_ms if service.health else 2000) / 1000
            # Until it first passes, look often: readiness should not wait a whole interval.
            state.next_at = now + (interval if ok else min(interval, 0.5))
            if ok != state.ok:
                changed = True
                self.note(f"{pod.name}: {'healthy' if ok else 'unhealthy: ' + reason}")
            state.ok, state.reason = ok, reason
        return changed

    # -- state --------------------------------------------------------------------------------

    def pod_status(self, pod: PodSpec) -> dict[str, Any]:
        info = self._infos.get(pod.name)
        app = self._infos.get(pod.app.name)
        sidecar = self._infos.get(pod.sidecar.name)
        health = self._health.get(pod.name) or _Health("")
        try:
            xds = self.xds.status(pod.node_id)
        except KeyError:
            xds = None
        synced = self.xds.is_synced(pod.node_id) if xds else False
        reason = ""
        broken = [
            self.start_errors[n]
            for n in (pod.name, pod.sidecar.name, pod.app.name)
            if n in self.start_errors
        ]
        if broken:
            reason = broken[0]
        elif info is None or info.state != "running":
            reason = "pod starting" if info is None else f"namespace owner {info.state}"
        elif app is None:
            reason = "app container missing"
        elif app.state != "running":
            reason = f"app exiting (exit code {app.exit_code}, restarted {app.restarts} times)"
        elif sidecar is None or sidecar.state != "running":
            reason = "sidecar not running"
        elif xds is not None and xds.nack is not None:
            reason = f"config NACKed: {xds.nack.message}"
        elif not synced:
            reason = "sidecar has not ACKed its config yet"
        elif not health.ok:
            reason = f"health failing ({health.reason})"
        return {
            "pod": pod.name,
            "service": pod.service,
            "version": pod.version,
            "replica": pod.replica,
            "ready": not reason,
            "reason": reason,
            "address": info.ip if info else None,
            "app": app.state if app else "missing",
            "restarts": app.restarts if app else 0,
            "sidecar": sidecar.state if sidecar else "missing",
            "xds": _xds_json(xds, synced),
        }

    def snapshot(self) -> dict[str, Any]:
        want = self._desired
        pods = [self.pod_status(p) for p in want.pods] if want else []
        gateway = None
        if want is not None and want.gateway is not None:
            info = self._infos.get(want.gateway.name)
            try:
                gx = self.xds.status(want.gateway.name)
            except KeyError:
                gx = None
            synced = self.xds.is_synced(want.gateway.name) if gx else False
            ingress = self.effective().ingress
            published = info.ports if info else {}
            services = {
                svc.name: f"http://127.0.0.1:{published[GATEWAY_HOP_BASE + i]}/"
                for i, svc in enumerate(self.effective().gateway_services())
                if GATEWAY_HOP_BASE + i in published
            }
            gateway = {
                "name": want.gateway.name,
                "state": info.state if info else "missing",
                "url": f"http://{ingress.host}:{ingress.port}/" if ingress else None,
                "services": services,
                "ready": bool(info and info.state == "running" and synced),
                "xds": _xds_json(gx, synced),
            }
        failed = [{"service": s, "version": v, "reason": r} for (s, v), r in self.failed.items()]
        failed += [
            {"service": p["service"], "version": p["version"], "reason": p["reason"]}
            for p in pods
            if p["reason"].startswith("cannot ")
        ]
        ready = (
            self.phase == "serving"
            and not failed
            and all(p["ready"] for p in pods)
            and (gateway is None or gateway["ready"])
        )
        return {
            "mesh": self.mesh.name,
            "project": self.project,
            "file": str(self.mesh_file),
            "pid": os.getpid(),
            "phase": self.phase,
            "ready": ready,
            "problems": self.problems,
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "errors": self.apply_errors,
            "failed": failed,
            "sidecar_image": str(self.envoy_image) if self.envoy_image else None,
            "pods": pods,
            "gateway": gateway,
            "events": [{"time": t, "text": text} for t, text in list(self.events)[-50:]],
        }


def _fault_from_json(body: dict[str, Any]) -> Fault | None:
    delay, abort = body.get("delay"), body.get("abort")
    if not delay and not abort:
        return None
    return Fault(
        delay=None
        if not delay
        else Delay(fixed_ms=int(delay["fixed_ms"]), percent=float(delay.get("percent", 100))),
        abort=None
        if not abort
        else Abort(
            percent=float(abort.get("percent", 100)),
            http_status=int(abort["status"]) if "status" in abort else None,
            grpc_status=int(abort["grpc_status"]) if "grpc_status" in abort else None,
        ),
    )


def _port_busy(ingress: Ingress) -> bool:
    with socket.socket() as probe_sock:
        # As dockerd binds: TIME_WAIT leftovers of a previous run must not count as "in use".
        probe_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe_sock.bind((ingress.host, ingress.port))
        except OSError:
            return True
    return False


def _xds_json(status: Any, synced: bool) -> dict[str, Any]:
    if status is None:
        return {"connected": False, "synced": False, "version": None, "nack": None}
    nack = status.nack
    return {
        "connected": status.connected,
        "synced": synced,
        "version": _short_version(status.acked),
        "nack": None
        if nack is None
        else {"type": nack.type_url.rsplit(".", 1)[-1], "message": nack.message},
    }


def _short_version(acked: dict[str, str]) -> str | None:
    if not acked:
        return None
    joined = "".join(v for _, v in sorted(acked.items()))
    return hashlib.sha256(joined.encode()).hexdigest()[:8]
