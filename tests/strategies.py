"""Hypothesis strategies for mesh files: mostly-valid documents, and mutations of them.

Names come from small pools so that references (calls, versions, mirrors, ingress targets)
hit often enough to exercise the cross-reference rules, and miss often enough to fail them.
"""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import strategies as st

SERVICES = ["web", "api", "db", "cart", "auth"]
VERSIONS = ["v1", "v2", "v3"]
JUNK: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70000),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _weights(versions: list[str]) -> st.SearchStrategy[Any]:
    """Weights over real versions that add up to 100, or a single version."""

    def split(chosen: list[str], cuts: list[int]) -> dict[str, int]:
        points = [0, *sorted(cuts[: len(chosen) - 1]), 100]
        return {v: points[i + 1] - points[i] for i, v in enumerate(chosen)}

    return st.one_of(
        st.sampled_from(versions),
        st.builds(
            split,
            st.lists(st.sampled_from(versions), min_size=1, max_size=3, unique=True),
            st.lists(st.integers(0, 100), min_size=2, max_size=2),
        ),
    )


_value_match = st.one_of(
    st.sampled_from(["1", "yes", ""]),
    st.fixed_dictionaries({"exact": st.sampled_from(["a", "b"])}),
    st.fixed_dictionaries({"prefix": st.sampled_from(["a", "/"])}),
    st.fixed_dictionaries({"regex": st.sampled_from(["[0-9]+", "a|b", "x{2,3}", ".*"])}),
    st.fixed_dictionaries({"present": st.booleans()}),
)

_path = st.sampled_from(["/", "/api", "/api/", "/v1/items"])
_duration = st.sampled_from(["1s", "250ms", "1m30s", "10s", "1.5s"])


