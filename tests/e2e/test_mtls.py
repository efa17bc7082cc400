"""mTLS between sidecars and authorization from `calls:`, on one real mesh (real Docker, real
Envoy, the real `devmesh` command, certificates from a CA of the test's own).

The mesh starts STRICT with 4 s certificates (renewed every 2 s). `web` calls `api`; `other`
may route everywhere (`egress: all`) but lists nothing in `calls:`, so `api`'s sidecar
refuses it. A busybox container on the mesh network plays a peer outside the mesh.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from devmesh.api import codec
from devmesh.client import DaemonClient
from devmesh.unixhttp import UnixHTTPConnection
from tests.e2e.conftest import (
    ENV,
    Mesh,
    PacedLoad,
    devmesh,
    free_port,
    module_mesh,
    outsider_on,
)
from tests.e2e.test_runtime import wait_for

pytestmark = pytest.mark.docker

MESH = """
mesh: tlsmesh
tls: {mode: @MODE@, cert_lifetime: 4s}
ingress:
  port: @PORT@
  routes: [{name: site, service: web}]
defaults:
  health: {path: /healthz, interval: 1s}
services:
  web:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    env: {UPSTREAMS: "api db:7000"}
    calls: [api, db]
  db:
    build: @APP@
    image: devmesh-shop-app:1
    port: 7000
    protocol: tcp
    env: {MODE: tcp}
    health: {interval: 1s}
  api:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    allow:
      - {method: GET}
  other:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    egress: all
"""
API_ID = "spiffe://devmesh.local/mesh/tlsmesh/service/api"


def _text(mode: str) -> str:
    return MESH.replace("@MODE@", mode)


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Mesh]:
    with module_mesh(tmp_path_factory, docker_client, _text("STRICT")) as made:
        yield made


@pytest.fixture(scope="module")
def outsider(mesh: Mesh) -> Iterator[Any]:
    with outsider_on(mesh, seconds=300) as container:
        yield container


def _state(mesh: Mesh) -> dict[str, Any]:
    """The daemon's state document (what `ps --json` prints), from its API: a `ps`
    subprocess per poll costs seconds on a loaded machine."""
    data: dict[str, Any] = codec.encode(DaemonClient(mesh.state_dir() / "api.sock").state())
    return data


def _pods(mesh: Mesh) -> dict[str, dict[str, Any]]:
    return {p["service"]: p for p in _state(mesh)["pods"]}


def _wget_from_app(mesh: Mesh, service: str, url: str, *extra: str) -> tuple[int, str]:
    app = mesh.client.containers.get(f"{mesh.project}-{service}-default-0-app")
    code, out = app.exec_run(["wget", "-q", "-O", "-", *extra, url])
    return code, out.decode(errors="replace")


def _outsider_get(outsider: Any, address: str) -> tuple[int, str]:
    code, out = outsider.exec_run(["wget", "-q", "-O", "-", f"http://{address}:15006/healthz"])
    return code, out.decode(errors="replace")


def _certs(mesh: Mesh, pod: str) -> list[str]:
    """Serial numbers of the certificates the pod's sidecar holds now (its admin /certs)."""
    import json

    from devmesh.daemon.state import StateDir

    conn = UnixHTTPConnection(StateDir.for_project(mesh.project).admin_socket(pod), 2)
    try:
        conn.request("GET", "/certs")
        data = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return sorted(
        {c["serial_number"] for entry in data["certificates"] for c in entry["cert_chain"]}
    )


def _api_door(mesh: Mesh) -> int:
    url = _state(mesh)["gateway"]["services"]["api"]
    return int(url.rsplit(":", 1)[1].strip("/"))


# -- the tests, in the order they run on the one mesh ---------------------------------------


