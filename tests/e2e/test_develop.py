"""The code-edit loop against a real engine, real BuildKit builds and real Envoy: `develop:
watch:` sync, sync+restart and restart; a rebuild that fails keeps the pods serving and says
where; per-project image tags; 10 rebuilds under load with 0 failed requests.

One mesh serves the whole module (two services: `web` syncs and restarts, `roll` rebuilds).
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from devmesh import labels
from devmesh.api import types as api
from tests.e2e.conftest import PROJECTS, Mesh, free_port, sweep

DOCKERFILE = """\
FROM busybox:1.35 AS base
RUN --mount=type=cache,target=/cache sh -c 'date >> /cache/runs; cp /cache/runs /built'
RUN --mount=type=secret,id=token sh -c 'test "$(cat /run/secrets/token)" = s3cret && touch /ok'
FROM base AS broken
RUN exit 3
FROM base AS final
COPY www/ /www/
COPY conf/ /conf/
CMD ["sh", "-c", "cp /conf/greeting /www/greeting.txt; exec httpd -f -p $DEVMESH_PORT -h /www"]
FROM final AS last
RUN exit 4
"""
COPY_CONF_LINE = DOCKERFILE.splitlines().index("COPY conf/ /conf/") + 1

MESH = """\
mesh: dev
ingress:
  port: @PORT@
  routes: [{match: {path_prefix: /}, service: web}]
defaults:
  health: {path: /healthz, interval: 200ms}
services:
  web:
    build: {context: ./web, target: final, secrets: {token: token.txt}}
    port: 8000
    develop:
      watch:
        - {path: web/www, action: sync, target: /www}
        - {path: web/conf, action: sync+restart, target: /conf}
        - {path: web/kick, action: restart}
        - {path: web/Dockerfile, action: rebuild}
  roll:
    build: {context: ./roll, target: final, secrets: {token: token.txt}}
    port: 8000
    replicas: @REPLICAS@
    develop:
      watch:
        - {path: roll, action: rebuild}
