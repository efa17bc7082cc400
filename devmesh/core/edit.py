"""Edit a mesh file's text in place, keeping the user's comments and layout.

PyYAML cannot keep comments, and a round-trip library such as ruamel.yaml re-emits the whole
document (re-indenting sequences, re-wrapping long flow mappings: measured on the example).
Instead the parser's node positions say exactly which characters hold the weights, and only
those characters are rewritten; every other byte of the file stays as it was.

YAML anchors, aliases and merge keys: one written value can stand in several routes.
- `to: *split` (this route's weights are an alias): the alias alone is replaced by the new
  weights, so this route gets its own and every other user of `&split` keeps it.
- The weights hold the anchor (`to: &split {...}`) that other routes use, or the route, its
  list or its service is an alias or comes through a `<<` merge: changing them here would
  change the others too, so the edit is refused, saying which routes share it and how to
  go on (shift the alias users first; an anchor nobody uses any more is kept as written).
  A service or route that others only `<<`-merge while writing their own `routes:` / `to:`
  shares nothing this edit touches, so it is edited (compose's base-service habit).
Every edit is then checked: the file parses again and nothing but this route's `to:` changed.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devmesh.core.model import DEFAULT_ROUTE, Mesh, Route, Service
from devmesh.core.problems import MeshError, did_you_mean
from devmesh.core.source import Yaml12Loader, parse

_MERGE = "tag:yaml.org,2002:merge"


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
    tree = _Tree(text)
    svc_node = tree.get(tree.get(tree.root, "services"), service_name)
    routes_node = tree.get(svc_node, "routes")
    flow = "{" + ", ".join(f"{v}: {w}" for v, w in weights.items()) + "}"
    where = f"route '{route.name}' of '{service_name}'"
    if routes_node is None:
        if route.name != DEFAULT_ROUTE:
            raise EditError(f"cannot find the routes of '{service_name}' in the file")
        tree.check_own(where, [svc_node])
        edited = _insert_routes(text, svc_node, flow)
    else:
        index = [r.name for r in service.routes].index(route.name)
        if not isinstance(routes_node, yaml.SequenceNode) or index >= len(routes_node.value):
            raise EditError(f"cannot find {where} in the file")
        route_node = routes_node.value[index]
        to_node = tree.get(route_node, "to")
        if to_node is None:
            raise EditError(f"{where} has no `to:` in the file")
        tree.check_own(where, [svc_node, routes_node, route_node])
        edits = tree.replace_targets(where, to_node, weights, flow)
        edited = text
        for edit in sorted(edits, key=lambda e: e.start, reverse=True):
            edited = edited[: edit.start] + edit.text + edited[edit.end :]
    _check_only_weights_changed(text, edited, service_name, route.name, index_of(service, route))
    return edited, route.name


def index_of(service: Service, route: Route) -> int:
    return [r.name for r in service.routes].index(route.name)


class _Loader(Yaml12Loader):
    """Composes as Yaml12Loader, and also notes each anchor and each alias with its span.

    PyYAML hands every alias the anchored node itself, whose marks are the anchor's: an edit
    there rewrote the anchor's text (and dropped `&name`). Here an alias gets a shallow copy
    carrying the alias's own marks, so an edit of it lands on `*name` and nowhere else."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.anchor_of: dict[int, str] = {}  # id(node) -> the anchor written on it
        self.alias_of: dict[int, str] = {}  # id(copy) -> the anchor an alias names
        self.uses: dict[str, list[yaml.Node]] = {}  # anchor -> its aliases (the copies)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        node = super().compose_node(parent, index)
        if node is None:
            return None
        if isinstance(event, yaml.AliasEvent):
            alias = copy.copy(node)
            alias.start_mark, alias.end_mark = event.start_mark, event.end_mark
            self.alias_of[id(alias)] = str(event.anchor)
            self.uses.setdefault(str(event.anchor), []).append(alias)
            return alias
        if getattr(event, "anchor", None):
            self.anchor_of[id(node)] = event.anchor
        return node


