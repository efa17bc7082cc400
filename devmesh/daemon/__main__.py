"""`python -m devmesh.daemon --file=F --project=P [--ingress-port=N]`: the detached daemon
`devmesh up -d` starts, and the composition root every daemon is built by (the foreground
`devmesh up` too): `compose()` connects the engine, opens the state directory, settles the
ingress port and hands them to `Daemon`.

Its output is the daemon log; `up -d` shows it while waiting for the daemon to serve.
Exit codes: 0 stopped, 1 could not start or run, 75 another daemon holds the instance, 2 bad
arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from devmesh.core.engines import summary
from devmesh.core.load import load_path
from devmesh.core.model import Mesh
from devmesh.core.names import InvalidProjectName, check_project
from devmesh.core.problems import MeshError
from devmesh.daemon import launcher
from devmesh.daemon.runtime import Daemon
from devmesh.daemon.state import StateDir


def compose(file: Path, project: str, ingress_port: int | None, mesh: Mesh | None = None) -> Daemon:
    """The daemon for an instance of a mesh file, with its collaborators; nothing started.
    `ingress_port`: None the file's port, 0 any free one; either way a gateway the instance
    still runs (its daemon crashed) is adopted with the port it publishes."""
    from devmesh.adapters.engine import Engine
    from devmesh.adapters.enginekind import transport_for

    check_project(project)
    mesh = mesh if mesh is not None else load_path(str(file))
    engine = Engine.connect()
    # One line in the daemon's log (`up` shows it): which engine, and what differs there
    logging.getLogger("devmesh").info(summary(engine.identity()))
    transport, why = transport_for(engine)  # once, for the daemon's life
    state = StateDir.for_project(project)
    port = launcher.instance_ingress_port(engine, state, project, ingress_port)
    return Daemon(file.resolve(), mesh, project, engine, state, port, transport, why)


def _project(value: str) -> str:
    try:
        return check_project(value)
    except InvalidProjectName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port (0-65535)")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devmesh-daemon")
    parser.add_argument("--file", required=True)
    parser.add_argument("--project", required=True, type=_project)
    parser.add_argument("--ingress-port", type=_port, default=None)
    parser.add_argument("--metrics-port", type=_port, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
    )
    try:
        daemon = compose(Path(args.file), args.project, args.ingress_port)
        daemon.metrics_port = args.metrics_port
        with launcher.running(daemon, teardown=False) as stopping:
            daemon.wait(also=stopping)
    except launcher.AnotherDaemonServes as exc:
        print(f"devmesh: {exc}", flush=True)
        return launcher.EXIT_ANOTHER_DAEMON
    except MeshError as exc:
        print(f"devmesh: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
