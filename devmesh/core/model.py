"""The validated mesh: frozen values that every later stage reads and nothing mutates.

`load()` fills in every inherited default (mesh `defaults:` → service → route), so later
stages read resolved values and never consult defaults again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from devmesh.core.problems import Problem

Protocol = Literal["http", "http2", "grpc", "tcp"]
HTTP_PROTOCOLS: tuple[Protocol, ...] = ("http", "http2", "grpc")
PROTOCOLS: tuple[Protocol, ...] = (*HTTP_PROTOCOLS, "tcp")
Egress = Literal["declared", "all"]
PathKind = Literal["prefix", "exact", "regex"]
TlsMode = Literal["STRICT", "PERMISSIVE", "DISABLED"]
TLS_MODES: tuple[TlsMode, ...] = ("STRICT", "PERMISSIVE", "DISABLED")
ValueKind = Literal["exact", "prefix", "regex", "present", "absent"]

IMPLICIT_VERSION = "default"  # the one version of a service that declares no `versions:`
DEFAULT_ROUTE = "default"  # the catch-all route of a service that declares no `routes:`

# Defaults, declared once: the schema's descriptions, the loader and the runtime read these.
HEALTH_INTERVAL_MS = 2000
HEALTH_TIMEOUT_MS = 1000
# What an HTTP health check accepts: 2xx and 3xx, as Kubernetes' httpGet probe does
# (a redirect from `/health` to `/health/` is an app that answers).
HEALTHY_STATUSES = range(200, 400)
CONNECT_TIMEOUT_MS = 1000
OUTLIER_CONSECUTIVE_5XX = 5
OUTLIER_INTERVAL_MS = 10_000
OUTLIER_BASE_EJECTION_MS = 30_000
OUTLIER_MAX_EJECTION_PERCENT = 10
RATE_LIMIT_PER_MS = 1000
REPLICAS = 1
RETRY_ON = ("5xx", "reset", "connect-failure")
# mTLS between sidecars. STRICT by default: every service of a mesh has a sidecar, so there
# is no plaintext peer to migrate (the reason Istio starts PERMISSIVE) and `calls:` is
# enforced from the first `up` (README, "mTLS").
TLS_MODE: TlsMode = "STRICT"
CERT_LIFETIME_MS = 24 * 3_600_000  # a pod certificate's; re-issued at half of it
MIN_CERT_LIFETIME_MS = 2_000  # tests rotate in seconds; less cannot be pushed in time


@dataclass(frozen=True, slots=True)
class PathMatch:
    kind: PathKind = "prefix"
    value: str = "/"


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A header or query-parameter condition. Header names are stored lower-case."""

    name: str
    kind: ValueKind
    value: str = ""


@dataclass(frozen=True, slots=True)
class Match:
    path: PathMatch = PathMatch()
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()
    methods: tuple[str, ...] = ()  # any of; empty means any method


@dataclass(frozen=True, slots=True)
class Target:
    version: str
    weight: int


@dataclass(frozen=True, slots=True)
class Retries:
    attempts: int  # retries after the first try, as Envoy's num_retries
    on: tuple[str, ...]
    per_try_timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Delay:
    fixed_ms: int
    percent: float


@dataclass(frozen=True, slots=True)
class Abort:
    percent: float
    http_status: int | None = None
    grpc_status: int | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    delay: Delay | None = None
    abort: Abort | None = None


@dataclass(frozen=True, slots=True)
class Mirror:
    service: str
    version: str
    percent: float


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    to: tuple[Target, ...]
    match: Match = Match()
    retries: Retries | None = None
    timeout_ms: int | None = None
    fault: Fault | None = None
    mirror: Mirror | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int
    interval_ms: int
    base_ejection_ms: int
    max_ejection_percent: int


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    connect_timeout_ms: int
    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True, slots=True)
class Security:
    """What an app container may do. Sidecars, the gateway and pause are always locked down."""

    no_new_privileges: bool = True  # setuid binaries (sudo, ping) cannot gain privileges


# The sidecar's connect timeout to its own app: longer than the kernel's 1 s first SYN
# retransmit, so an app whose accept backlog overflowed for an instant is not a 503.
DEFAULT_APP_CONNECT_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class Allow:
    """One `allow:` rule: a request from a declared caller passes if it matches any rule."""

    methods: tuple[str, ...] = ()  # any of; empty: any method
    path: PathMatch | None = None  # None: any path


