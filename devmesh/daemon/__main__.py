"""`python -m devmesh.daemon --file F --project P`: the detached daemon `devmesh up -d` starts.

Its output is the daemon log; `up -d` shows it while waiting for the daemon to serve.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from devmesh.adapters.engine import Engine
from devmesh.core.load import load_path
from devmesh.core.problems import MeshError
from devmesh.daemon.runtime import Daemon
from devmesh.daemon.state import StateDir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devmesh-daemon")
    parser.add_argument("--file", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--ingress-port", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
    )
    daemon: Daemon | None = None
    try:
        mesh = load_path(args.file)
        daemon = Daemon(
            Path(args.file),
            mesh,
            args.project,
            Engine.connect(),
            StateDir.for_project(args.project),
            args.ingress_port,
        )
        signal.signal(signal.SIGTERM, lambda *_: daemon.request_stop() if daemon else None)
        signal.signal(signal.SIGINT, lambda *_: daemon.request_stop() if daemon else None)
        daemon.start()
        daemon.wait()
        daemon.stop()
    except MeshError as exc:
        print(f"devmesh: {exc}", flush=True)
        if daemon is not None:
            daemon.stop()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
