"""The pytest plugin and `devmesh run`, against real meshes (pytest's own pytester), and
`devmesh.testing` on typed daemon documents (pure: no engine)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from devmesh import labels, testing
from devmesh.api import codec
from devmesh.api import types as api
from devmesh.core.problems import MeshError
from tests.e2e.conftest import APP, ENV, devmesh
from tests.e2e.test_live import RETRYING
from tests.e2e.test_runtime import SHOP

# The engine is shared with other test runs, which may run these very tests: the mesh gets a
# name of this run's own, so leftovers are this run's, not another's `shop-xxxxxx`.
MESH_NAME = f"plug{uuid.uuid4().hex[:8]}"
MESH = (
    SHOP.replace("@APP@", str(APP))
    .replace("@PORT@", "8080")
    .replace("mesh: shop\n", f"mesh: {MESH_NAME}\n", 1)
)


def leftovers(client: docker.DockerClient, mesh_name: str = MESH_NAME) -> list[str]:
    """Containers of any instance of the test mesh (instances are named `NAME-xxxxxx`).
    Sparse: no inspect per container, which fails when another run removes one meanwhile."""
    found = client.containers.list(all=True, sparse=True, filters={"label": f"{labels.MANAGED}=1"})
    return [
        "/".join(c.attrs.get("Names") or [c.id])
        for c in found
        if (c.attrs.get("Labels") or {}).get(labels.MESH, "").startswith(f"{mesh_name}-")
    ]


@pytest.fixture
def project(pytester: pytest.Pytester, docker_client: Any) -> pytest.Pytester:
    pytester.makefile(".yaml", devmesh=MESH)
    pytester.makeini("[pytest]\ndevmesh_file = devmesh.yaml\ndevmesh_scope = module\n")
    for key, value in ENV.items():
        pytester._monkeypatch.setenv(key, value)
    assert leftovers(docker_client) == []
    return pytester


@pytest.mark.docker
def test_fixture_serves_passing_and_failing_tests_and_always_tears_down(
    project: pytest.Pytester, docker_client: Any
) -> None:
    project.makepyfile(
        """
        import urllib.request

        def get(url):
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status, r.headers.get("x-devmesh-served-by")

        def test_ingress_and_service_urls(mesh):
            assert get(mesh.url) == (200, "frontend/default")
            status, by = get(mesh.service_url("catalog") + "x")
            assert status == 200 and by.startswith("catalog/")

        def test_fails(mesh):
            assert get(mesh.url)[1] == "nobody"
        """
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "devmesh state" in out and '"ready": true' in out  # attached to the failure
    assert "devmesh logs: catalog" in out and "http on :8000" in out
    assert leftovers(docker_client) == []


@pytest.mark.docker
def test_fault_context_makes_the_retry_policy_visible_in_stats(
    project: pytest.Pytester, docker_client: Any
) -> None:
    project.makefile(".yaml", devmesh=RETRYING.replace("@APP@", str(APP)).replace("@PORT@", "8080"))
    project.makepyfile(
        """
        import urllib.request, urllib.error

        def status(url):
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        def test_retries_absorb_half_the_failures(mesh):
            url = mesh.service_url("catalog") + "x"
            before = mesh.stats("catalog")
            codes = [status(url) for _ in range(100)]
            after = mesh.stats("catalog")
            retries = sum(v.get("retries", 0) for k, v in after.items() if k.startswith("v"))
            retried_before = sum(
                v.get("retries", 0) for k, v in before.items() if k.startswith("v")
            )
            assert codes.count(200) >= 80
            assert retries - retried_before >= 30
            assert after["route:main"]["requests"] > 0

        def test_the_fault_is_in_force_when_the_with_block_starts(mesh):
            # The first request follows the call at once: the daemon answers only when the
            # gateway has ACKed the change (a CI run once saw a 200 here before it did).
            url = mesh.service_url("catalog") + "x"
            for _ in range(3):
                with mesh.fault("catalog", abort=503, percent=100):
                    assert status(url) == 503
                assert status(url) in (200, 503)
        """
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert leftovers(docker_client) == []


@pytest.mark.docker
def test_shift_is_observed_and_two_meshes_run_at_once(
    project: pytest.Pytester, docker_client: Any
) -> None:
    project.makepyfile(
        """
        import time, urllib.request
        from devmesh.testing import Mesh

        def served(url):
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.headers.get("x-devmesh-served-by")

        def test_shift(mesh):
            mesh.shift("catalog", v1=0, v2=100)
            url = mesh.service_url("catalog") + "x"
            assert {served(url) for _ in range(20)} == {"catalog/v2"}
            assert "to: {v1: 0, v2: 100}" in mesh.file.read_text()

        def test_two_at_once(mesh):
            other = Mesh.up(mesh.file)
            try:
                assert other.project != mesh.project and other.url != mesh.url
                assert served(other.url) == served(mesh.url) == "frontend/default"
            finally:
                other.down()
        """
    )
    before = (project.path / "devmesh.yaml").read_bytes()
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert leftovers(docker_client) == []
    # The shift was written while the mesh ran; teardown put the user's file back.
    assert (project.path / "devmesh.yaml").read_bytes() == before


@pytest.mark.docker
@pytest.mark.parametrize("code", [0, 3])
def test_run_exits_with_the_commands_code(
    project: pytest.Pytester, docker_client: Any, code: int
) -> None:
    script = (
        "import os, sys, urllib.request; "
        "urllib.request.urlopen(os.environ['DEVMESH_URL_CATALOG'] + 'x', timeout=10); "
        f"sys.exit({code})"
    )
    result = devmesh(
        "run", "-f", str(project.path / "devmesh.yaml"), "--", sys.executable, "-c", script
    )
    assert result.returncode == code, result.stderr
    assert "DEVMESH_URL=http://127.0.0.1:" in result.stderr
    assert leftovers(docker_client) == []


@pytest.mark.docker
def test_run_says_why_when_the_mesh_cannot_come_up(
    project: pytest.Pytester, docker_client: Any
) -> None:
    broken = project.path / "broken.yaml"
    broken.write_text(
        MESH.replace(
            "  stock:\n    build: " + str(APP) + "\n    image: devmesh-shop-app:1",
            "  stock:\n    image: devmesh-no-such:0",
        )
    )
    result = devmesh("run", "-f", str(broken), "--", "true")
    assert result.returncode == 125
    assert "stock/default: image devmesh-no-such:0 not found" in result.stderr
    assert leftovers(docker_client) == []
    invalid = project.path / "invalid.yaml"
    invalid.write_text(MESH.replace("port: 7000", "port: seven"))
    result = devmesh("run", "-f", str(invalid), "--", "true")
    assert result.returncode == 125 and "expected an integer" in result.stderr
    json.dumps(result.stderr)


@pytest.mark.docker
def test_the_ci_example_passes_against_the_shop(
    pytester: pytest.Pytester, docker_client: Any
) -> None:
    from tests.e2e.conftest import ROOT

    shop = ROOT / "examples" / "shop" / "devmesh.yaml"
    pytester.makefile(
        ".yaml",
        devmesh=shop.read_text()
        .replace("build: ./", f"build: {shop.parent}/")
        .replace("mesh: shop\n", f"mesh: {MESH_NAME}\n", 1),
    )
    pytester.makeini("[pytest]\ndevmesh_file = devmesh.yaml\n")
    pytester.makepyfile(test_example=(ROOT / "examples" / "ci" / "test_example.py").read_text())
    for key, value in ENV.items():
        pytester._monkeypatch.setenv(key, value)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert leftovers(docker_client) == []


# -- devmesh.testing on typed documents (no engine) ---------------------------------------------

T = api.Traffic
GATEWAY = api.Gateway(
    "shop-x-gateway",
    "running",
    True,
    "http://127.0.0.1:41234/",
    {"catalog": "http://127.0.0.1:41235/", "web-shop": "http://127.0.0.1:41236/"},
)
STATE = api.MeshState("shop", "shop-x", api.Phase.SERVING, True, gateway=GATEWAY)


class StatsOnly:
    def stats(self) -> api.Stats:
        def routes(*pairs: tuple[str, str, T]) -> tuple[api.RouteTraffic, ...]:
            return tuple(api.RouteTraffic(s, r, t) for s, r, t in pairs)

        return api.Stats(
            1.0,
            (
                api.SidecarStats(
                    "shop-x-gateway",
                    api.INGRESS,
                    "",
                    upstreams=(
                        api.UpstreamTraffic("catalog", "v1", T(requests=10, rq_2xx=9, rq_5xx=1)),
                        api.UpstreamTraffic("_hop", "catalog", T(requests=99)),
                    ),
                    routes=routes(("catalog", "main", T(requests=10)), ("ingress", "api", T(7))),
                ),
                api.SidecarStats(
                    "shop-x-web-default-0",
                    "web",
                    "default",
                    upstreams=(api.UpstreamTraffic("catalog", "v1", T(requests=5, retries=2)),),
                    routes=routes(("catalog", "main", T(requests=5, rq_5xx=1))),
                ),
                api.SidecarStats("shop-x-stock-0", "stock", "default", error="refused"),
            ),
        )


def test_stats_sum_a_service_over_its_callers_in_mesh_terms() -> None:
    mesh = testing.MeshInstance(Path("devmesh.yaml"), "shop-x", STATE)
    mesh._client = StatsOnly()  # type: ignore[assignment]
    stats = mesh.stats("catalog")
    assert set(stats) == {"v1", "route:main"}  # no other service, no gateway hop
    assert stats["v1"] == {
        "requests": 15,
        "completed": 0,
        "2xx": 9,
        "4xx": 0,
        "5xx": 1,
        "retries": 2,
    }
    assert stats["route:main"]["requests"] == 15 and stats["route:main"]["5xx"] == 1


def test_urls_come_from_the_gateway_in_the_state() -> None:
    mesh = testing.Mesh(Path("devmesh.yaml"), "shop-x", STATE)  # the first name still works
    assert mesh.url == "http://127.0.0.1:41234/"
    assert mesh.service_url("catalog") == "http://127.0.0.1:41235/"
    assert mesh.urls == {
        "DEVMESH_URL": "http://127.0.0.1:41234/",
        "DEVMESH_URL_CATALOG": "http://127.0.0.1:41235/",
        "DEVMESH_URL_WEB_SHOP": "http://127.0.0.1:41236/",
    }
    with pytest.raises(MeshError, match="there are: catalog, web-shop"):
        mesh.service_url("stock")
    assert testing.MeshInstance(Path("f"), "p").urls == {}


def test_up_decodes_the_state_that_up_json_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "devmesh.yaml"
    file.write_text("mesh: shop\nservices:\n  web:\n    image: x:1\n    port: 8000\n")
    printed = json.dumps(codec.encode(STATE))
    calls: list[tuple[str, ...]] = []

    def devmesh_command(*args: str, timeout: float) -> Any:
        calls.append(args)
        out = printed if args[0] == "up" else ""  # `printed` as it is at the call
        return subprocess.CompletedProcess(args, 0, out, "")

    monkeypatch.setattr(testing, "_devmesh", devmesh_command)
    mesh = testing.MeshInstance.up(file, "shop-x")
    assert mesh.state == STATE and mesh.url == GATEWAY.url
    printed = "not json"
    with pytest.raises(testing.MeshUpError, match="printed no state"):
        testing.MeshInstance.up(file, "shop-y")
    assert calls[-1][:1] == ("down",)  # torn down all the same
