"""The daemon's API documents as values: what the daemon sends and its clients (the CLI, the
TUI, the pytest plugin) read. Frozen dataclasses and enums; `devmesh.api.codec` is the one
place they become JSON and the one place JSON becomes them.

Clients never parse the daemon's English: a pod's state is a `PodState`, an event carries a
kind, a severity and a subject, stats come in mesh terms (service, version, route), not as
Envoy stat names. The `reason` and `detail` texts are for people, to show as they are.

No third-party import here (an import-linter contract keeps it so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from devmesh.api.histogram import Bucket as Bucket  # a field of Traffic, re-exported

API_VERSION = "v1"

# How long the daemon lets a change wait, and so how long a client waits for its answer.
LOOP_WAIT = 10.0  # seconds a change (shift, fault, restart) waits its turn on the daemon's loop
PUSH_WAIT = 5.0  # then seconds it waits for the Envoys' ACK (answered with synced: false)
RELOAD_WAIT = 600.0  # a reload (a second `up`) may build images first
CHANGE_TIMEOUT = LOOP_WAIT + PUSH_WAIT + 5.0  # what a client waits for a change's answer


class Phase(StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"
    NO_DAEMON = "no daemon"  # what the CLI shows from Docker alone, never sent by a daemon


class PodState(StrEnum):
    """Why a pod is (not) ready, most fundamental first: a pod is in the first that applies."""

    FAILED = "failed"  # cannot run: image missing, the engine refused a container
    ENGINE_DOWN = "engine_down"  # the container engine does not answer: state unknown
    STARTING = "starting"  # containers being made, or the namespace owner not running
    CRASHING = "crashing"  # the app exits (and is restarted)
    SIDECAR_DOWN = "sidecar_down"
    NACKED = "nacked"  # the sidecar rejected its config; it serves the last one it took
    SYNCING = "syncing"  # config pushed, not ACKed yet
    UNHEALTHY = "unhealthy"  # the app's health check fails (or has not passed yet)
    DRAINING = "draining"  # a roll's old pod: out of the endpoints, ends in-flight requests
    READY = "ready"

    @property
    def permanent(self) -> bool:
        """Waiting does not help: only a change (a new file, a new image) does."""
        return self is PodState.FAILED


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class EventKind(StrEnum):
    DAEMON = "daemon"  # started, stopping, images chosen
    SAVE = "save"  # a change of the mesh file (or shift, or up) applied
    PROBLEM = "problem"  # the mesh file does not validate; the last good config serves on
    RECONCILE = "reconcile"  # containers created, replaced, removed
    CONTAINER = "container"  # a container died, was killed, ran out of memory
    HEALTH = "health"  # a pod turned healthy or unhealthy
    PUSH = "push"  # config delivery: a push that failed, a NACK
    FAULT = "fault"  # a fault set or cleared through the API
    RESTART = "restart"  # app containers restarted through the API
    IMAGE = "image"  # an image built, pulled, or not found; a build's progress and error
    WATCH = "watch"  # `develop: watch:` files changed: synced, restarted, rebuild asked
    ENGINE = "engine"  # the container engine went away or came back


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"  # the body is not what the endpoint takes
    NOT_FOUND = "not_found"  # no such endpoint, service, route or pod
    CONFLICT = "conflict"  # not now: the mesh file has problems, another file is served
    UNAVAILABLE = "unavailable"  # the engine or an Envoy does not answer
    INTERNAL = "internal"  # a bug: the daemon's log has the traceback


STATUS_OF: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


@dataclass(frozen=True, slots=True)
class ApiError:
    """Every 4xx/5xx answer: `{"error": {"code": ..., "message": ...}}`."""

    code: ErrorCode
    message: str

    @property
    def status(self) -> int:
        return STATUS_OF[self.code]


# -- state ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Nack:
    type: str  # the resource type rejected: Listener, Cluster, RouteConfiguration, ...
    message: str  # Envoy's own words (with protobuf debug markers): show them, do not parse


@dataclass(frozen=True, slots=True)
class XdsStatus:
    connected: bool = False
    synced: bool = False  # ACKed everything last pushed to it
    version: str | None = None  # a short digest of what it ACKed: equal digests, equal config
    nack: Nack | None = None

    @property
    def word(self) -> str:
        """ACK, NACK (type), connected, or -: the state in one word, for tables."""
        if self.nack is not None:
            return f"NACK ({self.nack.type})"
        if self.synced:
            return "ACK"
        return "connected" if self.connected else "-"


@dataclass(frozen=True, slots=True)
class PodTls:
    """A pod's (or the gateway's) mTLS as the daemon serves it."""

    identity: str  # its certificate's SPIFFE ID
    mode: str  # STRICT | PERMISSIVE | DISABLED: its inbound mode ("" for the gateway)
    not_after: float  # the certificate's expiry, epoch seconds; renewed at half its life
    serial: str = ""  # hex: tells one issue from the next


@dataclass(frozen=True, slots=True)
class Pod:
    pod: str
    service: str
    version: str
    replica: int
    state: PodState
    reason: str = ""  # for people; empty when ready
    address: str | None = None
    app: str = "missing"  # the app container's state as the engine says it
    restarts: int = 0
    sidecar: str = "missing"
    xds: XdsStatus = field(default_factory=XdsStatus)
    # A roll's old pod: it serves until its successor (same service, version, replica) is
    # ready, then drains and is removed. Not counted in the mesh's `ready`.
    retiring: bool = False
    tls: PodTls | None = None  # None: the daemon serves it no certificate

    @property
    def ready(self) -> bool:
        return self.state is PodState.READY


@dataclass(frozen=True, slots=True)
class Gateway:
    name: str
    state: str  # the container's state as the engine says it
    ready: bool
    url: str | None = None
    services: dict[str, str] = field(default_factory=dict)  # service -> host URL
    xds: XdsStatus = field(default_factory=XdsStatus)
    tls: PodTls | None = None
    reason: str = ""  # why it is not running, when the engine refused to start it


@dataclass(frozen=True, slots=True)
class Failure:
    """A version that cannot run; its old pods, if any, keep serving."""

    service: str
    version: str
    reason: str


@dataclass(frozen=True, slots=True)
class BuildStatus:
    """A version's image build (`build:`): under way or waiting, or failed last. A failed
    build leaves the running pods serving; `error` says why, with its Dockerfile line."""

    service: str
    version: str
    running: bool  # building now, or waiting to (edits during a build: one more build)
    step: str = ""  # the last progress line: "step 2/3 RUN make", "cached", "waiting"
    error: str | None = None  # "build failed: Dockerfile:3: unknown instruction: RUNN"


@dataclass(frozen=True, slots=True)
class Event:
    time: float  # unix seconds
    kind: EventKind
    severity: Severity
    subject: str  # what it is about: a pod, container, service, the file; "" for the mesh
    detail: str  # for people

    @property
    def text(self) -> str:
        return f"{self.subject}: {self.detail}" if self.subject else self.detail


@dataclass(frozen=True, slots=True)
class EngineStatus:
    ok: bool = True
    detail: str = ""  # why not, when not


@dataclass(frozen=True, slots=True)
class MeshState:
    """`GET /v1/state`: everything `ps` shows and `up --wait` waits on."""

    mesh: str
    project: str
    phase: Phase
    ready: bool
    file: str = ""
    pid: int = 0
    problems: tuple[str, ...] = ()  # the file's located problems; the last good config serves
    reloads: int = 0
    reload_failures: int = 0
    errors: tuple[str, ...] = ()  # engine-level failures of the last pass
    push_error: str | None = None  # config that could not be delivered: nothing is "ready"
    engine: EngineStatus = field(default_factory=EngineStatus)
    failed: tuple[Failure, ...] = ()
    sidecar_image: str | None = None
    pods: tuple[Pod, ...] = ()
    gateway: Gateway | None = None
    events: tuple[Event, ...] = ()
    builds: tuple[BuildStatus, ...] = ()  # image builds under way or failed last
    tracing: TracingStatus | None = None  # None: tracing is off
    metrics: str | None = None  # the daemon's Prometheus endpoint, http://127.0.0.1:PORT/metrics
    access: AccessCounters | None = None  # the access log's counters (None: not kept)
    # How the daemon reaches its pods: "unix" (sockets and files shared with a local engine)
    # or "tcp" (an engine elsewhere: Docker Desktop, tcp://, ssh://); "" with no daemon.
    transport: str = ""
    # Transport tcp: where the pods dial the daemon for their config (`host:port`, e.g.
    # `host.docker.internal:41015`); "" otherwise. `up --wait` names it when no sidecar came.
    control_plane: str = ""

    @property
    def only_permanent_failures_left(self) -> bool:
        """Every pod is ready or cannot run: waiting longer would not help."""
        if self.ready or not self.failed:
            return False
        failed = {(f.service, f.version) for f in self.failed}
        return all(p.ready or (p.service, p.version) in failed for p in self.pods)


# -- routes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DelaySpec:
    fixed_ms: int
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class AbortSpec:
    percent: float = 100.0
    status: int | None = None
    grpc_status: int | None = None


@dataclass(frozen=True, slots=True)
class FaultSpec:
    delay: DelaySpec | None = None
    abort: AbortSpec | None = None


@dataclass(frozen=True, slots=True)
class RetrySpec:
    attempts: int
    on: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MirrorSpec:
    service: str
    version: str | None
    percent: float


@dataclass(frozen=True, slots=True)
class RouteInfo:
    name: str
    match: str  # for people: "path_prefix /catalog/, header x-canary=1"
    to: dict[str, int]  # version -> weight
    retries: RetrySpec | None = None
    timeout_ms: int | None = None
    fault: FaultSpec | None = None
    mirror: MirrorSpec | None = None
    fault_override: bool = False  # the fault was set through the API, not the file


@dataclass(frozen=True, slots=True)
class ServiceRoutes:
    name: str
    protocol: str
    port: int
    versions: dict[str, int]  # version -> replicas
    routes: tuple[RouteInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class IngressRoute:
    name: str
    match: str
    service: str


@dataclass(frozen=True, slots=True)
class IngressRoutes:
    address: str
    routes: tuple[IngressRoute, ...] = ()


@dataclass(frozen=True, slots=True)
class Routes:
    """`GET /v1/routes`: every service's routes as the daemon serves them."""

    mesh: str
    services: tuple[ServiceRoutes, ...] = ()
    ingress: IngressRoutes | None = None

    def service(self, name: str) -> ServiceRoutes | None:
        return next((s for s in self.services if s.name == name), None)


