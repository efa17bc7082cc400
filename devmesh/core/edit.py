"""Edit a mesh file's text in place, keeping the user's comments and layout.

PyYAML cannot keep comments, and a round-trip library such as ruamel.yaml re-emits the whole
document (re-indenting sequences, re-wrapping long flow mappings: measured on the example).
Instead the parser's node positions say exactly which characters hold the weights, and only
those characters are rewritten; every other byte of the file stays as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from devmesh.core.model import DEFAULT_ROUTE, Mesh, Route, Service
from devmesh.core.problems import MeshError, did_you_mean
from devmesh.core.source import Yaml12Loader


class EditError(MeshError):
    pass


@dataclass(frozen=True, slots=True)
class _Edit:
    start: int
    end: int
    text: str


def pick_route(service: Service, name: str | None) -> Route:
    """The route `shift` changes: the named one, the only one, or the last catch-all."""
    if name is not None:
        for route in service.routes:
            if route.name == name:
                return route
        names = [r.name for r in service.routes]
        raise EditError(
            f"'{service.name}' has no route '{name}'{did_you_mean(name, names)}; "
            f"its routes: {', '.join(names)}"
        )
    if len(service.routes) == 1:
        return service.routes[0]
    catch_all = [r for r in service.routes if r.match == Route("", ()).match]
    if catch_all:
        return catch_all[-1]
    listed = ", ".join(r.name for r in service.routes)
    raise EditError(f"'{service.name}' has several routes; name one with --route ({listed})")


def check_weights(service: Service, weights: Mapping[str, int]) -> None:
    known = [v.name for v in service.versions]
    for version, weight in weights.items():
        if version not in known:
            raise EditError(
                f"'{service.name}' has no version '{version}'{did_you_mean(version, known)}; "
                f"its versions: {', '.join(known)}"
            )
        if not 0 <= weight <= 100:
            raise EditError(f"weight {version}={weight} is not between 0 and 100")
    total = sum(weights.values())
    if total != 100:
        raise EditError(f"weights add up to {total}, not 100")


def set_weights(
    text: str, mesh: Mesh, service_name: str, route_name: str | None, weights: Mapping[str, int]
) -> tuple[str, str]:
    """The file's text with one route's weights replaced, and the route's name."""
    if not mesh.has_service(service_name):
        names = [s.name for s in mesh.services]
        raise EditError(
            f"no service '{service_name}' in mesh '{mesh.name}'{did_you_mean(service_name, names)}"
        )
    service = mesh.service(service_name)
    route = pick_route(service, route_name)
    check_weights(service, weights)
    loader = Yaml12Loader(text)
    try:
        root = loader.get_single_node()
    finally:
        loader.dispose()
    svc_node = _get(_get(root, "services"), service_name)
    routes_node = _get(svc_node, "routes")
    flow = "{" + ", ".join(f"{v}: {w}" for v, w in weights.items()) + "}"
    if routes_node is None:
        if route.name != DEFAULT_ROUTE:
            raise EditError(f"cannot find the routes of '{service_name}' in the file")
        return _insert_routes(text, svc_node, flow), route.name
    index = [r.name for r in service.routes].index(route.name)
    if not isinstance(routes_node, yaml.SequenceNode) or index >= len(routes_node.value):
        raise EditError(f"cannot find route '{route.name}' of '{service_name}' in the file")
    to_node = _get(routes_node.value[index], "to")
    if to_node is None:
        raise EditError(f"route '{route.name}' of '{service_name}' has no `to:` in the file")
    edits = _replace_targets(text, to_node, weights, flow)
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[: edit.start] + edit.text + text[edit.end :]
    return text, route.name


def _get(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            found: yaml.Node = v
            return found
    return None


def _replace_targets(
    text: str, node: yaml.Node, weights: Mapping[str, int], flow: str
) -> list[_Edit]:
    if isinstance(node, yaml.ScalarNode) or (
        isinstance(node, yaml.MappingNode) and node.flow_style
    ):
        # `to: v2` or `to: {v1: 90, v2: 10}`: the node ends right after its last character.
        return [_Edit(node.start_mark.index, node.end_mark.index, flow)]
    if not isinstance(node, yaml.MappingNode):
        raise EditError("`to:` is neither a version nor a mapping of weights")
    # A block mapping: its end mark runs on into what follows (comments included), so each
    # weight is rewritten where it stands and new versions go on new lines below the last.
    edits = []
    present = {}
    for key, value in node.value:
        present[key.value] = value
        edits.append(
            _Edit(value.start_mark.index, value.end_mark.index, str(weights.get(key.value, 0)))
        )
    missing = [v for v in weights if v not in present]
    if missing:
        last_key, last_value = node.value[-1]
        indent = " " * last_key.start_mark.column
        lines = "".join(f"\n{indent}{v}: {weights[v]}" for v in missing)
        edits.append(_Edit(last_value.end_mark.index, last_value.end_mark.index, lines))
    return edits


def _insert_routes(text: str, svc_node: yaml.Node | None, flow: str) -> str:
    """A service that had no routes gets one, `default`, holding the weights."""
    if not isinstance(svc_node, yaml.MappingNode) or not svc_node.value:
        raise EditError("cannot find the service's mapping in the file")
    entry = f"{{name: {DEFAULT_ROUTE}, to: {flow}}}"
    if svc_node.flow_style:
        close = svc_node.end_mark.index - 1  # the closing brace
        return text[:close].rstrip() + f", routes: [{entry}]" + text[close:]
    first_key = svc_node.value[0][0]
    line_start = text.rfind("\n", 0, first_key.start_mark.index) + 1
    indent = " " * first_key.start_mark.column
    return text[:line_start] + f"{indent}routes:\n{indent}  - {entry}\n" + text[line_start:]


def write_file(path: Path, text: str) -> None:
    """Replace the file's content atomically, keeping its permissions."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
