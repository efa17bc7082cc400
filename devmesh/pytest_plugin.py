"""The devmesh pytest plugin (installed with the package): a `mesh` fixture.

    [pytest]                      # or [tool.pytest.ini_options]
    devmesh_file = devmesh.yaml   # or --devmesh-file PATH
    devmesh_scope = session       # session | package | module | class | function

    def test_checkout(mesh):
        r = requests.get(mesh.url + "cart")                 # the ingress
        r = requests.get(mesh.service_url("catalog") + "x")  # one service, via its routes
        with mesh.fault("catalog", abort=503, percent=50):
            ...
        mesh.shift("catalog", v1=0, v2=100)  # live; the file is put back at teardown
        assert mesh.stats("catalog")["v2"]["requests"] > 0

The mesh comes up under a name of its own on free host ports (several at once do not
collide), is waited for, and is always torn down: after a failure, on Ctrl-C, and when
its daemon crashed. A `mesh.shift()` writes the mesh file while the mesh is up; teardown
puts the file back as it was (also with --devmesh-keep). A failing test's report gets the
mesh's state and its apps' logs.

The fixture's value is a `devmesh.testing.MeshInstance` (also importable as `Mesh`, its
first name); `mesh.state` is the daemon's typed `MeshState` as of `up` or `refresh()`.
"""

from __future__ import annotations

import atexit
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devmesh.api import types as api
from devmesh.testing import MeshInstance

_LIVE: dict[str, MeshInstance] = {}  # up and not yet down: torn down at exit whatever happened


def _down_all() -> None:
    for mesh in list(_LIVE.values()):
        mesh.down()
        _LIVE.pop(mesh.project, None)


atexit.register(_down_all)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("devmesh")
    group.addoption("--devmesh-file", default=None, help="mesh file for the `mesh` fixture")
    group.addoption(
        "--devmesh-keep",
        action="store_true",
        default=False,
        help="leave the mesh up after the tests (to look at it); `devmesh down -p NAME`",
    )
    parser.addini("devmesh_file", "mesh file for the `mesh` fixture", default="devmesh.yaml")
    parser.addini("devmesh_scope", "scope of the `mesh` fixture", default="session")


def _scope(fixture_name: str, config: pytest.Config) -> Any:
    scope = str(config.getini("devmesh_scope") or "session")
    if scope not in ("session", "package", "module", "class", "function"):
        raise pytest.UsageError(f"devmesh_scope = {scope}: not a pytest fixture scope")
    return scope


@pytest.fixture(scope=_scope)
def mesh(request: pytest.FixtureRequest) -> Iterator[MeshInstance]:
    config = request.config
    file = config.getoption("--devmesh-file") or config.getini("devmesh_file")
    path = Path(file)
    if not path.is_absolute():
        path = Path(config.rootpath) / path
    if not path.exists():
        pytest.fail(f"devmesh: no mesh file {path} (set devmesh_file or --devmesh-file)")
    try:
        handle = MeshInstance.up(path)
    except Exception as exc:
        pytest.fail(f"devmesh: {exc}", pytrace=False)
    _LIVE[handle.project] = handle
    try:
        yield handle
    finally:
        if not config.getoption("--devmesh-keep"):
            handle.down()  # puts the mesh file back as it was before any `mesh.shift()`
        else:
            handle.guard.restore()  # the kept mesh then reloads the file's own weights
        _LIVE.pop(handle.project, None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    handle = getattr(item, "funcargs", {}).get("mesh")
    if not isinstance(handle, MeshInstance):
        return
    try:
        state = handle.refresh()
        report.sections.append(("devmesh state", json.dumps(_brief(state), indent=2)))
        for service in sorted({p.service for p in state.pods}):
            report.sections.append((f"devmesh logs: {service}", handle.logs(service, tail=40)))
    except Exception as exc:  # the mesh may be what broke: say so rather than fail again
        report.sections.append(("devmesh state", f"unavailable: {exc}"))


def _brief(state: api.MeshState) -> dict[str, Any]:
    return {
        "project": state.project,
        "ready": state.ready,
        "problems": list(state.problems),
        "failed": [f"{f.service}/{f.version}: {f.reason}" for f in state.failed],
        "pods": [
            {
                "pod": p.pod,
                "state": str(p.state),
                "reason": p.reason,
                "address": p.address,
                "app": p.app,
                "restarts": p.restarts,
            }
            for p in state.pods
        ],
        "events": [
            f"{e.severity}: {e.text}" if e.severity != api.Severity.INFO else e.text
            for e in state.events[-20:]
        ],
    }
