"""What the engine is, for the transport's choice (core/transport.py decides): DOCKER_HOST,
the docker CLI's context, DEVMESH_TRANSPORT, and the engine's own `OperatingSystem`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from devmesh.adapters.engine import Engine
from devmesh.core.problems import MeshError
from devmesh.core.transport import TRANSPORT_ENV, EngineFacts, Transport, choose


def _context() -> str:
    """The docker CLI's current context name ("" for the default): DOCKER_CONTEXT, else
    the CLI's config.json `currentContext`."""
    named = os.environ.get("DOCKER_CONTEXT", "")
    if named:
        return named
    config = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    try:
        return str(json.loads(config.read_text()).get("currentContext") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def engine_facts(engine: Engine) -> EngineFacts:
    forced = os.environ.get(TRANSPORT_ENV, "")
    docker_host = os.environ.get("DOCKER_HOST", "")
    context = "" if docker_host else _context()  # DOCKER_HOST wins over a context
    system = ""
    if not forced:  # one `info` at the start (a Desktop engine says so there)
        try:
            system = engine.identity().os  # the one `info` the engine's identity asked
        except MeshError:
            system = ""
    return EngineFacts(docker_host, system, forced, context)


def transport_for(engine: Engine) -> tuple[Transport, str]:
    """The transport for `engine`, and why; TransportError for a bad DEVMESH_TRANSPORT."""
    return choose(engine_facts(engine))
