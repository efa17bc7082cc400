"""The TUI against a real daemon running a real mesh (Docker, Envoy): Pilot and tmux tests,
each module marked `docker`. The pure TUI tests are one directory up."""

from __future__ import annotations

from tests.e2e.conftest import docker_client, make_mesh  # noqa: F401 - fixtures used here
