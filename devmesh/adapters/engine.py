"""The Docker engine, through docker-py: observe by labels, apply a plan, clean up.

docker-py's errors are translated here into devmesh's own; nothing above this module sees
a docker exception.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tarfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import requests.exceptions

from devmesh import labels
from devmesh.core import engines
from devmesh.core.engines import EngineInfo, EngineKind
from devmesh.core.problems import MeshError
from devmesh.plan.desired import ContainerSpec, PodSpec
from devmesh.plan.plan import Observed, Plan

log = logging.getLogger("devmesh.engine")
Progress = Callable[[str], None]
WORKERS = 8  # measured: 8 threads halve 30 pods' start time on 2 cores; 16 gain nothing
NETWORK_TRIES = 6  # a network with endpoints on it: looked at again every 0.5 s
MIN_API = "1.24"  # docker-py's own minimum: only for the first ping, whose answer names the API
REMOVE_TRIES = 5  # a Podman namespace owner: removed once its joined containers are gone
GUARD_WAIT = 30  # seconds for a pod's firewall guard to load its rules (0.2 s when idle)
_GUARD_FAILED = "cannot close the pod's app port to other pods"


class EngineUnavailable(MeshError):
    pass


class EngineError(MeshError):
    def __init__(self, message: str, container: str = "") -> None:
        super().__init__(message)
        self.container = container  # the container it is about, when there is one


def _explain(exc: docker.errors.APIError) -> str:
    text = str(exc.explanation or exc)
    if "port is already allocated" in text or "address already in use" in text:
        return f"a host port is already in use ({text})"
    return text


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    name: str
    state: str
    exit_code: int
    restarts: int
    ip: str | None
    ports: dict[int, int]  # container port -> published host port
    health: str = ""  # a HEALTHCHECK's status (transport tcp): healthy, unhealthy, starting


class Engine:
    def __init__(self, client: docker.DockerClient, address: str = "") -> None:
        self.client = client
        self.address = address or engine_address()
        self._identity: EngineInfo | None = None

    @classmethod
    def connect(cls, timeout: int = 30) -> Engine:
        where = engine_address()
        try:
            # One `GET /_ping`, whose headers give the API version and name Podman, instead
            # of docker-py's `GET /version` negotiation: Podman answers that by running
            # conmon and runc (2-5 s per command on a loaded machine, 0.01 s for a ping).
            probe = docker.from_env(version=MIN_API, timeout=timeout)  # asks nothing yet
            answer = probe.api.get(f"{probe.api.base_url}/_ping", timeout=timeout)
            answer.raise_for_status()
            probe.close()
            client = docker.from_env(
                version=answer.headers.get("Api-Version") or None, timeout=timeout
            )
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineUnavailable(
                engines.unreachable(where, _root_cause(exc), _socket_exists(where))
            ) from None
        _pings[client] = dict(answer.headers)
        return cls(client, where)

    def identity(self) -> EngineInfo:
        """Which engine this is (asked once: its ping's headers and `GET /info`)."""
        if self._identity is None:
            self._identity = identify_client(self.client, self.address)
        return self._identity

    # -- observe ------------------------------------------------------------------------------

    def observe(self, project: str) -> list[Observed]:
        return self.look(project)[0]

    def containers(self, project: str) -> dict[str, ContainerInfo]:
        """Name -> state, exit code, restart count and (for namespace owners) address."""
        return self.look(project)[1]

    def look(self, project: str) -> tuple[list[Observed], dict[str, ContainerInfo]]:
        """Everything labelled with the mesh, from one list call (the list carries labels,
        state and addresses); only stopped containers are inspected, for their exit code."""
        observed: list[Observed] = []
        infos: dict[str, ContainerInfo] = {}
        network = f"devmesh-{project}"
        for raw in self._list(project):
            name = str(raw["Names"][0]).lstrip("/")
            lab = raw.get("Labels") or {}
            state = str(raw.get("State", ""))
            observed.append(
                Observed(
                    id=raw["Id"],
                    name=name,
                    role=lab.get(labels.ROLE, ""),
                    pod=lab.get(labels.POD, name),
                    service=lab.get(labels.SERVICE, ""),
                    version=lab.get(labels.VERSION, ""),
                    config_hash=lab.get(labels.CONFIG_HASH, ""),
                    state=state,
                    replica=_number(lab.get(labels.REPLICA)),
                    generation=_number(lab.get(labels.GENERATION)),
                )
            )
            nets = (raw.get("NetworkSettings") or {}).get("Networks") or {}
            exit_code, restarts = 0, 0
            if state != "running":
                exit_code, restarts = self._exit_info(raw["Id"])
            infos[name] = ContainerInfo(
                id=raw["Id"],
                name=name,
                state=state,
                exit_code=exit_code,
                restarts=restarts,
                ip=(nets.get(network) or {}).get("IPAddress") or None,
                ports={
                    int(p["PrivatePort"]): int(p["PublicPort"])
                    for p in raw.get("Ports") or []
                    if p.get("PublicPort")
                },
                health=_health(str(raw.get("Status") or "")),
            )
        return observed, infos

    def projects(self) -> dict[str, int]:
        """Every mesh instance the engine has containers of -> how many of them run."""
        try:
            found: list[dict[str, Any]] = self.client.api.containers(
                all=True, filters={"label": labels.selector()}
            )
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot list containers: {_explain(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise EngineUnavailable(f"lost the Docker engine: {_root_cause(exc)}") from None
        out: dict[str, int] = {}
        for raw in found:
            lab = raw.get("Labels") or {}
            mesh = lab.get(labels.MESH)
            if not mesh or lab.get(labels.ROLE) not in ("pod", "app", "sidecar", "gateway"):
                continue  # an image build's leftover step is not an instance
            out[mesh] = out.get(mesh, 0) + (raw.get("State") == "running")
        return out

    def _list(self, project: str) -> list[dict[str, Any]]:
        try:
            found: list[dict[str, Any]] = self.client.api.containers(
                all=True, filters={"label": labels.selector(mesh=project)}
            )
            return found
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot list containers: {_explain(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise EngineUnavailable(f"lost the Docker engine: {_root_cause(exc)}") from None

    def _exit_info(self, cid: str) -> tuple[int, int]:
        try:
            attrs = self.client.api.inspect_container(cid)
        except docker.errors.APIError:
            return 0, 0  # gone meanwhile
        except requests.exceptions.RequestException as exc:  # the engine is stopping
            raise EngineUnavailable(f"lost the Docker engine: {_root_cause(exc)}") from None
        return int(attrs.get("State", {}).get("ExitCode", 0)), int(attrs.get("RestartCount", 0))

    def network_exists(self, name: str) -> bool:
        try:
            self.client.networks.get(name)
            return True
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot inspect network {name}: {_explain(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise EngineUnavailable(f"lost the Docker engine: {_root_cause(exc)}") from None

    def network_gateway(self, name: str) -> str | None:
        """The network's gateway address: where the host's connections to a published port
        come from (docker-proxy, or the DNAT hairpin's masquerade). None if unknown."""
        try:
            attrs = self.client.api.inspect_network(name)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot inspect network {name}: {_explain(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise EngineUnavailable(f"lost the Docker engine: {_root_cause(exc)}") from None
        for config in (attrs.get("IPAM") or {}).get("Config") or []:
            if config.get("Gateway"):
                return str(config["Gateway"]).split("/")[0]
        return None

    # -- apply --------------------------------------------------------------------------------

    def apply(
        self, plan: Plan, project: str, network: str, progress: Progress
    ) -> list[EngineError]:
        """Carry out a plan; return what failed (the rest goes on)."""
        errors: list[EngineError] = []
        if plan.ensure_network:
            self.ensure_network(network, project)
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="apply") as pool:
            jobs = [pool.submit(self._remove, cid) for cid in plan.remove]
            jobs += [
                pool.submit(self._replace_pod, spec, old, progress)
                for spec, old in plan.replace_pods
            ]
            jobs += [pool.submit(self._create_pod, spec, progress) for spec in plan.create_pods]
            jobs += [pool.submit(self._replace, spec, old, progress) for spec, old in plan.replace]
            jobs += [pool.submit(self._create, spec, progress) for spec in plan.create]
            jobs += [pool.submit(self._start, cid) for cid in plan.start]
            jobs += [pool.submit(self.make_spare, spec, progress) for spec in plan.spares]
            for job in jobs:
                err = job.exception()
                if isinstance(err, EngineError):
                    errors.append(err)
                elif err is not None:
                    errors.append(EngineError(str(err)))
        return errors

    def remove(self, ids: Iterable[str]) -> list[EngineError]:
        """Remove these containers, side by side; what failed (the rest goes on)."""
        errors: list[EngineError] = []
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="remove") as pool:
            jobs = [(cid, pool.submit(self._remove, cid)) for cid in ids]
        for cid, job in jobs:
            err = job.exception()
            if isinstance(err, EngineError):
                errors.append(EngineError(str(err), cid))
            elif err is not None:
                errors.append(EngineError(f"{cid[:12]}: cannot remove: {err}", cid))
        return errors

    def make_spare(self, pod: PodSpec, progress: Progress) -> None:
        """A pod made ahead of a rebuild without its app: owner, guard run, sidecar
        (plan/roll.py `spares`); the roll that takes it adds the app."""
        self._create_pod(pod, progress, with_app=False)

    def ensure_network(self, name: str, project: str) -> None:
        if self.network_exists(name):
            return
        try:
            self.client.networks.create(
                name,
                driver="bridge",
                labels={labels.MANAGED: "1", labels.MESH: project, labels.ROLE: "network"},
            )
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # created meanwhile
                raise EngineError(f"cannot create network {name}: {_explain(exc)}") from None

    def _create_pod(self, pod: PodSpec, progress: Progress, with_app: bool = True) -> None:
        """Make a pod. Every container is created at once (on Docker a member needs its
        namespace owner to exist, not to run), while the owner starts; then the sidecar
        starts, and the guard, which closes the namespace to other pods; the app only once
        the guard has. Measured under load: starts dominate (0.6-1.5 s each), creates take
        0.15 s, so made one after another they cost about 0.5 s more. `with_app=False`: a
        spare, made ahead of a rebuild (plan/roll.py `spares`): its app is added later."""
        owner = self._make(pod.pause)
        # Podman: members are made once the owner runs (not measured there, so as before).
        early = self.identity().kind is not EngineKind.PODMAN
        if not early:
            self._start_made(pod.pause, owner, progress)
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="member") as pool:
            sidecar = pool.submit(self._make, pod.sidecar)
            app = pool.submit(self._make, pod.app) if with_app else None
            guard = pool.submit(self._make_once, pod.guard, pod.name) if pod.guarded else None
            made = [job for job in (sidecar, app) if job is not None]
            try:
                if early:
                    self._start_made(pod.pause, owner, progress)
            except EngineError:
                # What was created for an owner that cannot start goes with it.
                ids = [_made(job) for job in made]
                ids.append(_made(guard))
                for cid in ids:
                    if cid is not None:
                        self._remove(cid)
                raise
            errors = [e for e in (job.exception() for job in made) if e is not None]
            if guard is not None and guard.exception() is not None:
                # Never an app open to every pod: no owner, so the next pass makes the pod
                # anew (and tries the guard again); meanwhile the pod is failed, saying why.
                made_app = _made(app)
                if made_app is not None:
                    self._remove(made_app)
                self._remove(pod.name)
                raise guard.exception()  # type: ignore[misc]
            jobs = [pool.submit(self._guarded_start, pod, _made(guard), _made(app), progress)]
            if sidecar.exception() is None:
                jobs.append(pool.submit(self._start_made, pod.sidecar, sidecar.result(), progress))
        errors += [e for e in (job.exception() for job in jobs) if e is not None]
        if errors:
            raise errors[0]

    def _guarded_start(
        self, pod: PodSpec, guard: str | None, app: str | None, progress: Progress
    ) -> None:
        """Run the pod's guard (None: DEVMESH_GUARD=off, the engine gives no NET_ADMIN),
        then start its app (if made): never an app open to every pod."""
        try:
            try:
                if guard is not None:
                    self._finish_once(guard, pod.guard, pod.name)
            except (EngineError, EngineUnavailable):
                # No owner, so the next pass makes the pod anew (and tries the guard
                # again); meanwhile the pod is failed, saying why.
                with contextlib.suppress(MeshError, requests.exceptions.RequestException):
                    for cid in (app, pod.name):
                        if cid is not None:
                            self._remove(cid)
                raise
            if app is not None:
                self._start_made(pod.app, app, progress)
        finally:
            if guard is not None:
                self._remove(guard)  # after the app started: not in its way

    def _make_once(self, spec: ContainerSpec, about: str) -> str:
        """Create `spec`, a container run once (the pods' firewall guard), replacing a
        leftover of a daemon that died mid-run; its id. See `_finish_once`."""
        what = f"{_GUARD_FAILED}: {spec.name}"
        _prepare(spec)
        try:
            for attempt in (1, 2):
                try:
                    container = self.client.containers.create(**self._create_args(spec))
                    _put_files(container, spec)
                    return str(container.id)
                except docker.errors.APIError as exc:
                    if exc.status_code != 409 or attempt == 2:
                        raise
                    self._remove(spec.name)
        except docker.errors.ImageNotFound:
            raise EngineError(f"{what}: image {spec.image} not found", about) from None
        except docker.errors.APIError as exc:
            raise EngineError(self._guard_failed(what, _explain(exc)), about) from None
        except requests.exceptions.RequestException as exc:
            raise EngineUnavailable(f"lost the Docker engine: {_root_cause(exc)}") from None
        raise AssertionError("unreachable")

    def _finish_once(self, cid: str, spec: ContainerSpec, about: str) -> None:
        """Start the container `_make_once` made and wait for it; EngineError (about
        `about`) unless it exited 0. The caller removes it."""
        what = f"{_GUARD_FAILED}: {spec.name}"
        try:
            self.client.api.start(cid)
            code = self.client.api.wait(cid, timeout=GUARD_WAIT).get("StatusCode")
            if code != 0:
                raw = self.client.api.logs(cid)
                out = raw.decode(errors="replace").strip().replace("\n", "; ")
                raise EngineError(
                    self._guard_failed(what, f"exited with {code}: {out[-300:]}"), about
                )
        except docker.errors.APIError as exc:
            raise EngineError(self._guard_failed(what, _explain(exc)), about) from None
        except requests.exceptions.ReadTimeout:
            raise EngineError(f"{what} did not finish within {GUARD_WAIT} s", about) from None
        except requests.exceptions.RequestException as exc:
            raise EngineUnavailable(f"lost the Docker engine: {_root_cause(exc)}") from None

    def _create_args(self, spec: ContainerSpec) -> dict[str, Any]:
        """docker-py's arguments for `spec` on this engine. Podman 4.3 takes `host-gateway`
        in extra hosts as a name (its hosts file gets `host-gateway NAME`, which resolves
        nothing): there the network's gateway address, the host's side of its bridge,
        stands in for it."""
        kwargs = _create_args(spec)
        hosts = kwargs.get("extra_hosts") or {}
        if "host-gateway" in hosts.values() and self.identity().kind is EngineKind.PODMAN:
            gateway = self._gateway(spec.network)
            if gateway:
                kwargs["extra_hosts"] = {
                    k: gateway if v == "host-gateway" else v for k, v in hosts.items()
                }
        return kwargs

    def _gateway(self, network: str | None) -> str | None:
        """The network's gateway address, as the engine's IPAM config gives it."""
        if not network:
            return None
        try:
            attrs = self.client.api.inspect_network(network)
        except docker.errors.APIError:
            return None
        for cfg in (attrs.get("IPAM") or {}).get("Config") or []:
            if cfg.get("Gateway"):
                return str(cfg["Gateway"]).split("/")[0]
        return None

    def _guard_failed(self, what: str, detail: str) -> str:
        """A guard that could not load its rules; one refused NET_ADMIN says so, and how
        to run without the guard."""
        if engines.looks_like_no_net_admin(detail):
            return engines.guard_refused(self.identity(), detail)
        return f"{what} {detail}" if detail.startswith("exited") else f"{what}: {detail}"

    def _replace_pod(self, pod: PodSpec, old: tuple[str, ...], progress: Progress) -> None:
        for cid in old:
            self._remove(cid)
        self._create_pod(pod, progress)

    def _replace(self, spec: ContainerSpec, old: str, progress: Progress) -> None:
        self._remove(old)
        self._create(spec, progress)

    def _create(self, spec: ContainerSpec, progress: Progress) -> None:
        cid = self._make(spec)
        if cid is not None:
            self._start_made(spec, cid, progress)

    def _make(self, spec: ContainerSpec) -> str | None:
        """Create `spec` (not started); its id, or None if a container of that name is ours
        already (a racing reconcile made it: the next pass settles it)."""
        _prepare(spec)
        try:
            container = self.client.containers.create(**self._create_args(spec))
        except docker.errors.ImageNotFound:
            raise EngineError(f"image {spec.image} not found", spec.name) from None
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                self._check_ours(spec)
                return None
            raise EngineError(f"cannot create: {_explain(exc)}", spec.name) from None
        except requests.exceptions.RequestException as exc:
            raise EngineUnavailable(f"lost the Docker engine: {_root_cause(exc)}") from None
        try:
            _put_files(container, spec)
        except docker.errors.APIError as exc:
            self._remove(container.id)
            raise EngineError(f"cannot start: {_explain(exc)}", spec.name) from None
        return str(container.id)

    def _start_made(self, spec: ContainerSpec, cid: str | None, progress: Progress) -> None:
        if cid is None:
            return
        try:
            self.client.api.start(cid)
        except docker.errors.APIError as exc:
            self._remove(cid)  # a container that cannot start is not left behind
            raise EngineError(f"cannot start: {_explain(exc)}", spec.name) from None
        except requests.exceptions.RequestException as exc:
            raise EngineUnavailable(f"lost the Docker engine: {_root_cause(exc)}") from None
        progress(f"started {spec.name}")

    def restart(self, names: list[str], timeout: int = 5) -> None:
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="restart") as pool:
            jobs = [pool.submit(self.client.api.restart, n, timeout=timeout) for n in names]
            for job in jobs:
                err = job.exception()
                if isinstance(err, docker.errors.APIError):
                    raise EngineError(f"cannot restart: {_explain(err)}")
                if isinstance(err, requests.exceptions.RequestException):
                    raise EngineUnavailable(f"lost the Docker engine: {_root_cause(err)}")
                if err is not None:
                    raise EngineError(f"cannot restart: {err}")

    def _check_ours(self, spec: ContainerSpec) -> None:
        try:
            found = self.client.api.inspect_container(spec.name)
        except docker.errors.APIError:
            return
        mesh = dict(spec.labels).get(labels.MESH)
        if (found.get("Config", {}).get("Labels") or {}).get(labels.MESH) != mesh:
            raise EngineError(
                f"a container named {spec.name} exists that devmesh did not make for this "
                "mesh; remove or rename it",
                spec.name,
            )

    def _start(self, cid: str) -> None:
        try:
            self.client.api.start(cid)
        except docker.errors.APIError as exc:
            raise EngineError(f"{cid[:12]}: cannot start: {_explain(exc)}") from None

    def _remove(self, cid: str) -> None:
        for attempt in range(REMOVE_TRIES):
            try:
                self.client.api.remove_container(cid, force=True, v=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                dependents = _dependents(exc)
                if dependents and attempt < REMOVE_TRIES - 1:
                    # Podman refuses to remove a namespace owner while containers join it
                    # (Docker removes it anyway): those go first. Another thread may be
                    # removing them already: then wait for it, briefly.
                    for dep in dependents:
                        self._remove(dep)
                    time.sleep(0.05 * attempt)
                    continue
                if exc.status_code != 409:  # removal already in progress
                    raise EngineError(f"{cid[:12]}: cannot remove: {_explain(exc)}") from None
                return

    # -- teardown and logs --------------------------------------------------------------------

    def remove_all(self, project: str) -> tuple[int, int]:
        """Every container and network labelled with the mesh; (containers, networks)."""
        containers = self._list(project)
        # Joined containers (app, sidecar) before their namespace owners: Podman refuses
        # to remove an owner others join; Docker does not mind the order.
        joined = [c["Id"] for c in containers if _joins(c)]
        owners = [c["Id"] for c in containers if not _joins(c)]
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="down") as pool:
            list(pool.map(self._remove, joined))
            list(pool.map(self._remove, owners))
        nets = 0
        try:
            for net in self.client.networks.list(filters={"label": labels.selector(mesh=project)}):
                nets += self._remove_network(net)
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot list networks: {_explain(exc)}") from None
        return len(containers), nets

    def _remove_network(self, net: Any) -> int:
        """Remove one of the mesh's networks: 1, or 0 if it was gone already. An endpoint
        still on it (a container whose removal the engine had not finished) is waited for
        up to NETWORK_TRIES times."""
        for attempt in range(NETWORK_TRIES):
            try:
                net.remove()
                return 1
            except docker.errors.NotFound:
                return 0
            except docker.errors.APIError as exc:
                if "active endpoints" in str(exc) and attempt < NETWORK_TRIES - 1:
                    time.sleep(0.5)
                    continue
                hint = ""
                if "active endpoints" in str(exc):
                    # Seen with Docker 20.10 once the mesh's containers were gone: endpoints
                    # left in the engine's own store, which only an engine restart cleared.
                    hint = (
                        f". If `docker network inspect {net.name}` lists no container on it, "
                        "the engine holds stale endpoints: restart the engine, then "
                        "`devmesh down` again removes the network"
                    )
                raise EngineError(f"cannot remove network: {_explain(exc)}{hint}") from None
        return 0  # not reached: the last try returns or raises

    def logs(
        self,
        name: str,
        follow: bool,
        tail: int | str = "all",
        since: float | None = None,
        timestamps: bool = False,
    ) -> Iterator[bytes]:
        """A container's log; `since`: only what it wrote after that time (epoch seconds);
        `timestamps`: each line starts with the engine's RFC 3339 time of it."""
        try:
            container = self.client.containers.get(name)
            if follow:
                options: dict[str, Any] = {"tail": tail} if since is None else {"since": since}
                yield from container.logs(
                    stream=True, follow=True, timestamps=timestamps, **options
                )
            else:
                yield container.logs(tail=tail, timestamps=timestamps)
        except docker.errors.NotFound:
            raise EngineError(f"no container {name}") from None
        except docker.errors.APIError as exc:  # an answer (a requests.HTTPError too)
            raise EngineError(f"cannot read logs of {name}: {_explain(exc)}") from None
        except requests.exceptions.RequestException as exc:  # no answer
            raise EngineUnavailable(f"the Docker engine went away: {exc}") from None

    def follow_logs(
        self, name: str, tail: int, since: float | None = None, timestamps: bool = False
    ) -> Any:
        """A stream of the container's log (the last `tail` lines, or what it wrote after
        `since`, epoch seconds; then what it writes), as byte chunks that need not end at a
        line; `.close()` ends it from another thread. It ends when the container stops."""
        options: dict[str, Any] = {"tail": tail} if since is None else {"since": since}
        try:
            return self.client.api.logs(
                name, stream=True, follow=True, timestamps=timestamps, **options
            )
        except docker.errors.NotFound:
            raise EngineError(f"no container {name}") from None
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot read logs of {name}: {_explain(exc)}") from None

    def events(self, project: str) -> Iterator[dict[str, Any]]:
        """Container events of this mesh, decoded; ends when the engine goes away."""
        stream = self.client.events(
            decode=True,
            filters={"type": "container", "label": labels.selector(mesh=project)},
        )
        try:
            yield from stream
        except requests.exceptions.RequestException:
            return
        finally:
            stream.close()

    def joined_before_owner(self, project: str) -> list[str]:
        """Running app and sidecar containers whose pod's namespace owner started after
        them: they lost their network when it restarted (an engine restart does that)."""
        by_pod: dict[str, dict[str, dict[str, Any]]] = {}
        for raw in self._list(project):
            lab = raw.get("Labels") or {}
            role = lab.get(labels.ROLE)
            if raw.get("State") != "running" or role not in ("pod", "app", "sidecar"):
                continue
            try:
                attrs = self.client.api.inspect_container(raw["Id"])
            except docker.errors.APIError:
                continue  # gone meanwhile
            except requests.exceptions.RequestException as exc:
                raise EngineUnavailable(f"lost the Docker engine: {_root_cause(exc)}") from None
            by_pod.setdefault(lab.get(labels.POD, ""), {})[role] = attrs
        stale = []
        for roles in by_pod.values():
            owner = roles.get("pod")
            for member in (roles.get("app"), roles.get("sidecar")):
                # RFC 3339 times from one engine compare as text (one zone, one precision)
                if owner is not None and member is not None and _started(member) < _started(owner):
                    stale.append(str(member["Name"]).lstrip("/"))
        return stale


def _health(status: str) -> str:
    """The HEALTHCHECK status in a list's `Status` ("Up 3 seconds (healthy)"); "" if none."""
    for word in ("unhealthy", "healthy", "starting"):
        if f"({word})" in status or f"(health: {word})" in status:
            return word
    return ""


def _made(job: Future[str | None] | Future[str] | None) -> str | None:
    """The id a create job made: None if it was not asked, failed, or found one of ours."""
    if job is None or job.exception() is not None:
        return None
    return job.result()


def _number(label: str | None) -> int:
    return int(label) if label and label.isdigit() and len(label) < 6 else 0


def _started(attrs: dict[str, Any]) -> str:
    return str((attrs.get("State") or {}).get("StartedAt") or "")


def _hand_over(directory: Path, user: str | None) -> None:
    """A directory a container writes into (Envoy's admin socket in the pod directory)
    belongs to the user the container runs as. Only a root daemon can run a container as
    another user, and only root can give a file away; for a daemon running as a normal
    user the container is that user already (`desired.proxy_user`)."""
    if user is None or os.geteuid() != 0:
        return
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or not (gid or uid).isdigit():
        return  # a user name: the image's passwd file knows it, the host does not
    if (directory.stat().st_uid, directory.stat().st_gid) != (int(uid), int(gid or uid)):
        os.chown(directory, int(uid), int(gid or uid))


def _prepare(spec: ContainerSpec) -> None:
    """The files and bind-mounted paths a container needs on the host before it is made."""
    for path, text in spec.files:
        _write(Path(path), text)
    for host, target, mode in spec.binds:
        if target == "/etc/hosts":
            if not Path(host).is_file():  # else Docker would make a directory there
                raise EngineError(f"{spec.name}: no hosts file {host}")
        elif any(host == path for path, _ in spec.files):
            pass  # a file, just written
        else:
            Path(host).mkdir(parents=True, exist_ok=True)
            if mode == "rw":
                _hand_over(Path(host), spec.user)


def _create_args(spec: ContainerSpec) -> dict[str, Any]:
    """docker-py's `containers.create` arguments for `spec`."""
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "name": spec.name,
        "labels": spec.all_labels(),
        "environment": dict(spec.env),
        "detach": True,
        "restart_policy": {"Name": spec.restart},
    }
    if spec.command is not None:
        kwargs["command"] = list(spec.command)
    if spec.entrypoint is not None:
        kwargs["entrypoint"] = list(spec.entrypoint)
    if spec.network:
        kwargs["network"] = spec.network
    if spec.network_mode:
        kwargs["network_mode"] = spec.network_mode
    if spec.dns:
        kwargs["dns"] = list(spec.dns)
    if spec.ports:
        # host port 0: Docker picks a free one
        kwargs["ports"] = {f"{c}/tcp": (ip, port or None) for c, ip, port in spec.ports}
    if spec.binds:
        kwargs["volumes"] = {h: {"bind": c, "mode": m} for h, c, m in spec.binds}
    if spec.init:
        kwargs["init"] = True
    if spec.volumes:  # anonymous: made with the container, removed with it (`v=True`)
        kwargs["mounts"] = [
            docker.types.Mount(target=path, source=None, type="volume") for path in spec.volumes
        ]
    if spec.extra_hosts:
        kwargs["extra_hosts"] = dict(spec.extra_hosts)
    if spec.healthcheck is not None:
        check = spec.healthcheck
        kwargs["healthcheck"] = {
            "test": ["CMD", *check.test],
            "interval": check.interval_ms * 1_000_000,  # nanoseconds
            "timeout": check.timeout_ms * 1_000_000,
            "retries": check.retries,
            "start_period": 0,
        }
    kwargs.update(_privileges(spec))
    return kwargs


def _put_files(container: Any, spec: ContainerSpec) -> None:
    """Transport tcp: the spec's files into the created container, before it starts, by
    the Engine API (put-archive): one archive per directory. Readable by every user of the
    container (the proxy runs as one of its own): the bootstrap holds the mesh's token, and
    its volume is mounted in the proxy's container alone."""
    by_dir: dict[str, list[tuple[str, bytes]]] = {}
    for path, text in spec.archive:
        directory, _, name = path.rpartition("/")
        by_dir.setdefault(directory or "/", []).append((name, text.encode()))
    for directory, files in by_dir.items():
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o444
                tar.addfile(info, io.BytesIO(data))
        if not container.put_archive(directory, buffer.getvalue()):
            raise EngineError(f"cannot put files into {directory}", spec.name)


def _privileges(spec: ContainerSpec) -> dict[str, Any]:
    """docker-py's arguments for what a container may do; only what the spec sets."""
    out: dict[str, Any] = {}
    if spec.user is not None:
        out["user"] = spec.user
    if spec.cap_drop:
        out["cap_drop"] = list(spec.cap_drop)
    if spec.cap_add:
        out["cap_add"] = list(spec.cap_add)
    if spec.security_opt:
        out["security_opt"] = list(spec.security_opt)
    if spec.read_only:
        out["read_only"] = True
    if spec.tmpfs:
        out["tmpfs"] = dict(spec.tmpfs)
    if spec.pids_limit is not None:
        out["pids_limit"] = spec.pids_limit
    if spec.mem_limit is not None:
        out["mem_limit"] = spec.mem_limit
    if spec.sysctls:
        out["sysctls"] = dict(spec.sysctls)
    return out


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc)
    return text if len(text) < 160 else text[:157] + "..."


def engine_address() -> str:
    """Where docker-py connects: DOCKER_HOST, else the default socket."""
    return os.environ.get("DOCKER_HOST") or engines.DEFAULT_ADDRESS


def _socket_exists(address: str) -> bool | None:
    if not address.startswith("unix://"):
        return None
    return os.path.exists(address[len("unix://") :])


# client -> its engine: one ask per client
_identified: weakref.WeakKeyDictionary[docker.DockerClient, EngineInfo] = (
    weakref.WeakKeyDictionary()
)


_pings: weakref.WeakKeyDictionary[docker.DockerClient, dict[str, str]] = (
    weakref.WeakKeyDictionary()
)  # client -> the headers of the ping that made it (Engine.connect)


def identify_client(client: docker.DockerClient, address: str = "") -> EngineInfo:
    """Which engine `client` talks to; an engine that does not say is taken for Docker."""
    found = _identified.get(client)
    if found is not None:
        return found
    ping: dict[str, str] = _pings.get(client) or {}
    try:
        # The ping's headers name Podman; its `/version` is not asked: on Podman it runs
        # conmon and runc to report their versions (seconds on a loaded machine).
        if not ping:
            answer = client.api.get(f"{client.api.base_url}/_ping", timeout=10)
            if answer.ok:
                ping = dict(answer.headers)
        info: dict[str, Any] = client.info()
    except docker.errors.APIError:
        info = {}
    except requests.exceptions.RequestException as exc:
        raise EngineUnavailable(f"lost the engine: {_root_cause(exc)}") from None
    found = engines.identify({}, info, address or engine_address(), ping)
    _identified[client] = found
    return found


def is_podman(client: docker.DockerClient) -> bool:
    return identify_client(client).kind is EngineKind.PODMAN


_DEPENDENTS = re.compile(r"has dependent containers which must be removed before it: ([0-9a-f, ]+)")


def _dependents(exc: docker.errors.APIError) -> list[str]:
    """The containers Podman names as still joining the one it would not remove."""
    found = _DEPENDENTS.search(str(exc.explanation or exc))
    return [d for d in re.split(r"[, ]+", found.group(1)) if d] if found else []


def _joins(raw: dict[str, Any]) -> bool:
    """A listed container that joins another's network namespace (an app, a sidecar)."""
    mode = str((raw.get("HostConfig") or {}).get("NetworkMode") or "")
    role = (raw.get("Labels") or {}).get(labels.ROLE)
    return mode.startswith("container:") or role in ("app", "sidecar")
