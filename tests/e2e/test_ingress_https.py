"""HTTPS at the ingress against real Envoy: `ingress: {tls: true}` with a fresh local CA,
trusted through `devmesh ca --export` by curl, Python's ssl and `openssl s_client`; then the
user's own files, bad ones refused with a located problem while the gateway keeps serving,
and a good one served live. One mesh for the module."""

from __future__ import annotations

import datetime as dt
import http.client
import shutil
import socket
import ssl
import subprocess
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
from cryptography import x509

from devmesh.client import DaemonClient
from tests.e2e.conftest import ENV, PROJECTS, Mesh, devmesh, free_port, sweep
from tests.e2e.test_runtime import wait_for
from tests.unit.test_ingress_tls import make_pair

pytestmark = pytest.mark.docker

MESH = """
mesh: https
ingress:
  port: @PORT@
  tls: @TLS@
  routes: [{name: site, service: web}]
services:
  web:
    build: @APP@
    image: devmesh-shop-app:1
    port: 8000
    health: {path: /healthz, interval: 1s}
"""


class Https:
    def __init__(self, mesh: Mesh, env: dict[str, str], directory: Path) -> None:
        self.mesh, self.env, self.directory = mesh, env, directory
        self.ca = directory / "exported-ca.pem"
        self.daemon = DaemonClient(mesh.state_dir() / "api.sock")  # quicker than `ps`

    def set_tls(self, tls: str) -> None:
        text = MESH.replace("@TLS@", tls)
        self.mesh.write(text)

    def get(self, cafile: Path, server_hostname: str = "localhost") -> tuple[int, str, bytes]:
        """GET / over HTTPS to 127.0.0.1 trusting only `cafile`, verifying the certificate
        for `server_hostname`: (status, body, the served leaf as DER)."""
        context = ssl.create_default_context(cafile=str(cafile))
        raw = socket.create_connection(("127.0.0.1", self.mesh.port), timeout=10)
        tls = context.wrap_socket(raw, server_hostname=server_hostname)
        conn = http.client.HTTPConnection("127.0.0.1", self.mesh.port, timeout=10)
        conn.sock = tls  # HTTP/1.1 over the verified socket
        try:
            leaf = tls.getpeercert(binary_form=True) or b""
            conn.request("GET", "/", headers={"Host": f"{server_hostname}:{self.mesh.port}"})
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace"), leaf
        finally:
            conn.close()


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient) -> Any:
    directory = tmp_path_factory.mktemp("https")
    # A fresh CA for this module (DEVMESH_CA_DIR), not the user's.
    env = {**ENV, "DEVMESH_CA_DIR": str(directory / "ca")}
    mesh = Mesh(directory, f"t{uuid.uuid4().hex[:8]}", free_port(), docker_client)
    PROJECTS.append(mesh.project)
    made = Https(mesh, env, directory)
    made.set_tls("true")
    try:
        result = mesh.run("up", "-d", "--wait", "--timeout", "60", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        exported = devmesh("ca", "--export", str(made.ca), env=env)
        assert exported.returncode == 0, exported.stderr
        yield made
    finally:
        mesh.run("down", timeout=60, env=env)
        sweep(docker_client, mesh.project)


def test_curl_trusting_the_exported_ca_gets_200_over_https(https: Https) -> None:
    assert shutil.which("curl"), "curl is a test dependency"
    url = f"https://127.0.0.1:{https.mesh.port}/"
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(https.ca), "-w", "%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert out.returncode == 0 and out.stdout.endswith("200"), out.stderr
    assert "web/default" in out.stdout
    localhost = subprocess.run(
        [
            *("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(https.ca)),
            *("--resolve", f"localhost:{https.mesh.port}:127.0.0.1"),
            f"https://localhost:{https.mesh.port}/",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert localhost.stdout == "200", localhost.stderr
    assert https.mesh.ps()["gateway"]["url"] == url


def test_python_ssl_verifies_the_ingress_by_name_and_by_address(https: Https) -> None:
    for name in ("localhost", "127.0.0.1"):
        status, body, leaf = https.get(https.ca, name)
        assert status == 200 and "web/default" in body
    cert = x509.load_der_x509_certificate(leaf)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_a_client_that_trusts_another_ca_fails_the_handshake(https: Https) -> None:
    other, _ = make_pair(https.directory, "stranger")
    with pytest.raises(ssl.SSLCertVerificationError):
        https.get(other)


def test_openssl_s_client_shows_the_chain_to_the_local_ca(https: Https) -> None:
    out = subprocess.run(
        [
            *("openssl", "s_client", "-connect", f"127.0.0.1:{https.mesh.port}"),
            *("-servername", "localhost", "-CAfile", str(https.ca), "-showcerts"),
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    text = out.stdout
    ca_subject = x509.load_pem_x509_certificate(https.ca.read_bytes()).subject
    ca_cn = ca_subject.rfc4514_string().split(",")[0].removeprefix("CN=")
    assert "Verify return code: 0 (ok)" in text, text[-2000:]
    assert "0 s:CN = devmesh ingress" in text and f"1 s:O = devmesh local CA, CN = {ca_cn}" in text
    assert text.count("-----BEGIN CERTIFICATE-----") == 2  # leaf and CA, as sent


def test_bad_user_files_are_refused_and_the_gateway_keeps_serving(https: Https) -> None:
    """Saved one after the other into the running mesh: each is a located problem, nothing
    is applied, and the gateway serves the local CA's certificate throughout."""
    now = dt.datetime.now(dt.UTC)
    expired = make_pair(https.directory, "expired", now - dt.timedelta(days=2), now)
    site, _ = make_pair(https.directory, "site")
    _, foreign = make_pair(https.directory, "foreign")
    cases = [
        (expired, "ingress.tls.cert: ", "the certificate expired on"),
        ((site, foreign), "ingress.tls.key: ", "this key is not the one of the certificate in"),
        ((site, https.directory / "gone.pem"), "ingress.tls.key: ", "gone.pem: no such file"),
    ]
    for (cert, key), where, expected in cases:
        https.set_tls(f"{{cert: {cert}, key: {key}}}")

        def reported(expected: str = expected) -> list[str]:
            problems = list(https.daemon.state().problems)
            return problems if any(expected in p for p in problems) else []

        problems = wait_for(reported, timeout=15)
        assert len(problems) == 1, problems
        assert problems[0].startswith(f"{https.mesh.file}:5:") and where in problems[0]
        status, _, _ = https.get(https.ca)  # still the local CA's certificate, serving
        assert status == 200


def test_good_user_files_are_served_live_then_the_local_ca_again(https: Https) -> None:
    now = dt.datetime.now(dt.UTC)
    cert, key = make_pair(https.directory, "mine", now - dt.timedelta(hours=1))
    https.set_tls(f"{{cert: {cert}, key: {key}}}")
    mine = x509.load_pem_x509_certificate(cert.read_bytes())

    def served_mine() -> bool:
        try:
            status, _, leaf = https.get(cert)  # a self-signed certificate is its own CA
        except ssl.SSLError:
            return False  # still the CA's certificate
        return status == 200 and x509.load_der_x509_certificate(leaf) == mine

    wait_for(served_mine, timeout=15)
    assert https.daemon.state().problems == ()
    https.set_tls("true")
    wait_for(lambda: https.get(https.ca)[0] == 200, timeout=15)