@dataclass(frozen=True, slots=True)
class Tls:
    """The mesh's `tls:`: the mode every service has unless it sets its own."""

    mode: TlsMode = TLS_MODE
    cert_lifetime_ms: int = CERT_LIFETIME_MS


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests: int
    per_ms: int


@dataclass(frozen=True, slots=True)
class Health:
    path: str | None  # None: the port accepting a connection is healthy
    interval_ms: int = HEALTH_INTERVAL_MS
    timeout_ms: int = HEALTH_TIMEOUT_MS


@dataclass(frozen=True, slots=True)
class Build:
    context: str  # relative to the mesh file's directory, as written
    dockerfile: str | None = None
    args: tuple[tuple[str, str], ...] = ()
    target: str | None = None  # the stage of a multi-stage Dockerfile to build
    # id -> file (relative to the mesh file's directory) for `RUN --mount=type=secret,id=`
    secrets: tuple[tuple[str, str], ...] = ()


WatchAction = Literal["sync", "rebuild", "sync+restart", "restart"]
WATCH_ACTIONS: tuple[WatchAction, ...] = ("sync", "rebuild", "sync+restart", "restart")


@dataclass(frozen=True, slots=True)
class WatchRule:
    """One `develop: watch:` entry, in compose's words: a change under `path` syncs the
    files into the running app containers at `target`, rebuilds the image, or restarts."""

    path: str  # relative to the mesh file's directory, as written
    action: WatchAction
    target: str | None = None  # absolute, in the app container (sync actions only)
    ignore: tuple[str, ...] = ()  # glob patterns, relative to `path`


@dataclass(frozen=True, slots=True)
class HostApp:
    """A version whose app runs on the host, not in a container (`host: {port: 5000}`):
    its pod is a sidecar alone, whose app is the host process listening on 127.0.0.1:port
    (reached through a relay the daemon binds on the mesh network's gateway address)."""

    port: int


@dataclass(frozen=True, slots=True)
class Version:
    name: str
    image: str | None
    build: Build | None
    env: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] | None = None
    replicas: int = REPLICAS
    host: HostApp | None = None  # runs on the host (one pod: its sidecar), not in a container


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    port: int
    protocol: Protocol
    versions: tuple[Version, ...]
    routes: tuple[Route, ...]
    calls: tuple[str, ...] = ()
    egress: Egress = "declared"
    health: Health | None = None
    outlier_detection: OutlierDetection | None = None
    connection_pool: ConnectionPool = ConnectionPool(connect_timeout_ms=CONNECT_TIMEOUT_MS)
    rate_limit: RateLimit | None = None
    app_connect_timeout_ms: int = DEFAULT_APP_CONNECT_TIMEOUT_MS
    security: Security = Security()
    watch: tuple[WatchRule, ...] = ()  # `develop: watch:`
    tls_mode: TlsMode = TLS_MODE  # resolved: the service's own `tls.mode`, else the mesh's
    allow: tuple[Allow, ...] = ()  # empty: every request of a declared caller

    @property
    def is_http(self) -> bool:
        return self.protocol in HTTP_PROTOCOLS

    def version(self, name: str) -> Version:
        for v in self.versions:
            if v.name == name:
                return v
        raise KeyError(f"{self.name} has no version {name!r}")

    def route(self, name: str) -> Route:
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(f"{self.name} has no route {name!r}")


@dataclass(frozen=True, slots=True)
class IngressRoute:
    name: str
    service: str
    match: Match = Match()
    timeout_ms: int | None = None
    rewrite_prefix: str | None = None


@dataclass(frozen=True, slots=True)
class IngressTls:
    """`ingress.tls`: HTTPS at the ingress. No files (`tls: true`): a certificate from the
    user's local CA for localhost and 127.0.0.1. Else the user's certificate (chain) and key
    files, read and checked by the daemon (adapters/tlsfiles.py), not here."""

    cert_file: str | None = None  # resolved against the mesh file's directory
    key_file: str | None = None
    # Where each was written ("devmesh.yaml:14:9: ingress.tls.cert"), for problems found
    # when the files are read; not part of the value.
    cert_at: str = field(default="", compare=False)
    key_at: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Ingress:
    port: int
    routes: tuple[IngressRoute, ...]
    host: str = "127.0.0.1"  # never anything wider: devmesh listens on loopback only
    tls: IngressTls | None = None  # None: plain HTTP


# -- observability ----------------------------------------------------------------------------