# -- stats --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Traffic:
    """Cumulative counters (rates are differences between two reads), and the latency
    percentiles of Envoy's last stats interval (None: no sample in it)."""

    requests: int = 0  # started (includes retries and mirrored requests upstream)
    completed: int = 0
    rq_2xx: int = 0
    rq_4xx: int = 0
    rq_5xx: int = 0
    retries: int = 0
    retry_overflow: int = 0
    # refused by the version's circuit breaker (pending queue or requests full): 503, UO
    overflow: int = 0
    connections: int = 0  # active (a gauge)
    ejections: int = 0  # outlier detection ejections active (a gauge)
    p50_ms: float | None = None  # since the Envoy started, from `latency` (api.histogram)
    p99_ms: float | None = None
    # Envoy's cumulative latency buckets (ms) since it started: windows and merges across
    # Envoys are computed from these (`devmesh.api.histogram`), never from percentiles.
    latency: tuple[Bucket, ...] = ()


@dataclass(frozen=True, slots=True)
class UpstreamTraffic:
    """What one caller sent to one version of a service (all its replicas)."""

    service: str
    version: str
    traffic: Traffic


@dataclass(frozen=True, slots=True)
class RouteTraffic:
    """What one caller sent over one route; the gateway's own routes have service
    `INGRESS`."""

    service: str
    route: str
    traffic: Traffic


