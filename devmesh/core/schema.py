"""The mesh file's shape: one description for the structural check and for `devmesh schema`."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Any, Final

from devmesh.core import regex
from devmesh.core.durations import format_duration
from devmesh.core.limits import (
    HTTP_STATUS_RANGE,
    MAX_FAULT_DELAY_MS,
    MAX_REPLICAS,
    MAX_RETRY_ATTEMPTS,
    MAX_ROUTES,
    MAX_SERVICES,
    MAX_VERSIONS,
    PORT_RANGE,
)
from devmesh.core.model import (
    CERT_LIFETIME_MS,
    CONNECT_TIMEOUT_MS,
    DEFAULT_APP_CONNECT_TIMEOUT_MS,
    HEALTH_INTERVAL_MS,
    HEALTH_TIMEOUT_MS,
    HEALTHY_STATUSES,
    MIN_CERT_LIFETIME_MS,
    OUTLIER_BASE_EJECTION_MS,
    OUTLIER_CONSECUTIVE_5XX,
    OUTLIER_INTERVAL_MS,
    OUTLIER_MAX_EJECTION_PERCENT,
    PROTOCOLS,
    RATE_LIMIT_PER_MS,
    REPLICAS,
    RETRY_ON,
    STATSD_FLAVORS,
    TLS_MODE,
    TLS_MODES,
    TRACE_AUTO,
    TRACING_PROVIDERS,
    WATCH_ACTIONS,
    XRAY_DAEMON_ADDRESS,
    ZIPKIN_PATH_SUFFIX,
)
from devmesh.core.problems import Path, short
from devmesh.core.spec import (
    INVALID,
    Bool,
    ByType,
    Ctx,
    Duration,
    Empty,
    Enum,
    Field,
    Int,
    ListOf,
    MapOf,
    Obj,
    Percent,
    Scalar,
    Spec,
    Str,
    Then,
)

SCHEMA_ID = "https://devmesh.dev/schema/devmesh.schema.json"

NAME = r"[a-z][a-z0-9-]{0,39}"
NAME_HINT = "a name of lowercase letters, digits and '-', starting with a letter (40 at most)"
VERSION = r"[a-z0-9][a-z0-9-]{0,29}"
VERSION_HINT = "a version name of lowercase letters, digits and '-' (30 at most)"
HEADER = r":?[A-Za-z0-9!#$%&'*+.^_`|~-]+"
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"

# Service names an app cannot reach: every pod's /etc/hosts (plan/desired.py `hosts_text`)
# maps these to loopback before any service line, so the sidecar would never see the call.
_HOSTS_FILE = "every pod's /etc/hosts maps it to the pod itself"
RESERVED_SERVICE_NAMES: Final = {
    "localhost": _HOSTS_FILE,
    "ip6-localhost": _HOSTS_FILE,
    "ip6-loopback": _HOSTS_FILE,
    # Docker writes these into /etc/hosts of containers; keep them free for a pod that
    # does not get devmesh's own hosts file.
    "ip6-localnet": "Docker's /etc/hosts uses it",
    "ip6-mcastprefix": "Docker's /etc/hosts uses it",
    "ip6-allnodes": "Docker's /etc/hosts uses it",
    "ip6-allrouters": "Docker's /etc/hosts uses it",
}

# Docker's image reference grammar (distribution/reference, regexp.go):
#   [host[:port]/]path[:tag][@digest]; path components lowercase, separated by `.`, `_`,
#   `__` or runs of `-`; the host may have capitals; a tag is [\w][\w.-]{0,127}.
_ALNUM = r"[a-z0-9]+"
_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_REPOSITORY = rf"(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE = re.compile(rf"({_REPOSITORY})(?::({_TAG}))?(?:@({_DIGEST}))?")
_MAX_REPOSITORY = 255  # Docker's NameTotalLengthMax


def image_reference_problem(image: str) -> str | None:
    """None when Docker would take `image` as a reference, else why not."""
    if len(image) > 1024:
        return "is too long for an image reference"
    found = _IMAGE.fullmatch(image)
    if found is None:
        if image != image.lower() and _IMAGE.fullmatch(image.lower()):
            return (
                f"'{short(image)}' is not a valid image reference: repository names are lowercase"
            )
        return (
            f"'{short(image)}' is not a valid image reference "
            "([registry[:port]/]name[:tag][@digest], lowercase name)"
        )
    if len(found.group(1)) > _MAX_REPOSITORY:
        return f"the repository name is longer than {_MAX_REPOSITORY} characters"
    return None


HTTP_RETRY_ON = (
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "envoy-ratelimited",
)
GRPC_RETRY_ON = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")


def _default_ms(ms: int) -> str:
    return f"default {format_duration(ms)}"


def _regex(value: Any, path: Path, ctx: Ctx) -> Any:
    problem = regex.check(value)
    return ctx.error(path, f"invalid RE2 regex: {problem}") if problem else value


def _starts_with_slash(value: Any, path: Path, ctx: Ctx) -> Any:
    return value if value.startswith("/") else ctx.error(path, f"'{value}' must start with '/'")


def _upper(value: Any, path: Path, ctx: Ctx) -> Any:
    return value.upper()


def _image(value: Any, path: Path, ctx: Ctx) -> Any:
    problem = image_reference_problem(value)
    return ctx.error(path, problem) if problem else value


_url_path = Then(Str(description="starts with '/'"), _starts_with_slash)
_regex_str = Then(Str(description="an RE2 regular expression"), _regex)

_value_match = ByType(
    {
        str: Str(min_length=0, description="exact value"),
        int: Scalar(),
        dict: Obj(
            {
                "exact": Field(Str(min_length=0), description="the whole value equals this"),
                "prefix": Field(Str(), description="the value starts with this"),
                "regex": Field(_regex_str, description="RE2; must match the whole value"),
                "present": Field(Bool(), description="true: must be present; false: absent"),
            },
            exclusive=(("exact", "prefix", "regex", "present"),),
            require_one_of=(("exact", "prefix", "regex", "present"),),
        ),
    },
    description="a value to equal, or one of exact / prefix / regex / present",
)

match_spec = Obj(
    {
        "path_prefix": Field(_url_path, description="the request path starts with this"),
        "path": Field(_url_path, description="the path (without query string) equals this"),
        "path_regex": Field(_regex_str, description="RE2 matching the whole path, no query"),
        "headers": Field(
            MapOf(_value_match, key_pattern=HEADER, key_hint="a valid header name"),
            description="every listed header must match",
        ),
        "query": Field(
            MapOf(_value_match, key_pattern=r"[^\s&=]+", key_hint="a query parameter name"),
            description="every listed query parameter must match",
        ),
        "method": Field(
            ByType(
                {
                    str: Then(Str(pattern=r"[A-Za-z]+", pattern_hint="an HTTP method"), _upper),
                    list: ListOf(
                        Then(Str(pattern=r"[A-Za-z]+", pattern_hint="an HTTP method"), _upper),
                        min_items=1,
                        unique=True,
                    ),
                }
            ),
            description="one method or a list of methods",
        ),
    },
    description="what a request must look like; everything given must hold",
    exclusive=(("path_prefix", "path", "path_regex"),),
)

_weights = ByType(
    {
        str: Str(pattern=VERSION, pattern_hint=VERSION_HINT),
        dict: MapOf(
            Int(minimum=0, maximum=100),
            key_pattern=VERSION,
            key_hint=VERSION_HINT,
            min_items=1,
        ),
    },
    description="a version, or versions with weights that add up to 100",
)

retries_spec = Obj(
    {
        "attempts": Field(
            Int(0, MAX_RETRY_ATTEMPTS), required=True, description="retries after the first try"
        ),
        "on": Field(
            ListOf(Enum((*HTTP_RETRY_ON, *GRPC_RETRY_ON)), min_items=1, unique=True),
            description="conditions (Envoy retry_on); default " + ", ".join(RETRY_ON),
        ),
        "per_try_timeout": Field(Duration(minimum_ms=1)),
    }
)

fault_spec = Obj(
    {
        "delay": Field(
            Obj(
                {
                    "fixed": Field(
                        Duration(minimum_ms=1, maximum_ms=MAX_FAULT_DELAY_MS), required=True
                    ),
                    "percent": Field(Percent(), description="default 100"),
                }
            )
        ),
        "abort": Field(
            Obj(
                {
                    "status": Field(
                        Int(*HTTP_STATUS_RANGE), description="HTTP status to answer with"
                    ),
                    "grpc_status": Field(Int(0, 16), description="gRPC status to answer with"),
                    "percent": Field(Percent(), description="default 100"),
                },
                exclusive=(("status", "grpc_status"),),
                require_one_of=(("status", "grpc_status"),),
            )
        ),
    },
    require_one_of=(("delay", "abort"),),
)

mirror_spec = ByType(
    {
        str: Str(pattern=VERSION, pattern_hint=VERSION_HINT),
        dict: Obj(
            {
                "service": Field(
                    Str(pattern=NAME, pattern_hint=NAME_HINT), description="default: this one"
                ),
                "version": Field(Str(pattern=VERSION, pattern_hint=VERSION_HINT)),
                "percent": Field(Percent(), description="default 100"),
            }
        ),
    },
    description="copy requests (responses ignored) to a version, or {service, version, percent}",
)

route_spec = Obj(
    {
        "name": Field(Str(pattern=NAME, pattern_hint=NAME_HINT), description="default route-N"),
        "match": Field(match_spec, description="default: every request"),
        "to": Field(_weights, required=True),
        "retries": Field(retries_spec),
        "timeout": Field(Duration(), description="whole request, retries included; 0s: none"),
        "fault": Field(fault_spec),
        "mirror": Field(mirror_spec),
    }
)

outlier_spec = Obj(
    {
        "consecutive_5xx": Field(Int(1, 1000), description=f"default {OUTLIER_CONSECUTIVE_5XX}"),
        "interval": Field(Duration(minimum_ms=1), description=_default_ms(OUTLIER_INTERVAL_MS)),
        "base_ejection_time": Field(
            Duration(minimum_ms=1), description=_default_ms(OUTLIER_BASE_EJECTION_MS)
        ),
        "max_ejection_percent": Field(
            Int(0, 100), description=f"default {OUTLIER_MAX_EJECTION_PERCENT}"
        ),
    },
    description="eject a pod from the pool after consecutive errors",
)

pool_spec = Obj(
    {
        "connect_timeout": Field(
            Duration(minimum_ms=1), description=_default_ms(CONNECT_TIMEOUT_MS)
        ),
        "max_connections": Field(Int(1, 1_000_000)),
        "max_pending_requests": Field(Int(1, 1_000_000)),
        "max_requests": Field(Int(1, 1_000_000)),
        "max_retries": Field(Int(0, 1_000_000), description="concurrent retries; default no limit"),
    },
    description="connection-pool limits (Envoy circuit breakers) per calling sidecar",
)

rate_limit_spec = Obj(
    {
        "requests": Field(Int(1, 1_000_000), required=True),
        "per": Field(Duration(minimum_ms=1), description=_default_ms(RATE_LIMIT_PER_MS)),
    },
    description="local rate limit at the service's own sidecar (answers 429 beyond it)",
)

security_spec = Obj(
    {
        "no_new_privileges": Field(
            Bool(),
            description="default true; false lets setuid programs in the app gain privileges",
        ),
    },
    description="the app container's privileges (sidecars are always locked down)",
)

_tls_mode = Field(
    Enum(TLS_MODES),
    description="STRICT: mTLS only; PERMISSIVE: mTLS and plaintext; DISABLED: plaintext "
    f"(default {TLS_MODE})",
)

mesh_tls_spec = Obj(
    {
        "mode": _tls_mode,
        "cert_lifetime": Field(
            Duration(minimum_ms=MIN_CERT_LIFETIME_MS),
            description="pod certificates' lifetime, re-issued at half of it; default "
            + format_duration(CERT_LIFETIME_MS),
        ),
    },
    description="mTLS between sidecars, with certificates from devmesh's local CA",
)

service_tls_spec = Obj(
    {"mode": _tls_mode},
    description="this service's inbound mTLS mode, over the mesh's `tls.mode`",
)

allow_spec = Obj(
    {
        "method": match_spec.fields["method"],
        "path_prefix": match_spec.fields["path_prefix"],
        "path": match_spec.fields["path"],
        "path_regex": match_spec.fields["path_regex"],
    },
    description="requests a declared caller may make; everything given must hold",
    exclusive=(("path_prefix", "path", "path_regex"),),
)

health_spec = Obj(
    {
        "path": Field(
            _url_path,
            description=f"HTTP GET must answer {HEALTHY_STATUSES.start}-"
            f"{HEALTHY_STATUSES.stop - 1} (2xx or 3xx, as Kubernetes' httpGet probe); "
            "omit for a TCP check",
        ),
        "interval": Field(Duration(minimum_ms=100), description=_default_ms(HEALTH_INTERVAL_MS)),
        "timeout": Field(Duration(minimum_ms=1), description=_default_ms(HEALTH_TIMEOUT_MS)),
    }
)

_env = MapOf(
    Scalar(),
    key_pattern=ENV_NAME,
    key_hint="an environment variable name",
)

_command = ByType(
    {str: Str(), list: ListOf(Scalar(), min_items=1)},
    description="a command line, or its arguments as a list",
)

build_spec = ByType(
    {
        str: Str(description="the build context, relative to the mesh file"),
        dict: Obj(
            {
                "context": Field(Str(), required=True),
                "dockerfile": Field(Str()),
                "args": Field(_env),
                "target": Field(Str(), description="the stage of a multi-stage Dockerfile"),
                "secrets": Field(
                    MapOf(Str(), key_pattern=r"[A-Za-z0-9_.-]+", key_hint="a secret id"),
                    description="secret id -> file (relative to the mesh file), for "
                    "`RUN --mount=type=secret,id=...` (BuildKit)",
                ),
            }
        ),
    }
)

watch_rule_spec = Obj(
    {
        "path": Field(Str(), required=True, description="relative to the mesh file"),
        "action": Field(
            Enum(WATCH_ACTIONS),
            required=True,
            description="sync: copy changed files into the running app containers; "
            "rebuild: build the image and roll the pods; restart: restart the app; "
            "sync+restart: both",
        ),
        "target": Field(Str(), description="where the files go in the app container (sync)"),
        "ignore": Field(ListOf(Str()), description="glob patterns relative to `path`"),
    }
)

develop_spec = Obj(
    {
        "watch": Field(
            ListOf(watch_rule_spec, min_items=1),
            required=True,
            description="what the daemon does when files change",
        )
    },
    description="the code-edit loop, in compose's `develop:` words",
)

_workload_fields = {
    "image": Field(
        Then(Str(), _image), description="image to run (with `build`: the tag to build)"
    ),
    "build": Field(build_spec),
    "env": Field(_env),
    "command": Field(_command),
    "replicas": Field(
        Int(0, MAX_REPLICAS), description=f"pods of this version; default {REPLICAS}"
    ),
}

host_spec = Obj(
    {
        "port": Field(
            Int(*PORT_RANGE),
            required=True,
            description="where the process listens on the host (127.0.0.1 is enough)",
        )
    },
    description="this version runs on the host, not in a container: the mesh routes to "
    "the process on this port (see `devmesh dev`)",
)

version_spec = ByType(
    {dict: Obj({**_workload_fields, "host": Field(host_spec)}), type(None): Empty()},
    wording="a mapping (image, build, env, command, replicas, host)",
)

_policy_fields = {
    "protocol": Field(Enum(PROTOCOLS), description="default http"),
    "timeout": Field(Duration(), description="default request timeout of its routes"),
    "retries": Field(retries_spec, description="default retries of its routes"),
    "outlier_detection": Field(outlier_spec),
    "connection_pool": Field(pool_spec),
    "rate_limit": Field(rate_limit_spec),
    "health": Field(health_spec),
    "egress": Field(
        Enum(("declared", "all")),
        description="declared: only `calls` are reachable (default); all: every service",
    ),
    "app_connect_timeout": Field(
        Duration(minimum_ms=1),
        description="the sidecar's connect timeout to its own app; default "
        + format_duration(DEFAULT_APP_CONNECT_TIMEOUT_MS),
    ),
    "security": Field(security_spec),
}

service_spec = Obj(
    {
        **_workload_fields,
        "port": Field(Int(*PORT_RANGE), required=True, description="where the app listens"),
        **_policy_fields,
        "calls": Field(
            ListOf(Str(pattern=NAME, pattern_hint=NAME_HINT), unique=True),
            description="services this one reaches by name",
        ),
        "tls": Field(service_tls_spec),
        "allow": Field(
            ListOf(allow_spec, min_items=1, max_items=MAX_ROUTES),
            description="narrows what callers may ask (any rule matching lets a request in; "
            "others get 403); default: everything, from the services that list this one in "
            "`calls`",
        ),
        "versions": Field(
            MapOf(
                version_spec,
                key_pattern=VERSION,
                key_hint=VERSION_HINT,
                min_items=1,
                max_items=MAX_VERSIONS,
            ),
            description="versions; each inherits this service's image, build, env...",
        ),
        "routes": Field(
            ListOf(route_spec, min_items=1, max_items=MAX_ROUTES), description="first match wins"
        ),
        "develop": Field(develop_spec),
    }
)

ingress_route_spec = Obj(
    {
        "name": Field(Str(pattern=NAME, pattern_hint=NAME_HINT)),
        "match": Field(match_spec),
        "service": Field(Str(pattern=NAME, pattern_hint=NAME_HINT), required=True),
        "timeout": Field(Duration()),
        "rewrite_prefix": Field(_url_path, description="replace the matched path prefix"),
    }
)

ingress_tls_spec = ByType(
    {
        bool: Bool(),
        dict: Obj(
            {
                "cert": Field(Str(), required=True, description="PEM certificate (chain) file"),
                "key": Field(Str(), required=True, description="its PEM private key file"),
            }
        ),
    },
    description="HTTPS: true for a certificate from the local CA (`devmesh ca`), or files",
)

ingress_spec = Obj(
    {
        "port": Field(Int(*PORT_RANGE), required=True, description="published on 127.0.0.1 only"),
        "tls": Field(ingress_tls_spec),
        "routes": Field(
            ListOf(ingress_route_spec, min_items=1, max_items=MAX_ROUTES), required=True
        ),
    }
)

# -- observability ----------------------------------------------------------------------------

_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_LOOPBACK_WHY = "devmesh sends nothing off this machine: use a 127.x.x.x address"


def loopback_address(text: str) -> tuple[str, int] | str:
    """`127.0.0.1:8125` -> (host, port), or why it is not a loopback host:port.
    `localhost` is taken as 127.0.0.1: no name is ever looked up."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        return f"'{short(text)}' is not HOST:PORT (for example 127.0.0.1:8125)"
    if not re.fullmatch(r"[0-9]{1,5}", port) or not PORT_RANGE[0] <= int(port) <= PORT_RANGE[1]:
        return f"'{short(port)}' in '{short(text)}' is not a port (1 to 65535)"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"'{short(host)}' is not an IP address; {_LOOPBACK_WHY}"
    if ip not in _LOOPBACK:
        return f"{ip} is not on the loopback (127.0.0.0/8); {_LOOPBACK_WHY}"
    return str(ip), int(port)


