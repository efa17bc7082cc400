"""The daemon: one per mesh. Level-triggered: every trigger (start, a reload, a Docker event,
a timer, a health change) re-runs load → desired → observe → plan → apply → publish.

Collaborators are built here and passed in; nothing connects or starts at import time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from devmesh.adapters import images
from devmesh.adapters.engine import ContainerInfo, Engine
from devmesh.adapters.probe import probe
from devmesh.adapters.watch import FileWatcher
from devmesh.adapters.xds_server import XdsServer
from devmesh.core.edit import set_weights as shift_text
from devmesh.core.edit import write_file
from devmesh.core.load import load
from devmesh.core.model import Mesh, Service, Version
from devmesh.core.problems import MeshError, MeshInvalid
from devmesh.core.source import read_text
from devmesh.core.summary import mesh_routes_json
from devmesh.daemon.api import ApiServer
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
RECONCILE_EVERY = 5.0  # seconds; events and reloads trigger it sooner
HEALTH_TICK = 0.25


class DaemonRunning(MeshError):
    pass


@dataclass
class _Health:
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
    ) -> None:
        self.mesh_file = mesh_file
        self.mesh = mesh
        self.project = project
        self.engine = engine
        self.state = state
        self.xds = XdsServer(state.xds_socket, max_workers=256)
        self.phase = "starting"
        self.problems: list[str] = []  # of the mesh file's last reload that did not validate
        self.apply_errors: list[str] = []
        self.failed: dict[tuple[str, str], str] = {}
        self.events: deque[tuple[float, str]] = deque(maxlen=200)
        self.envoy_image: images.ImageChoice | None = None
        self.pause_image: images.ImageChoice | None = None
        self._images: dict[Any, str] = {}
        self._desired: Desired | None = None
        self._infos: dict[str, ContainerInfo] = {}
        self._health: dict[str, _Health] = {}
        self._published: set[str] = set()
        self._healthy_pods: frozenset[str] = frozenset()
        self._reconcile_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock_handle: IO[str] | None = None
        self._api: ApiServer | None = None
        self._watcher: FileWatcher | None = None
        self._base_dir = str(mesh_file.resolve().parent)
        self._applied = hashlib.sha256(mesh_file.read_bytes()).hexdigest()
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
                ("POST", "/v1/reload"): lambda _: self._api_reload(),
                ("POST", "/v1/shutdown"): lambda _: self._api_shutdown(),
                ("POST", "/v1/shift"): self._api_shift,
                ("GET", "/v1/routes"): lambda _: (200, self.routes_json()),
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
        self.phase = "serving"
        for target, name in (
            (self._health_loop, "health"),
            (self._reconcile_loop, "reconcile"),
            (self._events_loop, "events"),
        ):
            threading.Thread(target=target, name=name, daemon=True).start()

    def wait(self) -> None:
        while not self._stop.wait(0.5):
            pass

    def stop(self, teardown: bool = False) -> None:
        if self.phase == "stopping":
            return
        self.phase = "stopping"
        self._stop.set()
        self._wake.set()
        if self._watcher is not None:
            self._watcher.stop()
        if self._api is not None:
            self._api.stop()
        self.xds.stop(grace=0.5)
        if teardown:
            containers, networks = self.engine.remove_all(self.project)
            self.note(f"removed {containers} containers, {networks} networks")
            self.state.remove()
        elif self._lock_handle is not None:
            self.state.pid_file.unlink(missing_ok=True)
        if self._lock_handle is not None:
            self._lock_handle.close()

    def _preflight(self) -> None:
        ingress = self.mesh.ingress
        if ingress is None:
            return
        mine = self.engine.containers(self.project).get(f"{self.project}-gateway")
        if mine is not None and mine.state == "running":
            return  # it is ours, adopted
        with socket.socket() as probe_sock:
            # As dockerd binds: TIME_WAIT leftovers of a previous run must not count as "in use".
            probe_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe_sock.bind((ingress.host, ingress.port))
            except OSError:
                raise MeshError(
                    f"ingress port {ingress.host}:{ingress.port} is in use by another program; "
                    "free it or change ingress.port in the mesh file"
                ) from None

    # -- API ----------------------------------------------------------------------------------

    def _api_reload(self) -> tuple[int, dict[str, Any]]:
        """A second `up`: re-read the file now, rebuild images, reconcile."""
        try:
            raw = self.mesh_file.read_bytes()
        except OSError as exc:
            return 200, {"ok": False, "problems": [f"{self.mesh_file}: {exc.strerror}"]}
        mesh, problems = self._parse(raw)
        if mesh is None:
            self._report(raw, problems)
        else:
            self._apply(raw, mesh, "up", rebuild=True)
        return 200, {"ok": not problems, "problems": problems}

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
        if digest in (self._applied, self._reported):
            return  # no change (an editor touched it, or `shift` wrote what it applied)
        mesh, problems = self._parse(raw)
        if mesh is not None:
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
        return 200, {"ok": True, "service": service, "route": route, "weights": weights}

    def routes_json(self) -> dict[str, Any]:
        return mesh_routes_json(self.mesh)

    def _api_shutdown(self) -> tuple[int, dict[str, Any]]:
        threading.Thread(target=self.stop, name="shutdown", daemon=True).start()
        return 200, {"ok": True}

    # -- reconcile ----------------------------------------------------------------------------

    def reconcile(self, why: str) -> None:
        with self._reconcile_lock:
            if self._stop.is_set():
                return
            mesh = self.mesh
            inputs = self._inputs(mesh)
            want = desired(mesh, inputs)
            actual, infos = self.engine.look(self.project)
            self._write_hosts(mesh, want)
            todo = plan(want, actual, network_exists=self.engine.network_exists(want.network))
            if not todo.empty:
                self.note(f"reconcile ({why}): " + ", ".join(todo.describe()))
                # A new app must pass its own health check before it gets traffic.
                for pod, _ in todo.replace_pods:
                    self._health.pop(pod.name, None)
                for spec, _ in todo.replace:
                    if spec.role == "app":
                        self._health.pop(spec.name.removesuffix("-app"), None)
                errors = self.engine.apply(todo, self.project, want.network, log.info)
                for error in errors:
                    self.note(f"error: {error}")
                self.apply_errors = errors
            self._desired = want
            if not todo.empty:
                infos = self.engine.containers(self.project)  # what applying changed
            self._infos = infos
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
        client = self.engine.client
        if version.build is not None:
            build = version.build
            tag = version.image or f"devmesh-{self.project}-{service.name}:{version.name}"
            context = Path(mesh.base_dir) / build.context
            cache_key = (str(context), build.dockerfile, build.args, tag)
            if cache_key not in self._images:
                self.note(f"building {tag} from {context}")
                self._images[cache_key] = images.build(
                    client,
                    context,
                    build.dockerfile,
                    tag,
                    dict(build.args),
                    {"dev.devmesh.role": "image"},
                    log.info,
                )
            return self._images[cache_key]
        assert version.image is not None
        found = images.image_id(client, version.image)
        if found:
            return found
        if images.pull_policy() == "missing":
            self.note(f"pulling {version.image}")
            try:
                repo, _, tag = version.image.rpartition(":")
                pulled = client.images.pull(repo or version.image, tag=tag or "latest")
                return str(pulled.id)
            except Exception as exc:  # any pull failure means the same thing here
                raise MeshError(f"image {version.image} not found and not pulled ({exc})") from None
        raise MeshError(f"image {version.image} not found (pulling is off: DEVMESH_PULL=never)")

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
        mesh = self.mesh
        endpoints = self._endpoints()
        clusters: set[str] = set()
        for service in mesh.services:
            for version in service.versions:
                cluster = sidecar_node(mesh, service.name, version.name)
                clusters.add(cluster)
                self.xds.set_snapshot(cluster, sidecar_resources(mesh, service, version, endpoints))
        if mesh.ingress is not None:
            cluster = gateway_cluster(mesh)
            clusters.add(cluster)
            self.xds.set_snapshot(cluster, gateway_resources(mesh, endpoints))
        for gone in self._published - clusters:
            self.xds.remove_snapshot(gone)
        self._published = clusters

    # -- loops --------------------------------------------------------------------------------

    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            triggered = self._wake.wait(RECONCILE_EVERY)
            if self._stop.is_set():
                return
            if triggered:
                time.sleep(0.2)  # let a burst of events settle into one pass
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
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe") as pool:
            while not self._stop.wait(HEALTH_TICK):
                try:
                    self._probe_due(pool)
                except Exception:
                    log.exception("health probes failed")

    def _probe_due(self, pool: ThreadPoolExecutor) -> None:
        want = self._desired
        if want is None:
            return
        now = time.monotonic()
        mesh = self.mesh
        due: list[tuple[PodSpec, str, Service]] = []
        for pod in want.pods:
            info = self._infos.get(pod.name)
            if not info or not info.ip or not mesh.has_service(pod.service):
                continue
            state = self._health.setdefault(pod.name, _Health())
            if now >= state.next_at:
                due.append((pod, info.ip, mesh.service(pod.service)))
        results = pool.map(lambda job: probe(job[1], job[2].port, job[2].health), due)
        changed = False
        for (pod, _, service), (ok, reason) in zip(due, results, strict=True):
            state = self._health[pod.name]
            interval = (service.health.interval_ms if service.health else 2000) / 1000
            # Until it first passes, look often: readiness should not wait a whole interval.
            state.next_at = now + (interval if ok else min(interval, 0.5))
            if ok != state.ok:
                changed = True
                self.note(f"{pod.name}: {'healthy' if ok else 'unhealthy: ' + reason}")
            state.ok, state.reason = ok, reason
        if changed:
            with self._reconcile_lock:
                self._infos = self.engine.containers(self.project)
                self._publish()

    # -- state --------------------------------------------------------------------------------

    def pod_status(self, pod: PodSpec) -> dict[str, Any]:
        info = self._infos.get(pod.name)
        app = self._infos.get(pod.app.name)
        sidecar = self._infos.get(pod.sidecar.name)
        health = self._health.get(pod.name, _Health())
        try:
            xds = self.xds.status(pod.node_id)
        except KeyError:
            xds = None
        synced = self.xds.is_synced(pod.node_id) if xds else False
        reason = ""
        if info is None or info.state != "running":
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
            ingress = self.mesh.ingress
            assert ingress is not None
            gateway = {
                "name": want.gateway.name,
                "state": info.state if info else "missing",
                "url": f"http://{ingress.host}:{ingress.port}/",
                "ready": bool(info and info.state == "running" and synced),
                "xds": _xds_json(gx, synced),
            }
        failed = [{"service": s, "version": v, "reason": r} for (s, v), r in self.failed.items()]
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


Progress = Callable[[str], None]