@dataclass
class _Tree:
    """The file's node tree with its anchors and aliases, for finding what an edit touches."""

    text: str
    root: yaml.Node | None = None
    anchor_of: dict[int, str] = field(default_factory=dict)
    alias_of: dict[int, str] = field(default_factory=dict)
    uses: dict[str, list[yaml.Node]] = field(default_factory=dict)
    merged: set[int] = field(default_factory=set)  # ids of nodes found through a `<<`
    merged_into: dict[int, yaml.MappingNode] = field(default_factory=dict)  # alias -> merger

    def __post_init__(self) -> None:
        loader = _Loader(self.text)
        try:
            self.root = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise EditError(f"the file does not parse: {exc}") from None
        finally:
            loader.dispose()
        self.anchor_of, self.alias_of, self.uses = loader.anchor_of, loader.alias_of, loader.uses
        self.merged_into = _merge_targets(self.root)

    def _own_key(self, node: yaml.Node, key: str) -> bool:
        return isinstance(node, yaml.MappingNode) and any(
            isinstance(k, yaml.ScalarNode) and k.tag != _MERGE and k.value == key
            for k, _ in node.value
        )

    def _users_override(self, anchor: str, key: str | None) -> bool:
        """Every use of `&anchor` is a `<<` merge into a mapping that writes `key` itself,
        so what the anchored mapping holds under `key` reaches no other place."""
        users = self.uses.get(anchor, [])
        return key is not None and all(
            id(u) in self.merged_into and self._own_key(self.merged_into[id(u)], key) for u in users
        )

    def get(self, node: yaml.Node | None, key: str) -> yaml.Node | None:
        """A mapping's value for `key`: its own, else the first `<<` merge that has it."""
        if not isinstance(node, yaml.MappingNode):
            return None
        merges: list[yaml.Node] = []
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag == _MERGE:
                merges.extend(v.value if isinstance(v, yaml.SequenceNode) else [v])
            elif isinstance(k, yaml.ScalarNode) and k.value == key:
                found: yaml.Node = v
                return found
        for source in merges:
            found_merged = self.get(source, key)
            if found_merged is not None:
                self.merged.add(id(found_merged))
                return found_merged
        return None

    def shared(self, node: yaml.Node, key: str | None = None) -> str | None:
        """How `node` is shared with other parts of the file, or None when it is its own.
        `key`: only what the node holds under it is edited (a service's `routes`)."""
        if id(node) in self.alias_of:
            return f"is the alias *{self.alias_of[id(node)]}"
        if id(node) in self.merged:
            return "comes from a `<<` merge"
        anchor = self.anchor_of.get(id(node))
        if anchor is not None and self.uses.get(anchor) and not self._users_override(anchor, key):
            users = ", ".join(self._line(u) for u in self.uses[anchor])
            return f"holds the anchor &{anchor}, which is also used at {users}"
        return None

    def _line(self, node: yaml.Node) -> str:
        """Where a node is written, and whose weights it is when it is a route's `to:`."""
        at = f"line {node.start_mark.line + 1}"
        services = self.get(self.root, "services")
        for key, svc in services.value if isinstance(services, yaml.MappingNode) else []:
            routes = self.get(svc, "routes")
            for route in routes.value if isinstance(routes, yaml.SequenceNode) else []:
                if self.get(route, "to") is node:
                    name = self.get(route, "name")
                    shown = name.value if isinstance(name, yaml.ScalarNode) else "?"
                    return f"{at} (route '{shown}' of '{key.value}')"
        return at

    def check_own(self, where: str, path: list[yaml.Node | None]) -> None:
        """Refuse when a service, route list or route on the way is shared: an edit inside
        would change every place that shares it."""
        for node, key in zip(path, ("routes", None, "to"), strict=False):
            how = self.shared(node, key) if node is not None else None
            if node is not None and how is not None:
                raise EditError(
                    f"{where} cannot be shifted alone: the {self._what(node, path)} at "
                    f"{self._line(node)} {how}, so changing its weights would change the "
                    "other places too. Write it out without the alias or merge, then shift"
                )

    def _what(self, node: yaml.Node, path: list[yaml.Node | None]) -> str:
        return ("service", "route list", "route")[path.index(node)] if node in path else "value"

    def replace_targets(
        self, where: str, node: yaml.Node, weights: Mapping[str, int], flow: str
    ) -> list[_Edit]:
        if id(node) in self.alias_of:
            # `to: *split`: this route gets its own weights; `&split` serves the others on.
            return [_Edit(node.start_mark.index, node.end_mark.index, flow)]
        how = self.shared(node)
        if how is not None:
            users = self.uses.get(self.anchor_of.get(id(node), ""), [])
            hint = (
                "Shift the routes that use it first (each then gets its own weights), or "
                "edit the file"
                if users
                else "Give this route its own `to:` in the file, then shift"
            )
            raise EditError(
                f"the weights of {where} are shared: `to:` {how}; changing them here would "
                f"change those routes too. {hint}"
            )
        keep = self._anchor_text(node)
        if isinstance(node, yaml.ScalarNode) or (
            isinstance(node, yaml.MappingNode) and node.flow_style
        ):
            # `to: v2` or `to: {v1: 90, v2: 10}`: the node ends right after its last character.
            return [_Edit(node.start_mark.index, node.end_mark.index, keep + flow)]
        if not isinstance(node, yaml.MappingNode):
            raise EditError("`to:` is neither a version nor a mapping of weights")
        # A block mapping: its end mark runs on into what follows (comments included), so each
        # weight is rewritten where it stands and new versions go on new lines below the last.
        edits = []
        present = {}
        for key, value in node.value:
            if key.tag == _MERGE:
                raise EditError(
                    f"the weights of {where} come partly from a `<<` merge; write them out "
                    "in the file, then shift"
                )
            if self.shared(value) is not None and id(value) not in self.alias_of:
                raise EditError(
                    f"the weight of {key.value} in {where} {self.shared(value)}; changing it "
                    "would change those too. Edit the file"
                )
            present[key.value] = value
            edits.append(
                _Edit(
                    value.start_mark.index,
                    value.end_mark.index,
                    self._anchor_text(value) + str(weights.get(key.value, 0)),
                )
            )
        missing = [v for v in weights if v not in present]
        if missing:
            last_key, last_value = node.value[-1]
            indent = " " * last_key.start_mark.column
            lines = "".join(f"\n{indent}{v}: {weights[v]}" for v in missing)
            edits.append(_Edit(last_value.end_mark.index, last_value.end_mark.index, lines))
        return edits

    def _anchor_text(self, node: yaml.Node) -> str:
        """`&name ` to write again before a new value: an anchor nobody uses stays written."""
        if id(node) in self.alias_of:
            return ""
        anchor = self.anchor_of.get(id(node))
        return f"&{anchor} " if anchor else ""