def forward_url(text: str) -> tuple[str, int, str] | str:
    """An http:// URL on the loopback -> (host, port, path), or why not."""
    try:
        url = urllib.parse.urlsplit(text)
        port = url.port
    except ValueError as exc:
        return f"'{short(text)}' is not a URL: {exc}"
    if url.scheme != "http":
        return (
            f"'{short(text)}' must start with http:// (OTLP/HTTP or Zipkin on this machine; "
            "https is not relayed)"
        )
    if url.query or url.fragment or url.username or url.password:
        return f"'{short(text)}' takes no query, fragment or user"
    found = loopback_address(f"{url.hostname or ''}:{port or 80}")
    if isinstance(found, str):
        return found
    return found[0], found[1], url.path or "/"


def _address(value: Any, path: Path, ctx: Ctx) -> Any:
    found = loopback_address(value)
    return ctx.error(path, found) if isinstance(found, str) else found


def _forward(value: Any, path: Path, ctx: Ctx) -> Any:
    found = forward_url(value)
    return ctx.error(path, found) if isinstance(found, str) else (value, *found)


_host_port = Then(Str(description="HOST:PORT on 127.0.0.0/8"), _address)

tracing_spec = ByType(
    {
        bool: Bool(),
        dict: Obj(
            {
                "provider": Field(
                    Enum(TRACING_PROVIDERS),
                    description="otel: spans to the daemon's own collector (default); "
                    "xray: Envoy's X-Ray tracer, relayed to `address`",
                ),
                "sampling": Field(
                    Percent(also=TRACE_AUTO),
                    description="percent of requests traced, or `auto` (the default): every "
                    "request while the mesh is quiet, fewer under load (about 50 spans a "
                    "second)",
                ),
                "forward": Field(
                    Then(Str(description="an http:// URL on 127.0.0.0/8"), _forward),
                    description="otel only: the daemon forwards spans here, OTLP/HTTP "
                    f"(http://127.0.0.1:4318/v1/traces) or Zipkin (a URL ending "
                    f"{ZIPKIN_PATH_SUFFIX})",
                ),
                "address": Field(
                    _host_port,
                    description="xray only: the X-Ray daemon (UDP); default "
                    f"{XRAY_DAEMON_ADDRESS[0]}:{XRAY_DAEMON_ADDRESS[1]}",
                ),
            }
        ),
    },
    description="true (the default): spans to the daemon's collector; false: no tracing",
)