TracingProvider = Literal["otel", "xray"]
TRACING_PROVIDERS: tuple[TracingProvider, ...] = ("otel", "xray")
StatsdFlavor = Literal["statsd", "dogstatsd"]
STATSD_FLAVORS: tuple[StatsdFlavor, ...] = ("statsd", "dogstatsd")
ForwardKind = Literal["otlp", "zipkin"]

ACCESS_LOG = True  # every sidecar and the gateway log every request unless turned off
TRACING = True  # spans to the daemon's own collector unless `tracing: false`
TRACE_SAMPLING_PERCENT = 100.0
# `sampling: auto` (the default): every request is traced while the mesh is quiet, and the
# daemon lowers the share under load so that about this many spans a second reach it
# (daemon/sampling.py: 50). The daemon keeps the last 1,000 traces: at that rate, the last
# 40 s or so of two-hop traces under load, every request's when quiet.
TRACE_AUTO = "auto"
XRAY_DAEMON_ADDRESS = ("127.0.0.1", 2000)  # where the AWS X-Ray daemon listens by default
ZIPKIN_PATH_SUFFIX = "/api/v2/spans"  # a forward URL ending so is Zipkin JSON, else OTLP/HTTP


@dataclass(frozen=True, slots=True)
class HostAddress:
    """An address on this machine's loopback (checked by the loader): sidecars cannot reach
    it from their containers, so the daemon relays to it."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TraceForward:
    """Where the daemon's collector forwards the spans it receives."""

    url: str  # as written: http://127.0.0.1:4318/v1/traces
    kind: ForwardKind
    address: HostAddress
    path: str


@dataclass(frozen=True, slots=True)
class Tracing:
    provider: TracingProvider = "otel"
    sampling_percent: float = TRACE_SAMPLING_PERCENT  # with `adaptive`: the most it traces
    adaptive: bool = True  # `sampling: auto`; a number in the file turns it off

    @property
    def adapts(self) -> bool:
        """`sampling: auto` with the daemon's own collector: the daemon chooses the share
        (X-Ray's own sampling rules apply after a share of 100 %)."""
        return self.adaptive and self.provider == "otel"

    forward: TraceForward | None = None  # otel only
    xray_address: HostAddress | None = None  # xray only (default XRAY_DAEMON_ADDRESS)


@dataclass(frozen=True, slots=True)
class Statsd:
    address: HostAddress
    flavor: StatsdFlavor = "statsd"


@dataclass(frozen=True, slots=True)
class Observability:
    access_log: bool = ACCESS_LOG
    metrics_port: int | None = None  # the daemon's /metrics on 127.0.0.1; None: off
    tracing: Tracing | None = Tracing() if TRACING else None  # None: no spans at all
    statsd: Statsd | None = None


@dataclass(frozen=True, slots=True)
class Mesh:
    name: str
    services: tuple[Service, ...]
    ingress: Ingress | None = None
    observability: Observability = Observability()
    source: str = "devmesh.yaml"
    base_dir: str = "."
    tls: Tls = Tls()
    # What the file says that cannot be what was meant, though it loads (a route no request
    # can reach): `validate` and `explain` show them. Not part of the mesh's value.
    warnings: tuple[Problem, ...] = field(
        default=(), compare=False, repr=False, metadata={"resolved": False}
    )
    _index: dict[str, Service] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {s.name: s for s in self.services})

    def service(self, name: str) -> Service:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"no service {name!r} in mesh {self.name!r}") from None

    def has_service(self, name: str) -> bool:
        return name in self._index

    def upstreams(self, service: Service) -> tuple[Service, ...]:
        """The services a pod of `service` can reach by name through its sidecar."""
        if service.egress == "all":
            return tuple(s for s in self.services if s.name != service.name)
        return tuple(self.service(n) for n in service.calls)

    def gateway_services(self) -> tuple[Service, ...]:
        """The services the gateway is a door to: every HTTP one (each on a host port of
        its own, for tests and tools), in file order; the index sets the hop port."""
        return tuple(s for s in self.services if s.is_http)

    @property
    def has_gateway(self) -> bool:
        return self.ingress is not None or bool(self.gateway_services())

    def callers(self, service: Service) -> tuple[Service, ...]:
        """The services whose `calls:` list `service`: the ones its inbound authorization
        admits. `egress: all` opens a pod's way to every service, not their doors."""
        return tuple(s for s in self.services if service.name in s.calls)

    def ingress_services(self) -> tuple[Service, ...]:
        if self.ingress is None:
            return ()
        names = dict.fromkeys(r.service for r in self.ingress.routes)
        return tuple(self.service(n) for n in names)