def test_ps_shows_each_pods_identity_mode_and_certificate_expiry(mesh: Mesh) -> None:
    pods = _pods(mesh)
    tls = pods["api"]["tls"]
    assert tls["identity"] == API_ID and tls["mode"] == "STRICT"
    assert 0 < tls["not_after"] - time.time() <= 4.5
    assert _state(mesh)["gateway"]["tls"]["identity"].endswith("/mesh/tlsmesh/gateway")
    text = mesh.run("ps").stdout
    assert API_ID in text and "STRICT" in text, text


def test_a_declared_caller_gets_200_an_undeclared_one_403(mesh: Mesh) -> None:
    assert _wget_from_app(mesh, "web", "http://api/healthz") == (0, "ok\n")
    code, out = _wget_from_app(mesh, "other", "http://api/healthz")
    assert code != 0 and "403" in out, out
    # `allow:` narrows the declared caller too: GET only
    code, out = _wget_from_app(mesh, "web", "http://api/healthz", "--post-data", "x")
    assert code != 0 and "403" in out, out
    stats = mesh.run("ps").stdout
    pod_line = next(i for i, line in enumerate(stats.splitlines()) if "-api-" in line)
    assert "denied: other 1, web 1" in "\n".join(stats.splitlines()[pod_line : pod_line + 3])

    # ... and the access log names each refused caller, on the api pod's inbound side
    def denials() -> dict[str, tuple[str, str]]:
        result = mesh.run("logs", "--access", "api", "--json", "--status", "403")
        assert result.returncode == 0, result.stdout + result.stderr
        entries = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        return {
            e["source_service"]: (e["method"], e["detail"])
            for e in entries
            if e["reporter"] == "inbound" and e["service"] == "api"
        }

    deadline = time.monotonic() + 10
    while len(found := denials()) < 2 and time.monotonic() < deadline:
        time.sleep(0.3)  # Envoy sends its access-log lines every 0.5 s
    assert set(found) == {"other", "web"}, found
    assert found["web"][0] == "POST" and found["other"][0] == "GET"
    assert all(detail.startswith("rbac_access_denied") for _, detail in found.values()), found


def test_http_and_tcp_calls_travel_over_mtls(mesh: Mesh) -> None:
    body = mesh.get("/").body  # ingress -> web -> (mTLS) -> api, and -> (mTLS, tcp) -> db
    assert "-> api: api/default" in body and "-> db: db/default: widget in stock: 42" in body, body
    handshakes = mesh.admin_stats(f"{mesh.project}-db-default-0", "listener.*ssl.handshake")
    assert sum(handshakes.values()) >= 1, handshakes


def test_strict_refuses_a_container_outside_the_mesh(mesh: Mesh, outsider: Any) -> None:
    code, out = _outsider_get(outsider, _pods(mesh)["api"]["address"])
    assert code != 0, out


def test_openssl_sees_the_spiffe_id_and_a_chain_to_the_local_ca(mesh: Mesh) -> None:
    import os

    address = _pods(mesh)["api"]["address"]
    ca = Path(os.environ["DEVMESH_CA_DIR"]) / "ca.pem"
    shown = subprocess.run(
        ["openssl", "s_client", "-connect", f"{address}:15006", "-CAfile", str(ca), "-showcerts"],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    ).stdout
    assert "Verify return code: 0 (ok)" in shown, shown
    leaf = shown[
        shown.index("-----BEGIN CERTIFICATE-----") : shown.index("-----END CERTIFICATE-----") + 25
    ]
    sans = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName"],
        input=leaf,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert f"URI:{API_ID}" in sans, sans


def test_certificates_rotate_under_load_without_a_failed_request(mesh: Mesh) -> None:
    pod = f"{mesh.project}-api-default-0"
    seen = set(_certs(mesh, pod))
    with PacedLoad(_api_door(mesh)) as load:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(seen) < 5:  # CA + the first + 3 rotations
            seen.update(_certs(mesh, pod))
            time.sleep(0.3)
    rate = load.ok / load.seconds
    print(
        f"rotation: {len(seen) - 2} rotations, {load.ok} ok at {rate:.0f}/s",
        f"failures {load.failures[:5]}",
    )
    # the CA's serial and the first leaf's are not rotations
    assert len(seen) - 2 >= 3, seen
    assert load.failures == [] and load.ok > 0