observability_spec = Obj(
    {
        "access_log": Field(
            Bool(), description="every sidecar and the gateway log every request; default true"
        ),
        "metrics": Field(
            Obj({"port": Field(Int(*PORT_RANGE), required=True)}),
            description="the daemon serves Prometheus /metrics on 127.0.0.1:PORT; "
            "absent: off (unless `up --metrics-port`)",
        ),
        "tracing": Field(tracing_spec),
        "statsd": Field(
            Obj(
                {
                    "address": Field(_host_port, required=True),
                    "flavor": Field(Enum(STATSD_FLAVORS), description="default statsd"),
                }
            ),
            description="Envoy's stats, relayed to a StatsD or DogStatsD agent (UDP)",
        ),
    },
    description="access logs, Prometheus metrics, traces and StatsD",
)

mesh_spec = Obj(
    {
        "mesh": Field(
            Str(
                pattern=r"[a-z][a-z0-9-]{0,29}",
                pattern_hint="a mesh name of lowercase letters, digits and '-' (30 at most)",
            ),
            required=True,
            description="the mesh's name; Docker objects carry it",
        ),
        "defaults": Field(Obj(dict(_policy_fields)), description="what every service inherits"),
        "tls": Field(mesh_tls_spec),
        "ingress": Field(ingress_spec),
        "observability": Field(observability_spec),
        "services": Field(
            MapOf(
                service_spec,
                key_pattern=NAME,
                key_hint=NAME_HINT,
                min_items=1,
                max_items=MAX_SERVICES,
                reserved=RESERVED_SERVICE_NAMES,
            ),
            required=True,
        ),
    },
    description="devmesh mesh file",
)


def json_schema() -> dict[str, Any]:
    out: dict[str, Any] = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": SCHEMA_ID,
        "title": "devmesh mesh file",
    }
    out.update(mesh_spec.schema())
    return out


__all__ = ["INVALID", "Spec", "json_schema", "mesh_spec"]
