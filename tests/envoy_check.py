"""Running the real Envoy over rendered configs, several at once (2 cores here)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from devmesh.adapters.envoy_binary import validate
from devmesh.envoy.render import Rendered


def envoy_rejections(rendered: tuple[Rendered, ...], directory: Path) -> list[str]:
    """Write each config and ask Envoy; return `file: Envoy's complaint` for every rejection."""
    paths = []
    for item in rendered:
        path = directory / item.filename
        path.write_text(yaml.safe_dump(item.bootstrap, sort_keys=False))
        paths.append(path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        verdicts = list(pool.map(validate, paths))
    return [f"{p.name}: {v.detail}" for p, v in zip(paths, verdicts, strict=True) if not v.ok]