INGRESS = "ingress"  # the service name of the gateway's routes in `RouteTraffic`
GATEWAY_CALLER = "_gateway"  # `Denial.caller` of the gateway
UNKNOWN_CALLER = "_unknown"  # `Denial.caller` of a peer that is no identity of the mesh


@dataclass(frozen=True, slots=True)
class SidecarStats:
    """One Envoy's view: a pod's sidecar (service/version of the pod) or the gateway
    (service `INGRESS`, version "")."""

    source: str  # the pod's or the gateway's name
    service: str
    version: str
    inbound: Traffic | None = None  # requests into the pod, or into the gateway from outside
    upstreams: tuple[UpstreamTraffic, ...] = ()
    routes: tuple[RouteTraffic, ...] = ()
    error: str | None = None  # unreadable: why (the counters are then empty)
    denials: tuple[Denial, ...] = ()  # inbound requests (tcp: connections) RBAC refused


@dataclass(frozen=True, slots=True)
class Denial:
    """Refusals of one caller by a pod's inbound authorization (403, or a closed tcp
    connection). `caller` is a service name, `GATEWAY_CALLER` or `UNKNOWN_CALLER`."""

    caller: str
    count: int


@dataclass(frozen=True, slots=True)
class Stats:
    """`GET /v1/stats`."""

    time: float
    sidecars: tuple[SidecarStats, ...] = ()