"""


def _app(directory: Path, text: str) -> None:
    (directory / "www").mkdir(parents=True)
    (directory / "conf").mkdir()
    (directory / "Dockerfile").write_text(DOCKERFILE)
    (directory / "www" / "index.html").write_text(text)
    (directory / "www" / "healthz").write_text("ok\n")
    (directory / "conf" / "greeting").write_text("hello\n")


@dataclass
class Dev:
    mesh: Mesh
    replicas: int = 1
    urls: dict[str, str] = field(default_factory=dict)

    def write(self, replicas: int) -> None:
        self.replicas = replicas
        self.mesh.write(MESH.replace("@REPLICAS@", str(replicas)))

    def port(self, service: str) -> int:
        return int(self.urls[service].rsplit(":", 1)[1].strip("/"))

    def get(self, service: str, path: str = "/") -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port(service), timeout=5)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read().decode()
        finally:
            conn.close()


def wait_for(check: Callable[[], bool], timeout: float = 20.0, every: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if check():
                return True
        time.sleep(every)
    return False


@pytest.fixture(scope="module")
def dev(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Dev]:
    directory = tmp_path_factory.mktemp("develop")
    _app(directory / "web", "web v1\n")
    _app(directory / "roll", "roll 0\n")
    (directory / "token.txt").write_text("s3cret")
    mesh = Mesh(directory, f"t{uuid.uuid4().hex[:8]}", free_port(), docker_client)
    PROJECTS.append(mesh.project)
    d = Dev(mesh)
    d.write(1)
    try:
        result = mesh.up()
        assert result.returncode == 0, result.stdout + result.stderr
        d.urls = mesh.ps()["gateway"]["services"]
        yield d
    finally:
        mesh.run("down", timeout=60)
        sweep(docker_client, mesh.project)


def _app_container(dev: Dev, service: str) -> Any:
    found = dev.mesh.client.containers.list(
        all=True,  # also while it restarts
        filters={"label": labels.selector(mesh=dev.mesh.project, service=service, role="app")},
    )
    assert len(found) == 1, [c.name for c in found]
    return found[0]


def _only_app_container_is_not(dev: Dev, old: str) -> bool:
    """The roll is over: one app container of web, a new one (the old one drained)."""
    found = dev.mesh.client.containers.list(
        filters={"label": labels.selector(mesh=dev.mesh.project, service="web", role="app")}
    )
    return [c.id for c in found] != [old] and len(found) == 1


def test_a_multi_stage_dockerfile_with_cache_and_secret_mounts_builds_into_the_projects_namespace(
    dev: Dev,
) -> None:
    assert dev.get("web") == (200, "web v1\n")
    app = _app_container(dev, "web")
    image = dev.mesh.client.images.get(app.image.id)
    assert image.labels[labels.MESH] == dev.mesh.project
    assert f"devmesh-{dev.mesh.project}/web:default" in image.tags
    assert app.exec_run(["cat", "/built"]).exit_code == 0  # the cache-mount RUN ran
    assert app.exec_run(["test", "-f", "/ok"]).exit_code == 0  # it read the build secret
    assert app.exec_run(["test", "-e", "/run/secrets/token"]).exit_code != 0  # not kept
    # `target: final`: neither the stage after it nor a sibling stage (both fail) was built.


def test_sync_serves_the_saved_file_without_a_new_container_or_a_failed_request(
    dev: Dev,
) -> None:
    before = _app_container(dev, "web").id
    with Load(dev.port("web"), limit=20) as load:
        for n in range(5):  # the file is replaced while it is being served
            (dev.mesh.directory / "web" / "www" / "index.html").write_text(f"web v2.{n}\n")
            assert wait_for(lambda n=n: dev.get("web") == (200, f"web v2.{n}\n"), timeout=5)  # type: ignore[misc]
        (dev.mesh.directory / "web" / "www" / "new").mkdir()
        (dev.mesh.directory / "web" / "www" / "new" / "page.html").write_text("new page\n")
        assert wait_for(lambda: dev.get("web", "/new/page.html") == (200, "new page\n"), 5)
    assert _app_container(dev, "web").id == before
    failed = [r for r in load.results if r[2] != "200"]
    assert load.results and not failed, failed[:5]


def test_sync_and_restart_serve_new_content_after_the_app_restarts(dev: Dev) -> None:
    assert dev.get("web", "/greeting.txt") == (200, "hello\n")
    started = _app_container(dev, "web").attrs["State"]["StartedAt"]
    # Only read at the app's start: served once the app restarted with the synced file.
    (dev.mesh.directory / "web" / "conf" / "greeting").write_text("bonjour\n")
    assert wait_for(lambda: dev.get("web", "/greeting.txt") == (200, "bonjour\n"))
    assert _app_container(dev, "web").attrs["State"]["StartedAt"] != started
    # restart alone: the app process starts again (and serves what the container holds).
    started = _app_container(dev, "web").attrs["State"]["StartedAt"]
    (dev.mesh.directory / "web" / "kick").write_text("1\n")
    assert wait_for(lambda: _app_container(dev, "web").attrs["State"]["StartedAt"] != started)
    assert wait_for(lambda: dev.get("web", "/greeting.txt") == (200, "bonjour\n"))


def test_a_dockerfile_syntax_error_is_shown_with_its_line_and_old_pods_keep_serving(
    dev: Dev,
) -> None:
    dockerfile = dev.mesh.directory / "web" / "Dockerfile"
    before = _app_container(dev, "web").id
    served = dev.get("web")
    dockerfile.write_text(DOCKERFILE.replace("COPY conf/", "COPYY conf/"))
    wanted = f"Dockerfile:{COPY_CONF_LINE}: unknown instruction: COPYY"

    def shown() -> bool:
        builds = dev.mesh.ps()["builds"]
        return any(b["error"] and wanted in b["error"] for b in builds)

    assert wait_for(shown, timeout=30, every=0.2)
    state = dev.mesh.ps()
    assert ["web", "default"] in [[f["service"], f["version"]] for f in state["failed"]]
    assert dev.get("web") == served
    assert _app_container(dev, "web").id == before
    events = [e["detail"] for e in state["events"] if e["kind"] == "image"]
    assert any(wanted in e for e in events), events
    # Fixed: it builds, the pods roll to the new image, and the error is gone.
    # (A comment alone would build the very image that runs: nothing to roll.)
    dockerfile.write_text(
        DOCKERFILE.replace("FROM base AS final\n", "FROM base AS final\nCOPY conf/ /fixed/\n")
    )
    assert wait_for(lambda: not dev.mesh.ps()["builds"], timeout=30, every=0.2), dev.mesh.ps()[
        "builds"
    ]
    assert wait_for(lambda: _only_app_container_is_not(dev, before), timeout=30, every=0.2)
    assert wait_for(lambda: dev.get("web")[0] == 200)


class Load:
    """~`rate` GET/s over keep-alive connections to one port, bounded in time; every
    answer is kept as (start, end, status or error, body)."""

    def __init__(self, port: int, rate: int = 200, threads: int = 4, limit: float = 90.0):
        self.port, self.every, self.threads, self.limit = port, threads / rate, threads, limit
        self.results: list[tuple[float, float, str, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(10)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        end = time.monotonic() + self.limit
        nxt = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < end:
            start = time.monotonic()
            try:
                conn.request("GET", "/")
                r = conn.getresponse()
                body = r.read().decode()
                outcome = str(r.status)
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                outcome, body = f"error {type(exc).__name__}", ""
                conn.close()
            with self._lock:
                self.results.append((start, time.monotonic(), outcome, body))
            nxt += self.every
            time.sleep(max(0.0, nxt - time.monotonic()))
        conn.close()

    def since(self, t: float) -> list[tuple[float, float, str, str]]:
        with self._lock:
            return [r for r in self.results if r[0] >= t]


def _seen(load: Load, since: float, text: str) -> bool:
    return any(r[3] == text for r in load.since(since))


def _rolled(dev: Dev, replicas: int) -> bool:
    """Every pod of `roll` serving is a new one: the old ones left the endpoints. Asked of
    the daemon's API in-process (a `devmesh ps` per look would cost a CPU)."""
    from devmesh.daemon import launcher

    pods = [p for p in launcher.client(dev.mesh.project).state().pods if p.service == "roll"]
    current = [p for p in pods if not p.retiring]
    old_serving = [p for p in pods if p.retiring and p.state is not api.PodState.DRAINING]
    ready = all(p.state is api.PodState.READY for p in current)
    return len(current) == replicas and ready and not old_serving


