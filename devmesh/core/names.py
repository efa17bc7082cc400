"""Instance ("project") names, checked once where they enter: `-p`, the daemon's arguments,
`StateDir.for_project`.

A project name becomes a directory under the state base, Docker container and network names
and a label value. Compose's rule (`^[a-z0-9][a-z0-9_-]*$`) keeps all of those safe: no `/`,
no `.` (so no `..`), no leading `-` (an option to whatever reads it next), no spaces.
"""

from __future__ import annotations

import re

from devmesh.core.problems import MeshError

PROJECT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")  # docker compose's project name rule
PROJECT_MAX = 63  # a DNS label's length: container names add suffixes to it


class InvalidProjectName(MeshError):
    pass


def check_project(name: str) -> str:
    """The name, if it may name a mesh instance; InvalidProjectName saying why otherwise."""
    if not name:
        raise InvalidProjectName("the project name is empty")
    if len(name) > PROJECT_MAX:
        raise InvalidProjectName(
            f"the project name '{name[:20]}...' is {len(name)} characters long "
            f"({PROJECT_MAX} at most)"
        )
    if PROJECT_PATTERN.fullmatch(name) is None:
        raise InvalidProjectName(
            f"{name!r} is not a project name: use lowercase letters, digits, '-' and '_', "
            "starting with a letter or a digit (no '/', '.', spaces or upper case)"
        )
    return name


def is_project(name: str) -> bool:
    try:
        check_project(name)
    except InvalidProjectName:
        return False
    return True