# -- commands and their answers ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReloadRequest:
    file: str | None = None  # refused unless it is the file the daemon serves


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    problems: tuple[str, ...] = ()  # file problems (nothing applied) or what could not run


@dataclass(frozen=True, slots=True)
class ShiftRequest:
    service: str
    weights: dict[str, int]
    route: str | None = None


@dataclass(frozen=True, slots=True)
class ShiftResult:
    service: str
    route: str
    weights: dict[str, int]
    synced: bool  # every connected Envoy ACKed it before the answer


@dataclass(frozen=True, slots=True)
class FaultRequest:
    """Neither delay nor abort: clear the route's fault override."""

    service: str
    route: str | None = None
    delay: DelaySpec | None = None
    abort: AbortSpec | None = None


@dataclass(frozen=True, slots=True)
class FaultResult:
    service: str
    route: str
    active: bool
    synced: bool


@dataclass(frozen=True, slots=True)
class DevRequest:
    """`devmesh dev`: a version of `service` served by a process on the host, at
    127.0.0.1:`port`, for the requests whose header `header` is `value` (live, not written
    to the file). `remove`: take it out again (its requests go back to the file's routes)."""

    service: str
    version: str = "local"
    port: int = 0  # 1-65535
    header: str = "x-dev"
    value: str = "me"
    remove: bool = False


@dataclass(frozen=True, slots=True)
class DevResult:
    service: str
    version: str
    active: bool
    synced: bool  # every connected Envoy ACKed it before the answer


@dataclass(frozen=True, slots=True)
class RestartRequest:
    service: str | None = None
    pod: str | None = None


@dataclass(frozen=True, slots=True)
class RestartResult:
    restarted: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LogsRequest:
    pod: str
    tail: int = 100  # 1-1000


@dataclass(frozen=True, slots=True)
class LogsResult:
    pod: str
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FollowRequest:
    """`POST /v1/logs/follow`: a service's app logs as they come, one `LogLine` a line of
    newline-delimited JSON, until no pod of the service runs any more."""

    service: str | None = None  # None: every service of the mesh
    tail: int | None = None  # lines of each log to start with; None: all
    proxy: bool = False  # the sidecars' own logs (and the gateway's, for the whole mesh)
    timestamps: bool = False  # each line starts with the engine's RFC 3339 time


