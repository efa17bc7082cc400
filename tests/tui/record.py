"""Record a running daemon's API documents for the snapshot tests' replaying client.

    .venv/bin/python -m tests.tui.record --socket /tmp/devmesh-0/NAME/api.sock \\
        --out tests/tui/recorded/NAME [--frames 8]

Writes state.json, routes.json, events.json, stats.json (a list: one read a second, so the
replay has rates and a history) and logs.json (pod -> its last lines), each as the API's
codec encodes it (what the daemon sends; tests/tui/fake.py decodes them the same way).
Read-only: the only calls are the API's reads and the logs read.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from devmesh.api import codec
from devmesh.client import DaemonClient


def record(client: DaemonClient, out: Path, frames: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stats = []
    for i in range(frames):
        stats.append(codec.encode(client.stats()))
        if i < frames - 1:
            time.sleep(1.0)
    state = client.state()
    logs = {p.pod: list(client.logs(p.pod, 50).lines) for p in state.pods}
    documents: dict[str, Any] = {
        "state.json": codec.encode(state),
        "routes.json": codec.encode(client.routes()),
        "events.json": codec.encode(client.events()),
        "stats.json": stats,
        "logs.json": logs,
    }
    for name, doc in documents.items():
        (out / name).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()
    record(DaemonClient(args.socket, timeout=10, keep=True), args.out, args.frames)


if __name__ == "__main__":
    main()
