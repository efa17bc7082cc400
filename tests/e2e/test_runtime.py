"""`devmesh up / down / ps` against a real Docker engine and real Envoy sidecars."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest

from devmesh.core.explain import explain
from devmesh.core.load import load_path
from tests.e2e.conftest import APP, ENV, Mesh, request

SHOP = """
mesh: shop
ingress:
  port: @PORT@
  routes:
    - {name: api, match: {path_prefix: /catalog/}, service: catalog}
    - {name: site, service: frontend}
services:
  frontend:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    env: {UPSTREAMS: "catalog stock:7000"}
    calls: [catalog, stock]
    health: {path: /healthz, interval: 1s}
  catalog:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    health: {path: /healthz, interval: 1s}
    versions:
      v1: {}
      v2: {}
    routes:
      - name: canary
        match: {headers: {x-canary: "1"}}
        to: v2
      - name: main
        to: {v1: 80, v2: 20}
  stock:
    build: @APP@
    image: devmesh-shop-app:1
    port: 7000
    protocol: tcp
    env: {MODE: tcp}
"""

pytestmark = pytest.mark.docker


def served_by(resp: Any) -> str:
    return str(resp.headers.get("x-devmesh-served-by", ""))


def wait_for(check: Any, timeout: float = 30, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"not true within {timeout}s (last: {last!r})")


def follow_logs(mesh: Mesh, service: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`devmesh logs SERVICE --follow` running, and the list its output lines go to."""
    command = [sys.executable, "-m", "devmesh", "-f", str(mesh.file), "-p", mesh.project]
    proc = subprocess.Popen(
        [*command, "logs", service, "-f"],  # -f after `logs` follows, as in compose
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    seen: list[str] = []
    threading.Thread(target=lambda: seen.extend(proc.stdout or ()), daemon=True).start()
    return proc, seen


def test_request_through_ingress_crosses_the_sidecars(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(SHOP)
    mesh.up_ok()
    resp = mesh.get("/")
    assert resp.status == 200, resp
    assert served_by(resp) == "frontend/default"  # added by frontend's inbound sidecar
    assert "x-envoy-upstream-service-time" in resp.headers  # set by the gateway's router
    assert "-> catalog: catalog/v" in resp.body  # frontend called catalog by name
    assert "-> stock: stock/default: widget in stock: 42" in resp.body  # and stock over TCP
    pod = f"{mesh.project}-frontend-default-0"
    out = mesh.admin_stats(pod, r"^http\.out\|catalog\.downstream_rq_total$")
    assert out["http.out|catalog.downstream_rq_total"] >= 1  # the app's call left via its sidecar
    tcp = mesh.admin_stats(pod, r"^tcp\.out\|stock\.downstream_cx_total$")
    assert tcp["tcp.out|stock.downstream_cx_total"] >= 1
    counts = [
        mesh.admin_stats(f"{mesh.project}-catalog-{v}-0", r"^http\.in\.downstream_rq_total$")
        for v in ("v1", "v2")
    ]
    assert sum(c.get("http.in.downstream_rq_total", 0) for c in counts) >= 1


def test_one_thousand_requests_split_80_20_within_five_points(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(SHOP)
    mesh.up_ok()
    seen: Counter[str] = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", mesh.port, timeout=10)
    try:
        for _ in range(1000):
            resp = request(mesh.port, "/catalog/x", conn=conn)
            assert resp.status == 200
            seen[served_by(resp)] += 1
    finally:
        conn.close()
    v1 = seen["catalog/v1"] / 10
    assert set(seen) == {"catalog/v1", "catalog/v2"}
    assert 75 <= v1 <= 85, seen


EXPLAINED = """
mesh: explained
ingress:
  port: @PORT@
  routes:
    - {name: api, match: {path_prefix: /api/}, service: api, rewrite_prefix: /}
services:
  api:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    health: {path: /healthz, interval: 1s}
    versions: {a: {}, b: {}, c: {}, d: {}}
    routes:
      - {name: canary, match: {headers: {x-canary: {present: true}}}, to: b}
      - {name: exact, match: {path: /exact, method: GET}, to: c}
      - {name: posts, match: {method: POST}, to: d}
      - {name: query, match: {path_prefix: /q, query: {beta: {regex: "[0-9]+"}}}, to: b}
      - {name: regex, match: {path_regex: "/items/[0-9]+"}, to: c}
      - {name: rest, to: a}
"""

SAMPLES = [
    ("GET", "/api/anything", {}),
    ("GET", "/api/anything", {"x-canary": ""}),
    ("GET", "/api/exact", {}),
    ("GET", "/api/exact?x=1", {}),
    ("POST", "/api/exact", {}),
    ("GET", "/api/q?beta=12", {}),
    ("GET", "/api/q?beta=x", {}),
    ("GET", "/api/q?alpha=1&beta=7", {}),
    ("GET", "/api/items/42", {}),
    ("GET", "/api/items/42?y", {}),
    ("GET", "/api/items/x", {}),
    ("GET", "/elsewhere", {}),
]


def test_explain_agrees_with_real_traffic(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(EXPLAINED)
    mesh.up_ok()
    model = load_path(str(mesh.file))
    for method, path, headers in SAMPLES:
        e = explain(model, method, f"http://127.0.0.1:{mesh.port}{path}", list(headers.items()))
        last = e.stages[-1]
        resp = mesh.get(path, method=method, headers=headers)
        if last.route is None:
            assert resp.status == 404, (method, path, resp)
            continue
        (target,) = last.route.to  # type: ignore[union-attr]
        assert resp.status == 200, (method, path, resp)
        assert served_by(resp) == f"api/{target.version}", (method, path, headers, resp.headers)


def test_second_up_changes_nothing_and_a_changed_image_rolls_only_that_service(
    make_mesh: Any, docker_client: Any
) -> None:
    mesh: Mesh = make_mesh(SHOP)
    mesh.up_ok()
    before = mesh.containers()
    mesh.up_ok()
    assert mesh.containers() == before
    # Another image for catalog only: same files, but a different image id.
    docker_client.images.build(
        path=str(APP),
        tag="devmesh-test-variant:1",
        labels={"dev.devmesh.managed": "1", "variant": mesh.project},
    )
    catalog = "  catalog:\n    build: @APP@\n    image: devmesh-shop-app:1\n"
    assert catalog in SHOP
    mesh.write(SHOP.replace(catalog, "  catalog:\n    image: devmesh-test-variant:1\n"))
    mesh.up_ok()
    # catalog's pods roll: a new pod each (generation 1); the old ones drain and go.
    catalog = f"{mesh.project}-catalog-"
    old = {name for name in before if name.startswith(catalog)}
    assert wait_for(lambda: not set(mesh.containers()) & old)
    after = mesh.containers()
    rolled = {re.sub(r"^(.*-catalog-v\d-\d)", r"\1-g1", name) for name in old}
    assert {name for name in after if name.startswith(catalog)} == rolled
    unchanged = {name: cid for name, cid in before.items() if name not in old}
    assert {name: cid for name, cid in after.items() if name not in rolled} == unchanged
    assert wait_for(lambda: mesh.get("/catalog/x").status == 200)


def test_daemon_sigkill_then_up_adopts_without_duplicates(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(SHOP)
    mesh.up_ok()
    before = mesh.containers()
    pid = mesh.ps()["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _alive(pid))
    # The sidecars keep their last config: traffic still flows with no control plane.
    assert mesh.get("/").status == 200
    ps = mesh.ps()
    assert ps["phase"] == "no daemon" and len(ps["pods"]) == 4
    mesh.up_ok()
    assert mesh.containers() == before
    assert mesh.get("/").status == 200
    assert mesh.ps()["ready"] is True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours would still answer; the daemon is not our child
    return True


def test_down_removes_every_labelled_container_and_network(
    make_mesh: Any, docker_client: Any
) -> None:
    mesh: Mesh = make_mesh(SHOP)
    mesh.up_ok()
    assert len(mesh.containers()) == 13  # 4 pods x 3 + gateway
    result = mesh.run("down")
    assert result.returncode == 0, result.stderr
    assert "removed 13 containers, 1 network" in result.stdout
    assert mesh.containers() == {}
    nets = docker_client.networks.list(filters={"label": f"dev.devmesh.mesh={mesh.project}"})
    assert nets == []
    assert not mesh.state_dir().exists()
    again = mesh.run("down")
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_killed_app_is_restarted_and_traffic_recovers_sidecar_untouched(
    make_mesh: Any, docker_client: Any
) -> None:
    mesh: Mesh = make_mesh(SHOP)
    mesh.up_ok()
    pod = f"{mesh.project}-frontend-default-0"
    sidecar = docker_client.containers.get(f"{pod}-sidecar")
    started = sidecar.attrs["State"]["StartedAt"]
    docker_client.containers.get(f"{pod}-app").kill()
    wait_for(lambda: docker_client.containers.get(f"{pod}-app").status == "running")
    wait_for(lambda: mesh.get("/").status == 200)
    sidecar.reload()
    assert sidecar.status == "running"
    assert sidecar.attrs["State"]["StartedAt"] == started


def test_unknown_image_fails_fast_naming_the_service(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(
        SHOP.replace(
            "  stock:\n    build: @APP@\n    image: devmesh-shop-app:1",
            "  stock:\n    image: devmesh-no-such-image:0",
        )
    )
    started = time.monotonic()
    result = mesh.up()
    assert result.returncode == 3, result.stdout + result.stderr
    assert time.monotonic() - started < 45
    assert "stock/default: image devmesh-no-such-image:0 not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert mesh.get("/catalog/x").status == 200  # the rest of the mesh serves


def test_app_that_exits_at_once_is_reported(make_mesh: Any) -> None:
    text = SHOP.replace(
        "    env: {MODE: tcp}",
        "    env: {MODE: tcp}\n    command: [sh, -c, 'echo giving up; exit 3']",
    )
    mesh: Mesh = make_mesh(text)
    result = mesh.run("up", "-d", "--wait", "--timeout", "10")
    assert result.returncode == 3
    assert "stock/default" in result.stderr and "app exiting (exit code 3" in result.stderr
    # `logs --follow` shows a crash-looping app's last words too (not only running apps).
    proc, seen = follow_logs(mesh, "stock")
    try:
        wait_for(lambda: any("giving up" in line for line in list(seen)), 20)
    finally:
        proc.kill()  # the process this test started
        proc.wait(10)


def test_ingress_port_in_use_is_refused_and_the_running_mesh_is_left_alone(make_mesh: Any) -> None:
    first: Mesh = make_mesh(SHOP)
    first.up_ok()
    second: Mesh = make_mesh(SHOP)
    second.port = first.port
    second.write(SHOP)
    result = second.up()
    assert result.returncode == 1
    assert f"ingress port 127.0.0.1:{first.port} is in use" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert second.containers() == {}
    assert first.get("/").status == 200
    # Port flags given to an `up` that reloads the running daemon: refused, not ignored
    for flag in ("--ingress-port", "--metrics-port"):
        moved = first.up(flag, str(first.port + 1))
        assert moved.returncode == 1, moved.stderr
        assert f"runs on port {first.port}" in moved.stderr or "runs without it" in moved.stderr
        assert f"{flag} is taken when the daemon starts" in moved.stderr
    same = first.up("--ingress-port", str(first.port))  # what runs: a plain reload
    assert same.returncode == 0, same.stderr
    assert first.get("/").status == 200
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        third: Mesh = make_mesh(SHOP)
        third.port = other.getsockname()[1]
        third.write(SHOP)
        refused = third.up()
        assert refused.returncode == 1 and "in use" in refused.stdout + refused.stderr


def test_no_engine_gives_a_clear_message(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(SHOP)
    env = {**ENV, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    for args in (("up", "-d"), ("down",), ("ps",)):
        result = mesh.run(*args, env=env)
        assert result.returncode == 1, args
        assert "cannot reach the Docker engine" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_broken_mesh_file_keeps_the_running_mesh_serving(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(SHOP)
    mesh.up_ok()
    before = mesh.containers()
    mesh.file.write_text(mesh.file.read_text().replace("port: 7000", "port: seven"))
    result = mesh.up()
    assert result.returncode == 1
    assert "services.stock.port: expected an integer" in result.stderr
    assert mesh.containers() == before
    assert mesh.get("/").status == 200


def test_ps_shows_pods_addresses_and_acks(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(SHOP)
    mesh.up_ok()
    data = mesh.ps()
    assert data["ready"] is True
    pods = {p["pod"]: p for p in data["pods"]}
    assert set(pods) == {
        f"{mesh.project}-{name}"
        for name in ("frontend-default-0", "catalog-v1-0", "catalog-v2-0", "stock-default-0")
    }
    for p in pods.values():
        assert p["xds"]["synced"] and p["xds"]["nack"] is None and p["address"]
    text = mesh.run("ps").stdout
    assert "ACK" in text and "ready" in text
    json.dumps(data)


def test_logs_show_the_app_output(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(SHOP)
    mesh.up_ok()
    result = mesh.run("logs", "catalog")
    assert result.returncode == 0
    assert "catalog/v1: http on :8000" in result.stdout
    unknown = mesh.run("logs", "catalgo")
    assert unknown.returncode == 1 and "did you mean 'catalog'" in unknown.stderr


def test_logs_follow_replaced_pods_and_end_when_the_mesh_is_down(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(SHOP)
    mesh.up_ok()
    proc, seen = follow_logs(mesh, "catalog")

    def started() -> int:  # the app's first line, once per container
        return sum("http on :8000" in line for line in list(seen))

    try:
        wait_for(lambda: started() == 2, 20)
        assert all(line.startswith(f"{mesh.project}-catalog-v") for line in seen), seen
        # A new spec for catalog: both its containers are replaced and followed anew.
        marker = "    port: 8000\n    health: {path: /healthz, interval: 1s}\n    versions:"
        assert marker in mesh.file.read_text()
        changed = marker.replace("versions:", "env: {X: '1'}\n    versions:")
        mesh.write(SHOP.replace(marker, changed))
        mesh.up_ok()
        wait_for(lambda: started() == 4, 30)
        assert mesh.run("down").returncode == 0
        assert proc.wait(timeout=20) == 0
        assert "stopped following" in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()  # the process this test started
            proc.wait(10)


def test_second_up_with_a_missing_image_fails_and_old_pods_keep_serving(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(SHOP)
    mesh.up_ok()
    before = mesh.containers()
    catalog = "  catalog:\n    build: @APP@\n    image: devmesh-shop-app:1\n"
    mesh.write(SHOP.replace(catalog, "  catalog:\n    image: devmesh-no-such-image:9\n"))
    result = mesh.up()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "catalog/v2: image devmesh-no-such-image:9 not found" in result.stderr
    assert mesh.containers() == before  # nothing was torn down for an image it cannot run
    canary = mesh.get("/catalog/x", headers={"x-canary": "1"})
    assert canary.status == 200 and served_by(canary) == "catalog/v2"
    failed = {(f["service"], f["version"]) for f in mesh.ps()["failed"]}
    assert failed == {("catalog", "v1"), ("catalog", "v2")}


def test_ctrl_c_on_a_foreground_up_removes_the_mesh_and_exits_130(make_mesh: Any) -> None:
    mesh: Mesh = make_mesh(SHOP)
    command = [sys.executable, "-m", "devmesh", "-f", str(mesh.file), "-p", mesh.project]
    proc = subprocess.Popen(
        [*command, "up", "--no-tui"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        # a shell's job control starts background jobs with SIGINT ignored: not this one
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen: list[str] = []
    threading.Thread(target=lambda: seen.extend(proc.stdout or ()), daemon=True).start()
    try:
        wait_for(lambda: any(line.startswith("serving;") for line in seen), timeout=90)
        assert mesh.get("/").status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(seen)
    assert "stopping the mesh" in output and "Traceback" not in output, output
    assert mesh.containers() == {}
    gone = mesh.run("ps")  # as compose: an empty list and 0, but saying it does not run
    assert gone.returncode == 0 and f"mesh '{mesh.project}' does not run" in gone.stderr


def test_down_while_up_waits_says_the_mesh_was_stopped(make_mesh: Any) -> None:
    never = (
        "mesh: never\nservices:\n  web:\n    build: @APP@\n    image: devmesh-shop-app:1\n"
        "    port: 8000\n    command: [sh, -c, 'exec sleep 300']  # serves nothing: never ready\n"
        "    health: {path: /healthz, interval: 1s}\n"
    )
    mesh: Mesh = make_mesh(never)
    command = [sys.executable, "-m", "devmesh", "-f", str(mesh.file), "-p", mesh.project]
    waiting = subprocess.Popen(
        [*command, "up", "-d", "--wait", "--timeout", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        wait_for(lambda: mesh.containers(), timeout=60)  # it runs, never ready
        time.sleep(1)
        assert mesh.run("down", timeout=60).returncode == 0
        _, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 1, err
    assert f"mesh '{mesh.project}' was stopped while `up` waited" in err, err
    assert "does not answer" not in err and "Traceback" not in err, err


def test_down_from_a_copy_of_the_file_elsewhere_says_which_file_the_mesh_was_served_from(
    make_mesh: Any, tmp_path: Any
) -> None:
    from tests.e2e.conftest import devmesh

    mesh: Mesh = make_mesh(SHOP)
    mesh.up_ok()
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    (copy / "devmesh.yaml").write_text(mesh.file.read_text())
    down = devmesh("-p", mesh.project, "down", cwd=copy)  # named: nothing to say
    assert down.returncode == 0 and "is served from" not in down.stderr, down.stderr
    mesh.up_ok()
    text = mesh.file.read_text()
    name = next(line for line in text.splitlines() if line.startswith("mesh:"))
    (copy / "devmesh.yaml").write_text(text.replace(name, f"mesh: {mesh.project}"))
    down = devmesh("down", cwd=copy)
    assert down.returncode == 0, down.stderr
    assert f"is served from {mesh.file.resolve()}, not from" in down.stderr, down.stderr
    assert mesh.containers() == {}
