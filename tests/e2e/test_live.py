"""Live changes: the mesh file is watched and pushed to the sidecars; nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Mesh
from tests.e2e.test_runtime import SHOP, served_by, wait_for

pytestmark = pytest.mark.docker

MAIN = "        to: {v1: 80, v2: 20}"


def weights(v1: int, v2: int) -> str:
    return f"        to: {{v1: {v1}, v2: {v2}}}"


def live_shop() -> str:
    text = SHOP.replace(
        "      - name: main\n        to: {v1: 80, v2: 20}", "      - name: main\n" + MAIN
    )
    assert MAIN in text
    return text


def split(mesh: Mesh, n: int = 40) -> Counter[str]:
    return Counter(served_by(mesh.get("/catalog/x")) for _ in range(n))


def all_on(mesh: Mesh, version: str) -> bool:
    return split(mesh, 10) == Counter({f"catalog/{version}": 10})


def in_place(path: Path, text: str) -> None:
    path.write_text(text)


def rename(path: Path, text: str) -> None:  # JetBrains, VS Code with atomic save
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def vim_backup(path: Path, text: str) -> None:  # vim: original renamed away, new file written
    backup = path.with_name(path.name + "~")
    os.replace(path, backup)
    path.write_text(text)
    backup.unlink()


def truncate_then_chunks(path: Path, text: str) -> None:
    with open(path, "r+") as fh:
        fh.truncate(0)
        fh.flush()
        third = len(text) // 3
        for part in (text[:third], text[third : 2 * third], text[2 * third :]):
            fh.write(part)
            fh.flush()
            time.sleep(0.005)


def git_checkout(path: Path, text: str) -> None:
    """`git checkout` replaces the file with a committed version. The commit is made through
    the index alone: writing the file to commit it would be saves of their own, which merge
    into one burst only when git is faster than the watcher's quiet time (not under load)."""
    repo = path.parent
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    blob = subprocess.run(
        [*git, "hash-object", "-w", "--stdin"],
        input=text,
        text=True,
        check=True,
        capture_output=True,
    ).stdout.strip()
    subprocess.run([*git, "update-index", "--cacheinfo", f"100644,{blob},{path.name}"], check=True)
    subprocess.run([*git, "commit", "-qm", "next"], check=True)
    assert path.read_text() != text  # the file itself is untouched until the checkout
    subprocess.run([*git, "checkout", "-q", "HEAD", "--", path.name], check=True)


SAVES = [in_place, rename, vim_backup, truncate_then_chunks, git_checkout]