@dataclass(frozen=True, slots=True)
class LogLine:
    pod: str
    text: str
    source: str = "app"  # "app", "sidecar" or "gateway": whose log the line is from


# -- access logs (every request every Envoy saw) ------------------------------------------------


class Reporter(StrEnum):
    """Which Envoy logged a request: the caller's sidecar (or the gateway's hop to a
    service), the callee's sidecar, or the gateway's public listener."""

    OUTBOUND = "outbound"
    INBOUND = "inbound"
    INGRESS = "ingress"


ACCESS_CAPACITY = 10_000  # entries the daemon keeps; older ones make room (`evicted`)


@dataclass(frozen=True, slots=True)
class AccessEntry:
    """One request (one connection, for TCP) as one Envoy saw it, in mesh terms. Service
    names are "" where unknown; the gateway is the service `INGRESS`, a caller from outside
    the mesh has source "" ."""

    time: float  # unix seconds: the request's first byte
    reporter: Reporter
    node: str  # the Envoy that logged it: a sidecar's or the gateway's container
    source_service: str
    source_version: str
    source_pod: str
    service: str  # the destination
    version: str
    pod: str
    route: str  # the mesh route it took (the caller's, or the ingress'); "" on an inbound side
    method: str = ""
    authority: str = ""
    path: str = ""
    status: int | None = None  # None: no response (a TCP connection, a reset)
    flags: tuple[str, ...] = ()  # Envoy's response flags (`api.response_flags` in words)
    duration_ms: float | None = None  # first byte in to last byte out
    upstream_ms: float | None = None  # request sent upstream to its first byte back
    bytes_received: int = 0  # request body (TCP: from the caller)
    bytes_sent: int = 0  # response body (TCP: to the caller)
    request_id: str = ""  # x-request-id
    trace_id: str = ""  # W3C trace id (32 hex digits) or X-Ray's, when the request had one
    detail: str = ""  # Envoy's response code details (`via_upstream`, `fault_filter_abort`)
    tcp: bool = False

    @property
    def mirrored_copy(self) -> bool:
        """Whether this is a copy a route mirrored (`mirror:`), whose answer goes nowhere:
        Envoy sends it with `-shadow` after the host the caller used (`api:80` ->
        `api-shadow:80`), and only the callee's side logs it. A service named `x-shadow`
        called as itself is not one (as `waterfall.mirrored` for spans)."""
        host, _, port = self.authority.lower().rpartition(":")
        if not host or not port.isdigit():
            host = self.authority.lower()
        return host.endswith("-shadow") and host != self.service


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """`POST /v1/access`: the newest entries kept, filtered (every filter given must hold)."""

    service: str | None = None  # the entry's source or destination service
    status: str | None = None  # a class ("5xx") or one code ("503")
    route: str | None = None
    slower_ms: float | None = None  # only entries that took longer
    limit: int = 100  # 1-10000: this many of the newest matches, oldest first


@dataclass(frozen=True, slots=True)
class AccessCounters:
    kept: int = 0  # entries in memory now
    capacity: int = ACCESS_CAPACITY
    received: int = 0  # entries Envoys sent since the daemon started
    evicted: int = 0  # pushed out by newer ones
    dropped: int = 0  # could not be decoded (not Envoy's message)


@dataclass(frozen=True, slots=True)
class AccessResult:
    entries: tuple[AccessEntry, ...] = ()
    counters: AccessCounters = AccessCounters()
    logging: bool = True  # False: the mesh turns access logs off; entries are older ones


@dataclass(frozen=True, slots=True)
class AccessFollowRequest:
    """`POST /v1/access/follow`: entries as they come, one `AccessEntry` a line of
    newline-delimited JSON, starting with the last `tail` kept matches."""

    service: str | None = None
    status: str | None = None
    route: str | None = None
    slower_ms: float | None = None
    tail: int = 10  # 0-10000


