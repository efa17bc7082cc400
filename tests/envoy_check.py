"""Running the real Envoy over rendered configs, several at once (2 cores here)."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from devmesh.adapters.ca import load_or_create
from devmesh.adapters.envoy_binary import validate
from devmesh.envoy.bootstrap import STATIC_TLS_DIR
from devmesh.envoy.render import Rendered
from devmesh.envoy.resources import tls_secrets
from devmesh.envoy.snapshot import SECRET


def write_static_tls(directory: Path) -> Path:
    """The files a static export's SDS reads (`bootstrap.STATIC_TLS_DIR`), from a throwaway
    CA, as whoever runs an exported config by hand would provide them."""
    tls = directory / "tls"
    tls.mkdir(exist_ok=True)
    ca = load_or_create(directory / "ca")
    issued = ca.issue(
        uris=["spiffe://devmesh.local/mesh/x/service/y"], lifetime=dt.timedelta(hours=1)
    )
    for secret in tls_secrets(issued.cert_pem, issued.key_pem, ca.cert_pem):
        doc = {"resources": [{"@type": SECRET, **secret}]}
        (tls / f"{secret['name']}.yaml").write_text(yaml.safe_dump(doc))
    return tls


def envoy_rejections(rendered: tuple[Rendered, ...], directory: Path) -> list[str]:
    """Write each config and ask Envoy; return `file: Envoy's complaint` for every rejection."""
    paths = []
    tls = write_static_tls(directory)
    for item in rendered:
        path = directory / item.filename
        text = yaml.safe_dump(item.bootstrap, sort_keys=False)
        path.write_text(text.replace(STATIC_TLS_DIR, str(tls)))
        paths.append(path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        verdicts = list(pool.map(validate, paths))
    return [f"{p.name}: {v.detail}" for p, v in zip(paths, verdicts, strict=True) if not v.ok]