def test_every_editor_save_pattern_reloads_exactly_once(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(live_shop())
    mesh.up_ok()
    git = ["git", "-C", str(mesh.directory), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(mesh.directory)], check=True)
    subprocess.run([*git, "add", "devmesh.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "start"], check=True)
    flip = 0
    for save in SAVES:
        before = mesh.ps()
        flip = 100 - flip
        text = mesh.file.read_text()
        current = next(line for line in text.splitlines() if line.startswith("        to: {v1:"))
        save(mesh.file, text.replace(current, weights(flip, 100 - flip)))
        target = "v1" if flip == 100 else "v2"
        wait_for(lambda target=target: all_on(mesh, target), timeout=10)
        time.sleep(0.7)  # past the grace the daemon gives a half-written file
        after = mesh.ps()
        assert after["reloads"] == before["reloads"] + 1, save.__name__
        assert after["reload_failures"] == before["reload_failures"], save.__name__
        assert after["problems"] == []


def test_weight_change_moves_traffic_without_recreating_containers(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(live_shop())
    mesh.up_ok()
    before = mesh.containers()
    mesh.file.write_text(mesh.file.read_text().replace(MAIN, weights(0, 100)))
    wait_for(lambda: all_on(mesh, "v2"), timeout=10)
    assert split(mesh, 100) == Counter({"catalog/v2": 100})
    assert mesh.containers() == before


def test_invalid_edit_keeps_serving_and_reports_the_located_error(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(live_shop())
    mesh.up_ok()
    good = mesh.file.read_text()
    line = good.splitlines().index("    port: 7000") + 1
    mesh.file.write_text(good.replace("    port: 7000", "    port: seven"))
    problems = wait_for(lambda: mesh.ps()["problems"], timeout=10)
    assert problems == [
        f"{mesh.file}:{line}:11: services.stock.port: expected an integer, got 'seven'"
    ]
    assert mesh.get("/").status == 200
    assert "mesh file problem" in mesh.run("ps").stdout
    # A file that does not even parse, in the directory: the command finds the mesh that
    # serves it (not by -f/-p, as mesh.run gives them)
    mesh.file.write_text(f"mesh: {mesh.project}\nservices: {{web: [\n")
    from tests.e2e.conftest import devmesh

    in_dir = devmesh("ps", cwd=mesh.directory)
    assert in_dir.returncode == 0, in_dir.stderr
    assert f"mesh '{mesh.project}' serves it" in in_dir.stderr
    assert "YAML syntax" in in_dir.stdout  # the daemon's view of the file's problem
    mesh.file.write_text(good.replace(MAIN, weights(0, 100)))
    wait_for(lambda: all_on(mesh, "v2"), timeout=10)
    assert mesh.ps()["problems"] == []


NACKED = """
mesh: nacked
ingress:
  port: @PORT@
  routes:
    - {service: web}
services:
  web:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    # The app also listens on 7000 itself: a sidecar listener for stock there cannot bind.
    command: [sh, -c, "nc -ll -p 7000 -e cat & exec sh /app/entrypoint.sh"]
  stock:
    build: @APP@
    image: devmesh-shop-app:1
    port: 7000
    protocol: tcp
    env: {MODE: tcp}
"""


def test_config_envoy_rejects_is_shown_as_a_nack_with_its_reason(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(NACKED)
    mesh.up_ok()
    mesh.file.write_text(
        mesh.file.read_text().replace("    port: 8000\n", "    port: 8000\n    calls: [stock]\n", 1)
    )

    def nacked() -> Any:
        pods = {p["service"]: p for p in mesh.ps()["pods"]}
        return pods["web"]["xds"]["nack"]

    nack = wait_for(nacked, timeout=15)
    assert nack["type"] == "Listener"
    assert "cannot bind" in nack["message"] and ":7000" in nack["message"]
    text = mesh.run("ps").stdout
    assert "NACK (Listener)" in text and "config NACKed" in text
    assert mesh.get("/").status == 200  # Envoy serves on with what it had


def test_shift_applies_live_and_writes_the_file_back_with_comments(make_mesh: Any) -> None:
    text = live_shop().replace(
        "      - name: main\n",
        "      # the main split, tuned by hand\n      - name: main  # keep\n",
    )
    mesh: Mesh = make_mesh(text)
    mesh.up_ok()
    before_ids = mesh.containers()
    original = mesh.file.read_text()
    result = mesh.run("shift", "catalog", "v1=0", "v2=100")
    assert result.returncode == 0, result.stderr
    assert "route 'main'" in result.stdout
    wait_for(lambda: all_on(mesh, "v2"), timeout=10)
    after = mesh.file.read_text()
    assert after == original.replace(MAIN, weights(0, 100))
    assert "# the main split, tuned by hand" in after and "- name: main  # keep" in after
    assert mesh.containers() == before_ids
    bad = mesh.run("shift", "catalog", "v1=50", "v3=50")
    assert bad.returncode == 1 and "no version 'v3'" in bad.stderr
    assert mesh.file.read_text() == after


def test_edit_made_while_the_daemon_was_dead_applies_on_restart(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(live_shop())
    mesh.up_ok()
    pid = mesh.ps()["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: mesh.ps()["phase"] == "no daemon")
    mesh.file.write_text(mesh.file.read_text().replace(MAIN, weights(0, 100)))
    assert mesh.get("/catalog/x").status == 200  # still serving its last config
    mesh.up_ok()
    wait_for(lambda: all_on(mesh, "v2"), timeout=10)


RETRYING = SHOP.replace(
    "      - name: main\n        to: {v1: 80, v2: 20}",
    "      - name: main\n        to: {v1: 80, v2: 20}\n"
    "        retries: {attempts: 3, on: [5xx]}\n"
    "        fault: {abort: {status: 503, percent: 50}}",
)


def test_fault_is_injected_at_the_target_so_retries_act_on_it(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(RETRYING)
    mesh.up_ok()
    statuses = Counter(mesh.get("/catalog/x").status for _ in range(200))
    # Each attempt fails alone with p=0.5; with 3 retries a request fails with p=1/16.
    assert 150 <= statuses[200] <= 200, statuses
    gateway = f"{mesh.project}-gateway"
    stats = mesh.admin_stats(gateway, r"^cluster\.catalog\|v[12]\.upstream_rq_retry$")
    assert sum(stats.values()) >= 50, stats  # the caller's retry policy at work
    faulted = sum(
        mesh.admin_stats(
            f"{mesh.project}-catalog-{v}-0", r"^http\.in\.fault\.aborts_injected$"
        ).get("http.in.fault.aborts_injected", 0)
        for v in ("v1", "v2")
    )
    assert faulted >= 50  # injected by the target pods' own sidecars


def test_a_service_added_and_taken_out_under_load_keeps_the_gateway_and_its_urls(
    make_mesh: Any,
) -> None:
    """The gateway publishes spare hop ports: a service added or taken out within a block
    recreates no gateway, so the ingress serves on and the other services keep their URLs."""
    from tests.e2e.conftest import request

    one = (
        "mesh: grow\ningress:\n  port: @PORT@\n  routes: [{name: site, service: web}]\n"
        "services:\n  web: {build: @APP@, image: devmesh-shop-app:1, port: 8000}\n"
    )
    two = one + "  extra: {build: @APP@, image: devmesh-shop-app:1, port: 8000}\n"
    mesh: Mesh = make_mesh(one)
    mesh.up_ok()
    gateway = {n: i for n, i in mesh.containers().items() if n.endswith("-gateway")}
    url = mesh.ps()["gateway"]["services"]["web"]
    failed: Counter[int] = Counter()

    def load_until(done: Any) -> None:
        deadline = time.monotonic() + 40
        while not done():
            assert time.monotonic() < deadline, f"not done within 40 s; failed: {failed}"
            for _ in range(10):  # bounded: 10 requests between checks
                status = mesh.get("/").status
                if status != 200:
                    failed[status] += 1

    mesh.write(two)
    load_until(lambda: "extra" in mesh.ps()["gateway"]["services"] and mesh.ps()["ready"])
    port = int(mesh.ps()["gateway"]["services"]["extra"].rsplit(":", 1)[1].strip("/"))
    assert request(port, "/").status == 200  # the new service's URL serves
    mesh.write(one)
    load_until(lambda: "extra" not in mesh.ps()["gateway"]["services"])
    assert failed == Counter()
    assert {n: i for n, i in mesh.containers().items() if n.endswith("-gateway")} == gateway
    assert mesh.ps()["gateway"]["services"]["web"] == url