def test_permissive_to_strict_and_back_fails_no_declared_request(mesh: Mesh, outsider: Any) -> None:
    address = _pods(mesh)["api"]["address"]
    with PacedLoad(_api_door(mesh)) as load:
        for mode, outsider_served in (
            ("PERMISSIVE", True),
            ("STRICT", False),
            ("PERMISSIVE", True),
        ):
            mesh.write(_text(mode))
            wait_for(lambda m=mode: _pods(mesh)["api"]["tls"]["mode"] == m, timeout=20)

            def served(want: bool = outsider_served) -> bool:
                return (_outsider_get(outsider, address)[0] == 0) == want

            wait_for(served, timeout=20, every=0.3)
    assert load.failures == [] and load.ok > 0, load.failures[:5]


def test_tls_turned_off_and_on_live_syncs_every_sidecar_at_once_with_no_outage(mesh: Mesh) -> None:
    """DISABLED <-> STRICT replaces every caller's clusters (a transport socket more or
    less): each replaced cluster asks for its endpoints again, unchanged, and the sidecars
    stop or start watching secrets. Before the server answered such a request, the old
    clusters served on for Envoy's 15 s initial-fetch timeout (503 UF: TLS against
    plaintext), and a sidecar that stopped watching secrets never counted as synced."""

    def all_synced(mode: str) -> bool:
        state = _state(mesh)
        pods = state["pods"]
        want = None if mode == "DISABLED" else mode
        return (
            all(p["xds"]["synced"] for p in pods)
            and state["gateway"]["xds"]["synced"]
            and all((p["tls"] or {}).get("mode") == want for p in pods)
        )

    took = []
    with PacedLoad(_api_door(mesh)) as load:
        for mode in ("DISABLED", "STRICT", "DISABLED", "PERMISSIVE"):
            t0 = time.monotonic()
            mesh.write(_text(mode))
            assert wait_for(lambda m=mode: all_synced(m), timeout=12, every=0.2), (
                mode,
                _state(mesh)["pods"],
            )
            took.append(round(time.monotonic() - t0, 1))
            time.sleep(1.5)  # requests through the new config, after the old drained
    print(f"tls switches synced after {took} s; {load.ok} ok, failures {load.failures[:5]}")
    # A caller and its callee take a DISABLED <-> STRICT change milliseconds apart: the
    # requests in that instant can fail (README; PERMISSIVE in between avoids it). Measured:
    # 0 to 5 of ~1,400 here, more when the machine is busy. Before the fix, every request
    # failed for 15 s (thousands here): under 1 % is the instant, not an outage.
    assert len(load.failures) <= max(4, load.ok // 100) and load.ok > 500, load.failures[:5]


def test_an_unusable_ca_directory_is_a_clear_error_and_the_mesh_keeps_serving(
    mesh: Mesh, tmp_path: Path
) -> None:
    bad = tmp_path / "ca"
    bad.mkdir(mode=0o700)
    (bad / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnot one\n")
    (bad / "ca-key.pem").write_text("not a key")
    (bad / "ca-key.pem").chmod(0o600)
    second = tmp_path / "devmesh.yaml"
    second.write_text(
        _text("STRICT").replace("@APP@", str(mesh.file.parent)).replace("@PORT@", str(free_port()))
    )
    project = f"t{uuid.uuid4().hex[:8]}"
    result = devmesh(
        "up", "-d", "-f", str(second), "-p", project,
        env={**ENV, "DEVMESH_CA_DIR": str(bad)}, timeout=60,
    )  # fmt: skip
    assert devmesh("-p", project, "down", timeout=60).returncode == 0  # its state dir too
    assert result.returncode != 0
    assert f"{bad}/ca.pem is not a PEM certificate" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert _wget_from_app(mesh, "web", "http://api/healthz") == (0, "ok\n")