@pytest.mark.parametrize("replicas", [1, 2])
def test_ten_rebuilds_under_load_fail_no_request_and_serve_the_new_code(
    dev: Dev, replicas: int
) -> None:
    if dev.replicas != replicas:
        dev.write(replicas)
        assert wait_for(lambda: _rolled(dev, replicas), timeout=30, every=0.2)
    page = dev.mesh.directory / "roll" / "www" / "index.html"
    port = dev.port("roll")
    with Load(port) as load:
        time.sleep(0.5)
        for edit in range(1, 11):
            text = f"roll r{replicas}-{edit}\n"
            page.write_text(text)
            saved = time.monotonic()
            assert wait_for(lambda t=text, s=saved: _seen(load, s, t), timeout=30), edit  # type: ignore[misc]
            assert wait_for(lambda: _rolled(dev, replicas), timeout=30, every=0.1), edit
            rolled = time.monotonic()
            time.sleep(0.3)
            after = load.since(rolled)
            assert after and all(r[3] == text for r in after), (edit, {r[3] for r in after})
        time.sleep(0.3)
    failed = [r for r in load.results if r[2] != "200"]
    rate = len(load.results) / (load.results[-1][1] - load.results[0][0])
    assert not failed, failed[:5]
    assert rate > 100, rate  # the load was real


