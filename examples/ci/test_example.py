"""An integration test a user writes against their mesh with devmesh's pytest plugin.

pytest.ini:
    [pytest]
    devmesh_file = devmesh.yaml
    devmesh_scope = session
"""

import urllib.error
import urllib.request


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("x-devmesh-served-by", "")
    except urllib.error.HTTPError as e:
        return e.code, ""


def test_canary_takes_all_traffic_after_a_shift(mesh):  # type: ignore[no-untyped-def]
    mesh.shift("catalog", v1=0, v2=100)
    assert {get(mesh.service_url("catalog") + "items")[1] for _ in range(10)} == {"catalog/v2"}


def test_retries_hide_a_flaky_catalog(mesh):  # type: ignore[no-untyped-def]
    with mesh.fault("catalog", abort=503, percent=30):
        ok = sum(get(mesh.url + "catalog/items")[0] == 200 for _ in range(50))
    assert ok >= 45
    assert mesh.stats("catalog")["route:main"]["requests"] > 0