def _merge_targets(root: yaml.Node | None) -> dict[int, yaml.MappingNode]:
    """Each alias used as a `<<` merge value (alone or in a list) -> the mapping it merges into."""
    found: dict[int, yaml.MappingNode] = {}
    seen: set[int] = set()
    todo = [root] if root is not None else []
    while todo:
        node = todo.pop()
        if id(node.value) in seen or not isinstance(node, yaml.CollectionNode):
            continue
        seen.add(id(node.value))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag == _MERGE:
                    for source in v.value if isinstance(v, yaml.SequenceNode) else [v]:
                        found[id(source)] = node
                todo.extend((k, v))
        else:
            todo.extend(node.value)
    return found


def _check_only_weights_changed(
    before: str, after: str, service: str, route: str, index: int
) -> None:
    """The edited text parses, and its data differ from the old only in this route's `to:`.
    Anchors and merges above make this hold; this is the last guard that it does."""
    old, old_problems = parse(before, "before")
    new, new_problems = parse(after, "after")
    if new_problems and not old_problems:
        raise EditError(f"the edit would leave a file that does not parse: {new_problems[0]}")
    try:
        old_routes = old.data["services"][service].get("routes")
        new_routes = new.data["services"][service]["routes"]
        new_to = new_routes[index]["to"]
        if old_routes is None:  # `routes:` was added: the rest of the service is as it was
            del new.data["services"][service]["routes"]
        else:
            new_routes[index]["to"] = old_routes[index]["to"]
    except (KeyError, IndexError, TypeError, AttributeError):
        raise EditError(
            f"the edit would not leave route '{route}' of '{service}' in place"
        ) from None
    if new.data != old.data or not isinstance(new_to, dict):
        raise EditError(
            f"the edit of route '{route}' of '{service}' would change more than its weights; "
            "nothing was written"
        )


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


def write_file(path: Path, text: str | bytes) -> None:
    """Replace the file's content atomically, keeping its permissions. Text is written as
    UTF-8 whatever the locale (a mesh file is read as UTF-8)."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8") if isinstance(text, str) else text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
