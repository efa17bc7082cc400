"""A version running on the host (`host: {port}`), pure: how it loads, what pod it gets,
where its sidecar sends mesh traffic."""

from __future__ import annotations

import json

import pytest

from devmesh.core.load import load
from devmesh.core.model import HostApp
from devmesh.core.problems import MeshInvalid
from devmesh.envoy.render import render
from devmesh.plan.desired import Inputs, desired

TEXT = """
mesh: dev
services:
  api:
    image: app:1
    port: 8000
    env: {GREETING: hi}
    versions:
      v1: {}
      local: {host: {port: 5000}}
    routes:
      - {name: mine, match: {headers: {x-dev: me}}, to: local}
      - {name: main, to: v1}
"""


def test_a_host_version_loads_with_its_port_and_one_pod() -> None:
    mesh = load(TEXT)
    local = mesh.service("api").versions[1]
    assert local.host == HostApp(port=5000)
    assert (local.image, local.build, local.replicas) == (None, None, 1)
    assert dict(local.env) == {"GREETING": "hi"}
    assert mesh.service("api").versions[0].host is None


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        pytest.param("{host: {port: 70000}}", "versions.local.host.port", id="port-range"),
        pytest.param("{host: {}}", "missing required key 'port'", id="port-missing"),
        pytest.param("{host: {port: 5000, prot: 1}}", "versions.local.host.prot", id="unknown"),
        pytest.param(
            "{host: {port: 5000}, replicas: 2}", "a `host` version runs no container", id="replicas"
        ),
        pytest.param(
            "{host: {port: 5000}, image: x:1}", "a `host` version runs no container", id="image"
        ),
    ],
)
def test_a_wrong_host_version_is_a_located_error(version: str, expected: str) -> None:
    text = TEXT.replace("{host: {port: 5000}}", version)
    with pytest.raises(MeshInvalid) as info:
        load(text)
    assert expected in str(info.value)
    assert "devmesh.yaml:" in str(info.value)


def _inputs() -> Inputs:
    return Inputs(
        project="t",
        state_dir="/state/t",
        envoy_image="sha256:envoy",
        pause_image="sha256:pause",
        app_images={("api", "v1"): "sha256:app", ("api", "local"): "sha256:pause"},
    )


def test_a_host_versions_pod_holds_the_apps_place_with_the_pause_image() -> None:
    want = desired(load(TEXT), _inputs())
    local = next(p for p in want.pods if p.version == "local")
    assert local.app.image == "sha256:pause"
    assert local.app.command is None and local.app.env == () and local.app.binds == ()
    assert local.app.cap_drop == ("ALL",) and local.app.read_only
    assert local.sidecar.image == "sha256:envoy"  # a sidecar like any version's


def _app_cluster(resources: object) -> dict[str, object]:
    clusters = resources.clusters  # type: ignore[attr-defined]
    found: dict[str, object] = next(c for c in clusters if c["name"] == "_app")
    return found


def test_the_host_versions_sidecar_sends_mesh_traffic_to_the_relay() -> None:
    mesh = load(TEXT)
    out = render(mesh, {}, "172.30.0.1", {("api", "local"): ("172.30.0.1", 41234)})
    local = next(r for g, r in out.items() if g.endswith("/api/local"))
    v1 = next(r for g, r in out.items() if g.endswith("/api/v1"))
    relay = json.dumps(_app_cluster(local))
    assert '"address": "172.30.0.1"' in relay and '"port_value": 41234' in relay
    assert "127.0.0.1" in json.dumps(_app_cluster(v1))  # a container's app: in its pod
    # Before the relay runs (no network yet), the host port on loopback: never elsewhere.
    static = render(mesh, {})
    local = next(r for g, r in static.items() if g.endswith("/api/local"))
    loopback = json.dumps(_app_cluster(local))
    assert '"address": "127.0.0.1"' in loopback and '"port_value": 5000' in loopback


def test_devmesh_dev_adds_a_host_version_and_a_first_route_to_it() -> None:
    from devmesh.plan.effective import DevVersion, effective

    mesh = load(TEXT)
    served = effective(mesh, {}, None, {("api", "mine"): DevVersion(5001, "X-Who", "me")})
    api = served.service("api")
    assert [v.name for v in api.versions] == ["v1", "local", "mine"]
    assert api.versions[2].host == HostApp(5001)
    first = api.routes[0]
    assert first.name == "dev-mine" and [(t.version, t.weight) for t in first.to] == [("mine", 100)]
    assert [(h.name, h.kind, h.value) for h in first.match.headers] == [("x-who", "exact", "me")]
    assert [r.name for r in api.routes[1:]] == ["mine", "main"]  # the file's, after it
    assert effective(mesh, {}, None, {}) == mesh


def test_the_dev_proxy_forwards_mesh_names_and_refuses_every_other_host() -> None:
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from devmesh.devproxy import DevProxy

    seen: list[tuple[str, str]] = []

    class Hop(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers["Host"]))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    hop = ThreadingHTTPServer(("127.0.0.1", 0), Hop)
    threading.Thread(target=hop.serve_forever, daemon=True).start()
    proxy = DevProxy({"stock": ("127.0.0.1", hop.server_address[1])}, "dev")
    proxy.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("GET", "http://stock/items?x=1")
        answer = conn.getresponse()
        assert (answer.status, answer.read()) == (200, b"ok")
        assert seen == [("/items?x=1", "stock")]
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("GET", "http://example.com/")
        refused = conn.getresponse()
        assert refused.status == 502 and len(seen) == 1  # nothing sent anywhere
    finally:
        proxy.close()
        hop.shutdown()
        hop.server_close()
