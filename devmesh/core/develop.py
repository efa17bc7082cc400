"""`develop: watch:` decisions: which changed files mean what for which service. Pure: the
daemon's watcher hands in paths, and carries out the `Work` this returns.

As compose reads it: a path counts for a rule when it is the rule's `path` or under it, and
no `ignore` pattern (relative to the rule's path) matches it; for each file the first such
rule of a service applies. A rebuild brings every file with it, so a service that rebuilds
is not also synced.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from devmesh.core.model import Mesh, Service, WatchRule

# Never synced nor a reason to rebuild: version control and editors' scratch files.
ALWAYS_IGNORED = (".git", ".hg", ".svn", "*.swp", "*.swx", "*~", ".#*", "4913", "__pycache__")


@dataclass(frozen=True, slots=True)
class Work:
    """What one burst of changes asks of one service."""

    service: str
    rebuild: bool = False
    copy: tuple[tuple[str, str], ...] = ()  # (host file, container path) to copy in
    delete: tuple[str, ...] = ()  # container paths whose host file is gone
    restart: bool = False


def watched_paths(mesh: Mesh) -> tuple[str, ...]:
    """Every path a rule names, absolute, in file order, once."""
    out = (rule_root(mesh.base_dir, r) for s in mesh.services for r in s.watch)
    return tuple(dict.fromkeys(out))


def rule_root(base_dir: str, rule: WatchRule) -> str:
    return os.path.normpath(os.path.join(base_dir, rule.path))


def _ignored(relative: str, patterns: Iterable[str]) -> bool:
    parts = relative.split(os.sep)
    for pattern in patterns:
        bare = pattern.rstrip("/")
        if not bare:
            continue
        if fnmatch.fnmatch(relative, bare) or fnmatch.fnmatch(relative, bare + "/*"):
            return True
        if "/" not in bare and any(fnmatch.fnmatch(p, bare) for p in parts):
            return True
    return False


def _matches(base_dir: str, rule: WatchRule, path: str) -> str | None:
    """`path` relative to the rule's root ("" for the root itself), or None."""
    root = rule_root(base_dir, rule)
    if path != root and not path.startswith(root.rstrip(os.sep) + os.sep):
        return None
    relative = os.path.relpath(path, root) if path != root else ""
    if relative and _ignored(relative, (*ALWAYS_IGNORED, *rule.ignore)):
        return None
    if not relative and _ignored(os.path.basename(path), ALWAYS_IGNORED):
        return None
    return relative


PathKind = Literal["file", "dir", "gone"]


def work_for(mesh: Mesh, changed: Mapping[str, PathKind]) -> tuple[Work, ...]:
    """What the changed absolute paths ask of each service: a file now is copied, one gone
    is deleted, a directory only counts for rebuild and restart rules."""
    out = []
    for service in mesh.services:
        if service.watch:
            work = _service_work(mesh.base_dir, service, changed)
            if work is not None:
                out.append(work)
    return tuple(out)


def _service_work(base_dir: str, service: Service, changed: Mapping[str, PathKind]) -> Work | None:
    rebuild = restart = False
    copy: list[tuple[str, str]] = []
    delete: list[str] = []
    for path, kind in sorted(changed.items()):
        for rule in service.watch:
            relative = _matches(base_dir, rule, path)
            if relative is None:
                continue
            if rule.action == "rebuild":
                rebuild = True
            if rule.action in ("restart", "sync+restart"):
                restart = True
            if rule.action in ("sync", "sync+restart") and rule.target is not None:
                target = rule.target if not relative else f"{rule.target.rstrip('/')}/{relative}"
                if kind == "file":
                    copy.append((path, target))
                elif kind == "gone":
                    delete.append(target)
            break  # the first rule that matches a file applies
    if rebuild:
        return Work(service.name, rebuild=True)
    if not (copy or delete or restart):
        return None
    return Work(service.name, False, tuple(copy), tuple(delete), restart)


def rebuilt_versions(mesh: Mesh) -> frozenset[tuple[str, str]]:
    """(service, version) of every version a save rebuilds: built from a context (not on
    the host), of a service with a `rebuild` rule. The daemon keeps a spare pod for each of
    their replicas (plan/roll.py)."""
    return frozenset(
        (service.name, version.name)
        for service in mesh.services
        if any(rule.action == "rebuild" for rule in service.watch)
        for version in service.versions
        if version.build is not None and version.host is None
    )
