import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

pytest_plugins = ["pytester"]

# Every test, and every daemon a test starts (their environment is copied from this one when
# the e2e conftest is imported, before any fixture runs), uses a CA of its own, never the
# user's (`adapters.ca.ca_dir`). A test that needs another sets DEVMESH_CA_DIR itself.
_OWN_CA = None if os.environ.get("DEVMESH_CA_DIR") else tempfile.mkdtemp(prefix="devmesh-test-ca-")
if _OWN_CA is not None:
    os.environ["DEVMESH_CA_DIR"] = f"{_OWN_CA}/ca"


@pytest.fixture(scope="session", autouse=True)
def _private_ca() -> Iterator[None]:
    yield
    if _OWN_CA is not None:
        shutil.rmtree(_OWN_CA, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the engine is a `docker` test, marked or not: `make test` runs those
    one at a time, apart from the rest (which run on both cores)."""
    for item in items:
        if "docker_client" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)