@dataclass(frozen=True, slots=True)
class Events:
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class Ok:
    ok: bool = True


# -- traces (the daemon's span collector) -------------------------------------------------------


class SpanKind(StrEnum):
    """Which side of a hop an Envoy span is: a sidecar's outbound listener (or the gateway's
    hop) is the caller's, a pod's inbound listener (or the gateway's ingress) the callee's."""

    CLIENT = "client"
    SERVER = "server"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Span:
    """One Envoy's part of one request, in mesh terms."""

    trace_id: str  # 32 hex digits, W3C trace context
    span_id: str  # 16 hex digits
    parent_id: str  # "" for the trace's root
    name: str  # Envoy's operation: the route's decorator, `catalog/main`, `catalog/v2`
    kind: SpanKind
    start: float  # unix seconds
    duration_ms: float
    service: str  # whose Envoy made it: the pod's service, or "gateway"
    version: str = ""  # the pod's version ("" for the gateway)
    node: str = ""  # the Envoy's node id: the sidecar's or the gateway's container
    route: str = ""  # the mesh route it took ("" when none matched)
    upstream: str = ""  # where it went: `catalog/v2`, the app (`_app`), a gateway hop
    method: str = ""
    url: str = ""
    status: int | None = None  # HTTP status; None when no response came
    flags: str = ""  # Envoy's response flags (UO, URX, UT, ...); "" or "-" when none
    request_id: str = ""  # x-request-id
    error: bool = False


@dataclass(frozen=True, slots=True)
class TraceSummary:
    trace_id: str
    start: float  # the earliest span's start, unix seconds
    duration_ms: float  # the earliest start to the latest end
    root: str  # the first span's name
    services: tuple[str, ...]  # every service with a span in it, in order of start
    spans: int
    status: int | None = None  # the first span's HTTP status
    error: bool = False  # any span failed (5xx, no response, error flag)


@dataclass(frozen=True, slots=True)
class TracesRequest:
    """`POST /v1/traces`: the newest traces first, filtered."""

    service: str | None = None  # only traces with a span of this service
    slower_ms: float | None = None  # only traces longer than this
    status: str | None = None  # "5xx", "4xx", "2xx" or one code, "503": any span's status
    limit: int = 50  # 1-1000


@dataclass(frozen=True, slots=True)
class TracesResult:
    traces: tuple[TraceSummary, ...] = ()
    kept: int = 0  # traces in memory (at most `capacity`)
    capacity: int = 0


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """`POST /v1/trace`: one trace, every span the daemon has of it."""

    trace_id: str  # the full 32 hex digits or a unique prefix of at least 6


@dataclass(frozen=True, slots=True)
class Trace:
    trace_id: str
    spans: tuple[Span, ...] = ()  # in order of start


@dataclass(frozen=True, slots=True)
class TracingStatus:
    """The collector's counters, in `MeshState.tracing` (shown by `ps`)."""

    provider: str  # "otel" (the daemon collects) or "xray" (Envoy sends to an X-Ray daemon)
    sampling: float  # percent of requests traced
    traces: int = 0  # kept now, of the spans read so far
    spans: int = 0  # received since the daemon started
    dropped: int = 0  # spans lost: the unread ring was full, a trace too long, undecodable
    unread: int = 0  # spans received and kept undecoded until someone reads traces
    forward: str | None = None  # where spans are also sent (OTLP/HTTP or Zipkin)
    forwarded: int = 0
    forward_dropped: int = 0  # spans not forwarded: queue full, or the endpoint failed
    forward_error: str | None = None  # the last failure, for people
    evicted: int = 0  # spans of the oldest traces, out to make room for newer ones
    adaptive: bool = False  # `sampling: auto`: `sampling` is the share chosen for the load now