@st.composite
def match(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kind = draw(st.sampled_from(["", "path_prefix", "path", "path_regex"]))
    if kind == "path_regex":
        out[kind] = draw(st.sampled_from(["/items/[0-9]+", "/.*", "/(a|b)"]))
    elif kind:
        out[kind] = draw(_path)
    if draw(st.booleans()):
        out["headers"] = draw(
            st.dictionaries(
                st.sampled_from(["x-canary", "X-User", "content-type"]), _value_match, max_size=2
            )
        )
    if draw(st.booleans()):
        query_value = _value_match
        out["query"] = draw(
            st.dictionaries(st.sampled_from(["q", "page"]), query_value, max_size=2)
        )
    if draw(st.booleans()):
        out["method"] = draw(
            st.one_of(
                st.sampled_from(["GET", "post"]),
                st.lists(
                    st.sampled_from(["GET", "POST", "DELETE"]), min_size=1, max_size=2, unique=True
                ),
            )
        )
    return out


retries = st.fixed_dictionaries(
    {"attempts": st.integers(0, 4)},
    optional={
        "on": st.lists(
            st.sampled_from(["5xx", "reset", "connect-failure", "unavailable"]),
            min_size=1,
            max_size=3,
            unique=True,
        ),
        "per_try_timeout": _duration,
    },
)

fault = st.one_of(
    st.fixed_dictionaries(
        {
            "delay": st.fixed_dictionaries(
                {"fixed": _duration}, optional={"percent": st.sampled_from([0, 5, 12.5, 100])}
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "abort": st.one_of(
                st.fixed_dictionaries(
                    {"status": st.sampled_from([503, 404])},
                    optional={"percent": st.sampled_from([1, 50, "10%"])},
                ),
                st.fixed_dictionaries({"grpc_status": st.sampled_from([14, 2])}),
            )
        }
    ),
)


@st.composite
def http_routes(
    draw: st.DrawFn, service: str, versions: list[str], all_versions: dict[str, list[str]]
) -> list[dict[str, Any]]:
    routes = []
    names = ["main", "canary", "r-1", "beta"]
    for i in range(draw(st.integers(1, 3))):
        r: dict[str, Any] = {"to": draw(_weights(versions))}
        if draw(st.booleans()):
            r["name"] = names[i]
        if draw(st.booleans()):
            r["match"] = draw(match())
        if draw(st.booleans()):
            r["retries"] = draw(retries)
        if draw(st.booleans()):
            r["timeout"] = draw(_duration)
        if draw(st.booleans()):
            r["fault"] = draw(fault)
        if draw(st.integers(0, 3)) == 0:
            target = draw(st.sampled_from(sorted(all_versions)))
            r["mirror"] = {
                "service": target,
                "version": draw(st.sampled_from(all_versions[target])),
            }
        routes.append(r)
    return routes


@st.composite
def valid_mesh(draw: st.DrawFn) -> dict[str, Any]:
    """Documents built to be valid (a few rules, like port collisions, may still fail)."""
    names = draw(st.lists(st.sampled_from(SERVICES), min_size=1, max_size=4, unique=True))
    protocols = {n: draw(st.sampled_from(["http", "http2", "grpc", "tcp"])) for n in names}
    versions = {n: VERSIONS[: draw(st.integers(1, 3))] for n in names}
    http_names = [n for n in names if protocols[n] != "tcp"]
    http_versions = {n: versions[n] for n in http_names}
    services: dict[str, Any] = {}
    for n in names:
        s: dict[str, Any] = {
            "image": "app:1",
            "port": draw(st.sampled_from([8000, 8080, 5432, 50051, 3000])),
            "protocol": protocols[n],
            "versions": {
                v: draw(
                    st.fixed_dictionaries(
                        {}, optional={"replicas": st.integers(0, 3), "env": st.just({"A": 1})}
                    )
                )
                for v in versions[n]
            },
        }
        if draw(st.booleans()):
            s["calls"] = draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
        if protocols[n] == "tcp":
            if draw(st.booleans()):
                s["routes"] = [{"to": draw(_weights(versions[n]))}]
            if draw(st.booleans()):
                s["health"] = {"interval": "2s"}
        else:
            if draw(st.booleans()):
                s["routes"] = draw(http_routes(n, versions[n], http_versions))
            if draw(st.booleans()):
                s["health"] = {"path": "/healthz"}
        optional: dict[str, st.SearchStrategy[Any]] = {
            "retries": retries,
            "timeout": _duration,
            "egress": st.sampled_from(["declared", "all"]),
            "rate_limit": st.fixed_dictionaries(
                {"requests": st.integers(1, 100)}, optional={"per": _duration}
            ),
            "outlier_detection": st.fixed_dictionaries(
                {}, optional={"consecutive_5xx": st.integers(1, 10), "interval": _duration}
            ),
            "connection_pool": st.fixed_dictionaries(
                {}, optional={"max_connections": st.integers(1, 10), "connect_timeout": _duration}
            ),
            "command": st.one_of(
                st.just("run --fast 'a b'"), st.lists(st.just("x"), min_size=1, max_size=2)
            ),
        }
        for key, strat in optional.items():
            if draw(st.integers(0, 3)) == 0:
                s[key] = draw(strat)
        services[n] = s
    doc: dict[str, Any] = {"mesh": draw(st.sampled_from(["shop", "m-1"])), "services": services}
    with_ingress: bool = draw(st.booleans())
    if http_names and with_ingress:
        doc["ingress"] = {
            "port": draw(st.sampled_from([8080, 9000])),
            "routes": [
                {
                    "service": draw(st.sampled_from(http_names)),
                    "match": {"path_prefix": p},
                    "rewrite_prefix": "/",
                }
                for p in draw(
                    st.lists(
                        st.sampled_from(["/a/", "/b/", "/"]), min_size=1, max_size=3, unique=True
                    )
                )
            ],
        }
    if draw(st.integers(0, 3)) == 0:
        doc["defaults"] = draw(
            st.fixed_dictionaries({}, optional={"timeout": _duration, "retries": retries})
        )
    return doc


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_document(draw: st.DrawFn) -> dict[str, Any]:
    """A generated document with one to three values replaced, removed or misspelled."""
    doc = draw(valid_mesh())
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "rename"]))
        if action == "replace":
            parent[last] = draw(JUNK)
        elif isinstance(parent, dict):
            value = parent.pop(last)
            if action == "rename":
                parent[str(last)[:-1] + draw(st.sampled_from(["x", "_", ""]))] = value
        elif isinstance(parent, list) and len(parent) > 1:
            parent.pop(last)
    return doc


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


@st.composite
def mangled_text(draw: st.DrawFn) -> str:
    """Valid-looking YAML text with characters cut, doubled or inserted: syntax errors."""
    text = dump(draw(valid_mesh()))
    for _ in range(draw(st.integers(1, 4))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["cut", "insert", "dup"]))
        if op == "cut":
            text = text[:i] + text[i + 1 :]
        elif op == "insert":
            text = (
                text[:i]
                + draw(st.sampled_from([":", "-", "{", "[", "'", "\t", "&a", "*a", "\n  "]))
                + text[i:]
            )
        else:
            text = text[:i] + text[i : i + 20] + text[i:]
    return text
