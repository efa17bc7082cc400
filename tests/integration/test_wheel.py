"""The package as a user gets it: the sdist and the wheel are built (the wheel from the sdist,
as `python -m build` does, so the sdist must carry everything), the wheel is installed into
a clean venv, and the installed `devmesh` runs `--version`, `validate` and `render --check`
on the example, and `init` from its starter templates.

pip works offline here through the machine's configured index; the builds' isolated
environments take setuptools from it (`build-system` asks for >= 77, PEP 639's licence)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEFT_OUT = (".venv", ".git", "build", "dist", "out", "*.egg-info", "__pycache__", ".*_cache")


def sh(*args: str | Path, cwd: Path, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env |= {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "DEVMESH_PULL": "never"}
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.mark.wheel
@pytest.mark.envoy
def test_the_built_wheel_installs_into_a_clean_venv_and_runs(tmp_path: Path) -> None:
    start = time.monotonic()
    source = tmp_path / "src"  # a copy: building writes build/ and egg-info into the tree
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*LEFT_OUT))
    base = Path(getattr(sys, "_base_executable", sys.executable))  # not this venv's python

    # Venvs without their own pip (ensurepip costs seconds each); this venv's pip installs
    # into them with --python.
    pip = (sys.executable, "-m", "pip", "--python")
    builder = tmp_path / "builder"
    sh(base, "-m", "venv", "--without-pip", builder, cwd=tmp_path)
    sh(*pip, builder / "bin" / "python", "install", "-q", "build", "setuptools>=77", cwd=tmp_path)
    sh(
        builder / "bin" / "python",
        "-m",
        "build",
        "--outdir",
        tmp_path / "dist",
        source,
        cwd=tmp_path,
    )
    sdists = list((tmp_path / "dist").glob("devmesh-*.tar.gz"))
    wheels = list((tmp_path / "dist").glob("devmesh-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1

    names = set(zipfile.ZipFile(wheels[0]).namelist())
    for needed in (
        "devmesh/templates/envoy/Dockerfile",  # the sidecar image devmesh builds offline
        "devmesh/templates/pause/Dockerfile",
        "devmesh/templates/pause/pause.c",
        "devmesh/templates/pauseprobe-busybox/probe",  # tcp's pod owner on macOS/Windows
        "devmesh/templates/pauseprobe-busybox/pause",
        "devmesh/templates/pauseprobe-busybox/probe-http",
        "devmesh/starters/python-http/devmesh.yaml",  # `devmesh init`
        "devmesh/starters/grpc/greeter/app.py",
        "devmesh/starters/tcp/echo/Dockerfile",
    ):
        assert needed in names, f"{needed} is not in the wheel"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    points = zipfile.ZipFile(wheels[0]).read(entry).decode()
    assert "devmesh = devmesh.cli.main:main" in points and "pytest11" in points

    venv = tmp_path / "venv"
    sh(base, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    sh(*pip, venv / "bin" / "python", "install", "-q", wheels[0], cwd=tmp_path, timeout=300)
    devmesh = venv / "bin" / "devmesh"
    work = tmp_path / "work"  # outside the source: only the installed package can answer
    shutil.copytree(ROOT / "examples" / "shop", work / "shop")
    where = sh(venv / "bin" / "python", "-c", "import devmesh; print(devmesh.__file__)", cwd=work)
    assert str(venv) in where

    assert "devmesh 0." in sh(devmesh, "--version", cwd=work)
    assert "mesh 'shop' is valid" in sh(devmesh, "-f", "shop/devmesh.yaml", "validate", cwd=work)
    rendered = sh(devmesh, "-f", "shop/devmesh.yaml", "render", "--out", "out", "--check", cwd=work)
    assert "REJECTED" not in rendered and rendered.count("(envoy: OK)") >= 5
    sh(devmesh, "init", "starter", "--template", "grpc", cwd=work)
    assert "is valid" in sh(devmesh, "validate", cwd=work / "starter")
    print(f"built, installed and ran in {time.monotonic() - start:.0f} s")