def test_two_projects_from_one_checkout_build_and_run_without_touching_each_others_images(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    _app(tmp_path / "app", "one\n")
    (tmp_path / "token.txt").write_text("s3cret")
    build = "{context: ./app, target: final, secrets: {token: token.txt}}"
    text = f"mesh: twin\nservices:\n  web:\n    build: {build}\n    port: 8000\n"
    (tmp_path / "devmesh.yaml").write_text(text)
    a = Mesh(tmp_path, f"a{uuid.uuid4().hex[:8]}", free_port(), docker_client)
    b = Mesh(tmp_path, f"b{uuid.uuid4().hex[:8]}", free_port(), docker_client)
    PROJECTS.extend([a.project, b.project])

    def built(mesh: Mesh) -> dict[str, str]:
        """tag -> image id of the project's devmesh-built images."""
        images = docker_client.images.list(filters={"label": labels.selector(mesh=mesh.project)})
        return {t: i.id for i in images for t in i.tags}

    try:
        for mesh in (a, b):
            result = mesh.up()
            assert result.returncode == 0, result.stdout + result.stderr
        tags_a, tags_b = built(a), built(b)
        assert set(tags_a) >= {f"devmesh-{a.project}/web:default"}
        assert all(t.startswith(f"devmesh-{a.project}/") for t in tags_a)
        assert all(t.startswith(f"devmesh-{b.project}/") for t in tags_b)
        assert not set(tags_a.values()) & set(tags_b.values())
        # b builds again from changed files: a's images and pods are untouched.
        (tmp_path / "app" / "www" / "index.html").write_text("two\n")
        result = b.up()
        assert result.returncode == 0, result.stdout + result.stderr
        assert (
            built(b)[f"devmesh-{b.project}/web:default"]
            != tags_b[f"devmesh-{b.project}/web:default"]
        )
        assert built(a) == tags_a
        # b's down removes b's images only; a keeps running its own.
        assert b.run("down", timeout=60).returncode == 0
        assert not built(b)
        assert built(a) == tags_a
        assert a.ps()["ready"] is True
    finally:
        for mesh in (a, b):
            mesh.run("down", timeout=60)
            sweep(docker_client, mesh.project)


def test_without_a_buildkit_cli_the_engine_api_builds_and_a_buildkit_dockerfile_says_why(
    tmp_path: Path, docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devmesh.adapters.images import BuildKey, ImageError, build_app, prune_built

    monkeypatch.setenv("DEVMESH_BUILDER", "api")  # as where no docker CLI has BuildKit
    project = f"l{uuid.uuid4().hex[:8]}"
    PROJECTS.append(project)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("legacy\n")
    (tmp_path / "Dockerfile").write_text("FROM busybox:1.35\nCOPY www/ /www/\n")
    key = BuildKey("web", "v1", str(tmp_path), None, (), None, (), None)
    lines: list[str] = []
    try:
        image = build_app(docker_client, project, key, lines.append)
        found = docker_client.images.get(image)
        assert f"devmesh-{project}/web:v1" in found.tags
        assert found.labels[labels.MESH] == project
        assert lines and all(line.startswith(("step ", "cached")) for line in lines), lines
        (tmp_path / "Dockerfile").write_text(
            "FROM busybox:1.35\nRUN --mount=type=cache,target=/c true\n"
        )
        with pytest.raises(ImageError, match=r"needs BuildKit .*RUN --mount"):
            build_app(docker_client, project, key, lines.append)
    finally:
        prune_built(docker_client, project, frozenset())
    assert not docker_client.images.list(filters={"label": labels.selector(mesh=project)})
