"""`load(text) -> Mesh`: parse, check the shape, check the rules that span the file, resolve
inherited defaults. Every problem is collected and reported at once, each located (at most
MAX_PROBLEMS of them: past that a hostile file would only cost time).

`load` raises only MeshInvalid or MeshFileError, whatever the text. Its one look at the
filesystem: a build's Dockerfile must resolve, symlinks followed, inside its build context.
`load_path` reads a file through `read_mesh_bytes`: a regular file of at most 1 MiB
(`devmesh.core.limits.MAX_FILE_BYTES`), refused at once otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections import Counter
from typing import Any

from devmesh.core.addressing import RESERVED_PORTS, outbound_ports
from devmesh.core.durations import format_duration
from devmesh.core.limits import MAX_PROBLEMS
from devmesh.core.model import (
    CERT_LIFETIME_MS,
    CONNECT_TIMEOUT_MS,
    DEFAULT_APP_CONNECT_TIMEOUT_MS,
    DEFAULT_ROUTE,
    HEALTH_INTERVAL_MS,
    HEALTH_TIMEOUT_MS,
    IMPLICIT_VERSION,
    OUTLIER_BASE_EJECTION_MS,
    OUTLIER_CONSECUTIVE_5XX,
    OUTLIER_INTERVAL_MS,
    OUTLIER_MAX_EJECTION_PERCENT,
    RATE_LIMIT_PER_MS,
    REPLICAS,
    RETRY_ON,
    TLS_MODE,
    TRACE_AUTO,
    TRACE_SAMPLING_PERCENT,
    XRAY_DAEMON_ADDRESS,
    ZIPKIN_PATH_SUFFIX,
    Abort,
    Allow,
    Build,
    ConnectionPool,
    Delay,
    Fault,
    ForwardKind,
    Health,
    HostAddress,
    HostApp,
    Ingress,
    IngressRoute,
    IngressTls,
    Match,
    Mesh,
    Mirror,
    Observability,
    OutlierDetection,
    PathMatch,
    Protocol,
    RateLimit,
    Retries,
    Route,
    Security,
    Service,
    Statsd,
    Target,
    Tls,
    TraceForward,
    Tracing,
    ValueMatch,
    Version,
    WatchRule,
)
from devmesh.core.problems import MeshError, MeshInvalid, Path, Problem, did_you_mean, short
from devmesh.core.schema import mesh_spec
from devmesh.core.source import parse, read_mesh_bytes, read_text
from devmesh.core.spec import Ctx, TooManyProblems

# What access logs and metrics (`ingress`) and traces (`gateway`) call the gateway; either
# finds it in `logs --access` and `traces --service` (daemon/handlers.py).
GATEWAY_NAMES = ("gateway", "ingress")


def names_gateway(service: str | None, proxy: bool) -> bool:
    """Whether `logs --proxy SERVICE` asks for the gateway's Envoy: one of its names (with
    a service of that name, both: `validate` warns of one)."""
    return proxy and service in GATEWAY_NAMES


def gateway_logs_hint(name: str | None) -> str:
    """For `logs NAME` when NAME is no service's: where the gateway's log is, if NAME is
    one of its names (it runs no app, only an Envoy)."""
    if name not in GATEWAY_NAMES:
        return ""
    return f"; the gateway runs no app: `devmesh logs --proxy {name}` shows its Envoy's log"


_WORKLOAD_KEYS = ("image", "build", "env", "command", "replicas")
_TCP_ROUTE_KEYS = ("name", "to")
# Blocks a service merges key by key over the mesh `defaults:`; others (retries) replace.
_MERGED_POLICIES = ("health", "outlier_detection", "connection_pool", "security")


def load_path(path: str, *, allow_stdin: bool = False) -> Mesh:
    """Read and load a mesh file; MeshFileError when it cannot be read at all.

    `-` reads standard input, only with `allow_stdin` (builds are then relative to the
    current directory)."""
    raw = read_mesh_bytes(path, allow_stdin=allow_stdin)
    file = "<stdin>" if path == "-" else path
    base = os.getcwd() if path == "-" else os.path.dirname(os.path.abspath(path))
    return load(read_text(raw, file), file, base_dir=base)


def declared_name(path: str) -> str:
    """The `mesh:` name of a mesh file, also while the file has problems elsewhere (a
    command aimed at a running instance may come in the middle of an edit)."""
    try:
        return load_path(path).name
    except MeshInvalid as exc:
        try:
            located, _ = parse(read_text(read_mesh_bytes(path), path), path)
            name = located.data.get("mesh") if isinstance(located.data, dict) else None
        except MeshError:
            name = None
        if isinstance(name, str) and name:
            return name
        raise exc from None


def load(text: str, file: str = "devmesh.yaml", base_dir: str = ".") -> Mesh:
    located, problems = parse(text, file)
    if problems and located.data is None:
        raise MeshInvalid(problems)  # a syntax error: nothing further can be read
    ctx = Ctx(located, problems)
    if not isinstance(located.data, dict):
        ctx.problems.append(
            located.at((), "a mesh file is a mapping with at least `mesh:` and `services:`")
        )
        raise MeshInvalid(_at_most(ctx.problems, file))
    try:
        cleaned = mesh_spec.check(located.data, (), ctx)
        mesh = _Builder(ctx, cleaned).build(file, base_dir)
    except TooManyProblems:
        raise MeshInvalid(_at_most(ctx.problems, file)) from None
    if ctx.problems:
        raise MeshInvalid(_at_most(ctx.problems, file))
    return dataclasses.replace(mesh, warnings=tuple(sorted(set(ctx.warnings))))


def _at_most(problems: list[Problem], file: str) -> list[Problem]:
    """The first MAX_PROBLEMS, and a last line saying the check stopped there."""
    kept = sorted(set(problems))
    if len(kept) < MAX_PROBLEMS:
        return kept
    last = kept[MAX_PROBLEMS - 1]
    note = f"stopped after {MAX_PROBLEMS} problems; fix these and run again"
    # Just past the last one kept, so it sorts last.
    return [*kept[:MAX_PROBLEMS], Problem(last.line, last.col + 1, "", note, file)]


class _Builder:
    """Turns the structurally checked document into the model, checking cross-references.

    Works on whatever passed the structural check, so one run reports everything; parts
    that were invalid are simply absent here and are not reported twice.
    """

    def __init__(self, ctx: Ctx, doc: dict[str, Any]) -> None:
        self.ctx = ctx
        self.doc = doc
        tls: dict[str, Any] = doc.get("tls", {})
        self.tls = Tls(
            mode=tls.get("mode", TLS_MODE),
            cert_lifetime_ms=tls.get("cert_lifetime", CERT_LIFETIME_MS),
        )
        self.defaults: dict[str, Any] = doc.get("defaults", {})
        self.raw_services: dict[str, dict[str, Any]] = doc.get("services", {})
        # What was written, valid or not: an entry that failed its own check is not also
        # reported as missing by the rules here.
        written = ctx.doc.data.get("services") if isinstance(ctx.doc.data, dict) else None
        self.written_services: set[str] = set(written) if isinstance(written, dict) else set()
        # How many keys are written under each path: a route's `to:` is checked against it.
        self.key_counts = Counter(p[:-1] for p in ctx.doc.keys)
        self.base_dir = "."
        self.versions: dict[str, list[str]] = {
            name: list(s.get("versions", {IMPLICIT_VERSION: {}}))
            for name, s in self.raw_services.items()
        }

    def error(self, path: Path, message: str, *, key: bool = False) -> None:
        self.ctx.error(path, message, key=key)

    def _written(self, at: Path, keys: tuple[str, ...]) -> bool:
        """Whether any of `keys` was written at `at` or on its service (valid or not)."""
        located = self.ctx.doc.keys
        service = at[:2]
        return any((*at, k) in located or (*service, k) in located for k in keys)

    def build(self, file: str, base_dir: str) -> Mesh:
        self.base_dir = base_dir
        services = tuple(
            s
            for name, raw in self.raw_services.items()
            if (s := self.service(name, raw)) is not None
        )
        ingress = self.ingress(self.doc["ingress"]) if "ingress" in self.doc else None
        observability = self.observability(self.doc.get("observability", {}), ingress)
        mesh = Mesh(
            tls=self.tls,
            name=self.doc.get("mesh", "mesh"),
            services=services,
            ingress=ingress,
            observability=observability,
            source=file,
            base_dir=base_dir,
        )
        self.check_reachability(mesh)
        self.check_pod_names(mesh)
        return mesh

    def check_pod_names(self, mesh: Mesh) -> None:
        """Pods are named SERVICE-VERSION-N: `a-b`/`c` and `a`/`b-c` would be one pod."""
        seen: dict[str, tuple[str, str]] = {}
        for service in mesh.services:
            for version in service.versions:
                key = f"{service.name}-{version.name}"
                if key in seen and seen[key][0] != service.name:
                    other = "/".join(seen[key])
                    self.error(
                        ("services", service.name),
                        f"its version '{version.name}' would name pods like {other}'s "
                        f"({key}-0); rename one of them",
                        key=True,
                    )
                seen.setdefault(key, (service.name, version.name))

    # -- services ---------------------------------------------------------------------------

    def policy(self, raw: dict[str, Any], key: str) -> Any:
        if key in _MERGED_POLICIES and key in raw and key in self.defaults:
            return {**self.defaults[key], **raw[key]}  # a service tunes the mesh's default
        return raw[key] if key in raw else self.defaults.get(key)

    def service(self, name: str, raw: dict[str, Any]) -> Service | None:
        at: Path = ("services", name)
        if name in GATEWAY_NAMES:
            self.ctx.warn(
                at,
                f"'{name}' is also the gateway's name in access logs, traces and metrics: "
                f"`logs --access {name}`, `logs --proxy {name}` and `traces --service {name}` "
                "show both (another name tells them apart)",
            )
        port: int | None = raw.get("port")
        if port in RESERVED_PORTS:
            self.error(
                (*at, "port"),
                f"port {port} is taken by the sidecar inside the pod "
                f"({RESERVED_PORTS.start}-{RESERVED_PORTS.stop - 1} are reserved)",
            )
        protocol: Protocol = self.policy(raw, "protocol") or "http"
        for i, call in enumerate(raw.get("calls", ())):
            if call not in self.raw_services:
                self.error(
                    (*at, "calls", i),
                    f"calls '{call}', which is not a service of this mesh"
                    + did_you_mean(call, self.raw_services),
                )
        versions = self.service_versions(at, raw)
        if protocol == "tcp":
            routes = self.tcp_routes(at, name, raw)
        else:
            routes = self.http_routes(at, name, raw)
        health = self.health(at, raw, protocol)
        watch = self.watch_rules(at, raw, versions)
        od = self.policy(raw, "outlier_detection")
        pool = self.policy(raw, "connection_pool") or {}
        rl = self.policy(raw, "rate_limit")
        if port is None:
            return None  # reported by the structural check; the rest was checked above
        return Service(
            name=name,
            port=port,
            protocol=protocol,
            versions=versions,
            routes=routes,
            calls=tuple(c for c in raw.get("calls", ()) if c in self.raw_services),
            egress=self.policy(raw, "egress") or "declared",
            health=health,
            outlier_detection=None
            if od is None
            else OutlierDetection(
                consecutive_5xx=od.get("consecutive_5xx", OUTLIER_CONSECUTIVE_5XX),
                interval_ms=od.get("interval", OUTLIER_INTERVAL_MS),
                base_ejection_ms=od.get("base_ejection_time", OUTLIER_BASE_EJECTION_MS),
                max_ejection_percent=od.get("max_ejection_percent", OUTLIER_MAX_EJECTION_PERCENT),
            ),
            connection_pool=ConnectionPool(
                connect_timeout_ms=pool.get("connect_timeout", CONNECT_TIMEOUT_MS),
                max_connections=pool.get("max_connections"),
                max_pending_requests=pool.get("max_pending_requests"),
                max_requests=pool.get("max_requests"),
                max_retries=pool.get("max_retries"),
            ),
            rate_limit=None
            if rl is None or "requests" not in rl
            else RateLimit(requests=rl["requests"], per_ms=rl.get("per", RATE_LIMIT_PER_MS)),
            app_connect_timeout_ms=self.policy(raw, "app_connect_timeout")
            or DEFAULT_APP_CONNECT_TIMEOUT_MS,
            watch=watch,
            tls_mode=raw.get("tls", {}).get("mode", self.tls.mode),
            allow=self.allow(at, raw, protocol),
            security=Security(
                no_new_privileges=(self.policy(raw, "security") or {}).get(
                    "no_new_privileges", True
                )
            ),
        )

    def service_versions(self, at: Path, raw: dict[str, Any]) -> tuple[Version, ...]:
        base = {k: raw[k] for k in _WORKLOAD_KEYS if k in raw}
        if "versions" not in raw:
            return (self.version(at, IMPLICIT_VERSION, base, {}),)
        out = []
        for vname, vraw in raw["versions"].items():
            out.append(self.version((*at, "versions", vname), vname, base, vraw))
        return tuple(out)

    def version(self, at: Path, name: str, base: dict[str, Any], own: dict[str, Any]) -> Version:
        merged = {**base, **own}
        if "env" in base and "env" in own:
            merged["env"] = {**base["env"], **own["env"]}
        host = own.get("host")
        if host is not None:
            # The process runs on the host: nothing here builds or starts it.
            for key in ("image", "build", "command", "replicas"):
                if key in own:
                    self.error((*at, key), f"a `host` version runs no container: no `{key}`")
            if not isinstance(host, dict) or "port" not in host:
                host = None  # reported by the structural check
            return Version(
                name=name,
                image=None,
                build=None,
                env=tuple(sorted(merged.get("env", {}).items())),
                replicas=1,
                host=None if host is None else HostApp(port=host["port"]),
            )
        if (
            "image" not in merged
            and "build" not in merged
            and not self._written(at, ("image", "build"))
        ):
            self.error(at, "needs `image` or `build` (here or on the service)")
        build = merged.get("build")
        if isinstance(build, str):
            build = {"context": build}
        if build is not None and "context" not in build:
            build = None  # reported by the structural check
        if build is not None:
            self.check_dockerfile((*(at if "build" in own else at[:2]), "build"), build)
            if "@" in merged.get("image", ""):
                self.error(
                    (*(at if "image" in own else at[:2]), "image"),
                    "with `build`, the image is the tag to build, and a tag has no @digest",
                )
        command = merged.get("command")
        if isinstance(command, str):
            try:
                command = shlex.split(command)
            except ValueError as exc:
                self.error((*at, "command"), f"cannot split the command line: {exc}")
                command = None
        return Version(
            name=name,
            image=merged.get("image"),
            build=None
            if build is None
            else Build(
                context=build["context"],
                dockerfile=build.get("dockerfile"),
                args=tuple(sorted(build.get("args", {}).items())),
                target=build.get("target"),
                secrets=tuple(sorted(build.get("secrets", {}).items())),
            ),
            env=tuple(sorted(merged.get("env", {}).items())),
            command=None if command is None else tuple(command),
            replicas=merged.get("replicas", REPLICAS),
        )

    def watch_rules(
        self, at: Path, raw: dict[str, Any], versions: tuple[Version, ...]
    ) -> tuple[WatchRule, ...]:
        """`develop: watch:` as compose reads it: sync needs an absolute `target` in the
        container; rebuild needs something to build."""
        out = []
        for i, rule in enumerate(raw.get("develop", {}).get("watch", ())):
            here = (*at, "develop", "watch", i)
            action, target = rule.get("action"), rule.get("target")
            if action is None or "path" not in rule:
                continue  # reported by the structural check
            if action in ("sync", "sync+restart"):
                if target is None:
                    self.error(here, f"action {action} needs a `target` in the container")
                    continue
                if not target.startswith("/"):
                    self.error(
                        (*here, "target"),
                        f"'{short(target)}' is not an absolute path in the container",
                    )
                    continue
            elif target is not None:
                self.error((*here, "target"), f"action {action} takes no target (sync does)")
                continue
            if action == "rebuild" and not any(v.build for v in versions):
                self.error(
                    (*here, "action"),
                    "rebuild needs a `build:` on the service or one of its versions",
                )
                continue
            out.append(
                WatchRule(
                    path=rule["path"],
                    action=action,
                    target=target,
                    ignore=tuple(rule.get("ignore", ())),
                )
            )
        return tuple(out)

    def check_dockerfile(self, at: Path, build: dict[str, Any]) -> None:
        """The Dockerfile must be inside the build context, symlinks followed.

        Docker takes a Dockerfile from anywhere and sends it to the engine, which shows its
        first line when it fails to parse: `dockerfile: ../../etc/passwd` would read any
        file of the machine, as would a `Dockerfile` that is a symlink out of the context.
        """
        written = build.get("dockerfile")
        context = os.path.normpath(os.path.join(self.base_dir, build["context"]))
        target = os.path.normpath(os.path.join(context, written or "Dockerfile"))
        try:
            real_target, real_context = os.path.realpath(target), os.path.realpath(context)
        except (OSError, ValueError):
            return  # unreadable paths fail at build time with their own error
        if not _inside(target, context):
            self.error(
                (*at, "dockerfile"),
                f"'{short(written or '')}' is outside the build context "
                f"'{short(build['context'])}'; "
                "the Dockerfile must be inside it",
            )
        elif not _inside(real_target, real_context):
            shown = short(written or "Dockerfile")
            self.error(
                (*at, "dockerfile") if written else at,
                f"'{shown}' is a symlink to {real_target}, outside the build context "
                f"'{short(build['context'])}'; the Dockerfile must be inside it",
            )

    def health(self, at: Path, raw: dict[str, Any], protocol: str) -> Health | None:
        h = self.policy(raw, "health")
        if h is None:
            return None
        path = h.get("path")
        if path is not None and protocol == "tcp":
            if (*at, "health", "path") in self.ctx.doc.keys:
                self.error(
                    (*at, "health", "path"),
                    "a tcp service is checked by connecting; it takes no path",
                )
            path = None  # an inherited HTTP path does not apply to a TCP service
        return Health(
            path=path,
            interval_ms=h.get("interval", HEALTH_INTERVAL_MS),
            timeout_ms=h.get("timeout", HEALTH_TIMEOUT_MS),
        )

    # -- routes -----------------------------------------------------------------------------

    def even_split(self, service: str) -> tuple[Target, ...]:
        names = self.versions[service]
        if not names:
            return ()  # every version was invalid, and reported
        share, extra = divmod(100, len(names))
        return tuple(Target(v, share + (1 if i < extra else 0)) for i, v in enumerate(names))

    def targets(self, at: Path, service: str, to: Any) -> tuple[Target, ...]:
        weights: dict[str, int] = {to: 100} if isinstance(to, str) else to
        known = self.versions[service]
        ok = True
        for version in weights:
            if version not in known:
                ok = False
                self.error(
                    (*at, version) if isinstance(to, dict) else at,
                    f"'{service}' has no version '{version}'"
                    + (did_you_mean(version, known) or f"; its versions: {', '.join(known)}"),
                    key=isinstance(to, dict),
                )
        total = sum(weights.values())
        written = self.key_counts[at]
        if isinstance(to, dict) and total != 100 and written == len(weights):
            ok = False
            self.error(at, f"weights add up to {total}, not 100{_relative_hint(weights, total)}")
        return tuple(Target(v, w) for v, w in weights.items()) if ok else ()

    def http_routes(self, at: Path, name: str, raw: dict[str, Any]) -> tuple[Route, ...]:
        retries = self.retries(self.policy(raw, "retries"))
        timeout = self.policy(raw, "timeout")
        if "routes" not in raw:
            return (
                Route(DEFAULT_ROUTE, self.even_split(name), retries=retries, timeout_ms=timeout),
            )
        out: list[Route] = []
        seen: set[str] = set()
        for i, r in enumerate(raw["routes"]):
            rat: Path = (*at, "routes", i)
            rname = r.get("name", f"route-{i}")
            if rname in seen:
                self.error((*rat, "name"), f"route name '{rname}' is used twice")
            seen.add(rname)
            if "to" not in r:
                continue
            out.append(
                Route(
                    name=rname,
                    to=self.targets((*rat, "to"), name, r["to"]),
                    match=self.match(r.get("match", {}), (*rat, "match")),
                    retries=self.retries(r["retries"]) if "retries" in r else retries,
                    timeout_ms=r.get("timeout", timeout),
                    fault=self.fault(r.get("fault")),
                    mirror=self.mirror((*rat, "mirror"), name, r.get("mirror")),
                )
            )
            self.retry_within_timeout(rat, out[-1])
        self.unreachable(at, raw["routes"], out)
        return tuple(out)

    def retry_within_timeout(self, at: Path, route: Route) -> None:
        """A try that may last as long as the whole request leaves no time to retry."""
        retries, timeout = route.retries, route.timeout_ms
        if retries is None or retries.per_try_timeout_ms is None or timeout is None:
            return
        if retries.per_try_timeout_ms >= timeout:
            self.ctx.warn(
                at,
                f"per_try_timeout {format_duration(retries.per_try_timeout_ms)} is not shorter "
                f"than the route's timeout {format_duration(timeout)}: a request that times out "
                "is never retried",
            )

    def unreachable(self, at: Path, raw: list[Any], routes: list[Route]) -> None:
        """Routes after one that matches every request can never match (Envoy takes the
        first route that matches): a warning at each, as istioctl analyze gives one."""
        every = next((r for r in routes if r.match == Match()), None)
        if every is None:
            return
        names = [
            r.get("name", f"route-{i}") if isinstance(r, dict) else "" for i, r in enumerate(raw)
        ]
        for i in range(names.index(every.name) + 1, len(names)):
            self.ctx.warn(
                (*at, "routes", i),
                f"route '{names[i]}' can never match: route '{every.name}' before it "
                "takes every request (routes are tried in order; put it last)",
            )

    def tcp_routes(self, at: Path, name: str, raw: dict[str, Any]) -> tuple[Route, ...]:
        if "routes" not in raw:
            return (Route(DEFAULT_ROUTE, self.even_split(name)),)
        routes = raw["routes"]
        if not routes:
            return ()  # its only entry was invalid, and reported
        if len(routes) > 1:
            self.error(
                (*at, "routes", 1),
                "a tcp service takes one route: a connection has no request to match on",
            )
        r = routes[0]
        for key in r:
            if key not in _TCP_ROUTE_KEYS:
                self.error(
                    (*at, "routes", 0, key),
                    f"'{key}' is for HTTP; a tcp route has only name and to (weights)",
                    key=True,
                )
        if "to" not in r:
            return ()
        return (
            Route(r.get("name", "route-0"), self.targets((*at, "routes", 0, "to"), name, r["to"])),
        )

    @staticmethod
    def retries(raw: dict[str, Any] | None) -> Retries | None:
        if raw is None or raw.get("attempts", 0) == 0:
            return None
        return Retries(
            attempts=raw["attempts"],
            on=tuple(raw.get("on", RETRY_ON)),
            per_try_timeout_ms=raw.get("per_try_timeout"),
        )

    def allow(self, at: Path, raw: dict[str, Any], protocol: str) -> tuple[Allow, ...]:
        rules = raw.get("allow", ())
        if rules and protocol == "tcp":
            self.error(
                (*at, "allow"),
                "allow rules match HTTP methods and paths; a tcp service admits its callers "
                "by `calls` alone",
            )
            return ()
        out = []
        for i, rule in enumerate(rules):
            match = self.match(rule, (*at, "allow", i))
            given = any(k in rule for k in ("path_prefix", "path", "path_regex"))
            out.append(Allow(methods=match.methods, path=match.path if given else None))
        return tuple(out)

    def match(self, raw: dict[str, Any], at: Path) -> Match:
        if "path" in raw:
            path = PathMatch("exact", raw["path"])
        elif "path_regex" in raw:
            path = PathMatch("regex", raw["path_regex"])
        else:
            path = PathMatch("prefix", raw.get("path_prefix", "/"))
        methods = raw.get("method", ())
        for key in ("path_prefix", "path"):
            if "?" in raw.get(key, ""):
                # Envoy matches paths without their query string (measured on 1.40).
                self.error(
                    (*at, key),
                    "paths are matched without the query string; "
                    "match parameters with `query:` instead",
                )
        headers: dict[str, Any] = raw.get("headers", {})
        seen: dict[str, str] = {}
        for name in headers:
            first = seen.setdefault(name.lower(), name)
            if first != name:
                self.error(
                    (*at, "headers", name),
                    f"'{name}' is the header '{first}' again: header names are compared "
                    f"without case, so a request cannot match both; keep one '{first}'",
                    key=True,
                )
        return Match(
            path=path,
            headers=tuple(_value_match(k.lower(), v) for k, v in headers.items()),
            query=tuple(_value_match(k, v) for k, v in raw.get("query", {}).items()),
            methods=(methods,) if isinstance(methods, str) else tuple(methods),
        )

    @staticmethod
    def fault(raw: dict[str, Any] | None) -> Fault | None:
        if raw is None:
            return None
        delay = raw.get("delay")
        abort = raw.get("abort")
        return Fault(
            delay=None
            if delay is None or "fixed" not in delay
            else Delay(delay["fixed"], delay.get("percent", 100.0)),
            abort=None
            if abort is None
            else Abort(
                percent=abort.get("percent", 100.0),
                http_status=abort.get("status"),
                grpc_status=abort.get("grpc_status"),
            ),
        )

    def mirror(self, at: Path, service: str, raw: Any) -> Mirror | None:
        if raw is None:
            return None
        if isinstance(raw, str):
            raw = {"version": raw}
        target = raw.get("service", service)
        if target not in self.raw_services:
            self.error(
                (*at, "service"),
                f"no service '{target}' to mirror to" + did_you_mean(target, self.raw_services),
            )
            return None
        if self.policy(self.raw_services[target], "protocol") == "tcp":
            self.error(at, f"cannot mirror HTTP requests to '{target}', a tcp service")
            return None
        known = self.versions[target]
        if not known:
            return None  # every version of the target was invalid, and reported
        version = raw.get("version")
        if version is None:
            if len(known) > 1:
                self.error(at, f"'{target}' has versions {', '.join(known)}: name one to mirror to")
                return None
            version = known[0]
        elif version not in known:
            self.error(
                (*at, "version") if "service" in raw or "percent" in raw else at,
                f"'{target}' has no version '{version}'"
                + (did_you_mean(version, known) or f"; its versions: {', '.join(known)}"),
            )
            return None
        return Mirror(service=target, version=version, percent=raw.get("percent", 100.0))

    # -- ingress and reachability -----------------------------------------------------------

    def ingress(self, raw: dict[str, Any]) -> Ingress | None:
        routes: list[IngressRoute] = []
        seen: set[str] = set()
        for i, r in enumerate(raw.get("routes", ())):
            at: Path = ("ingress", "routes", i)
            name = r.get("name", f"route-{i}")
            if name in seen:
                self.error((*at, "name"), f"route name '{name}' is used twice")
            seen.add(name)
            target = r.get("service")
            if target is None:
                continue
            if target not in self.raw_services:
                if target not in self.written_services:
                    self.error(
                        (*at, "service"),
                        f"no service '{target}' in this mesh"
                        + did_you_mean(target, self.raw_services),
                    )
                continue
            if (self.policy(self.raw_services[target], "protocol") or "http") == "tcp":
                self.error((*at, "service"), f"'{target}' is a tcp service; the ingress is HTTP")
                continue
            match = self.match(r.get("match", {}), (*at, "match"))
            if "rewrite_prefix" in r and match.path.kind == "regex":
                self.error(
                    (*at, "rewrite_prefix"),
                    "rewrite_prefix needs a path_prefix or path match, not path_regex",
                )
            routes.append(
                IngressRoute(
                    name=name,
                    service=target,
                    match=match,
                    timeout_ms=r.get("timeout"),
                    rewrite_prefix=r.get("rewrite_prefix"),
                )
            )
        if "port" not in raw:
            return None
        return Ingress(port=raw["port"], routes=tuple(routes), tls=self.ingress_tls(raw))

    def ingress_tls(self, raw: dict[str, Any]) -> IngressTls | None:
        tls = raw.get("tls", False)
        if tls is True:
            return IngressTls()
        if not isinstance(tls, dict) or "cert" not in tls or "key" not in tls:
            return None  # false, or invalid (reported by the structural check)

        def where(key: str) -> str:
            at = self.ctx.doc.at(("ingress", "tls", key), "")
            return f"{at.file}:{at.line}:{at.col}: {at.path}"

        return IngressTls(
            cert_file=os.path.normpath(os.path.join(self.base_dir, tls["cert"])),
            key_file=os.path.normpath(os.path.join(self.base_dir, tls["key"])),
            cert_at=where("cert"),
            key_at=where("key"),
        )

    # -- observability ----------------------------------------------------------------------

    def observability(self, raw: dict[str, Any], ingress: Ingress | None) -> Observability:
        at: Path = ("observability",)
        default = Observability()
        metrics_port = raw.get("metrics", {}).get("port")
        if metrics_port is not None and ingress is not None and metrics_port == ingress.port:
            self.error(
                (*at, "metrics", "port"),
                f"port {metrics_port} is the ingress port; the daemon's /metrics needs its own",
            )
        statsd = raw.get("statsd")
        return Observability(
            access_log=raw.get("access_log", default.access_log),
            metrics_port=metrics_port,
            tracing=self.tracing((*at, "tracing"), raw["tracing"])
            if "tracing" in raw
            else default.tracing,
            statsd=None
            if statsd is None or "address" not in statsd
            else Statsd(HostAddress(*statsd["address"]), statsd.get("flavor", "statsd")),
        )

    def tracing(self, at: Path, raw: bool | dict[str, Any]) -> Tracing | None:
        if raw is False:
            return None
        if raw is True:
            return Tracing()
        provider = raw.get("provider", "otel")
        if provider == "otel" and "address" in raw:
            self.error(
                (*at, "address"),
                "`address` is the X-Ray daemon's, for provider: xray; "
                "to send otel spans on, use `forward: http://HOST:PORT/v1/traces`",
                key=True,
            )
        if provider == "xray" and "forward" in raw:
            self.error(
                (*at, "forward"),
                "provider xray sends segments to `address` (the X-Ray daemon); "
                "`forward` is for provider otel",
                key=True,
            )
        forward = None
        if provider == "otel" and "forward" in raw:
            url, host, port, path = raw["forward"]
            kind: ForwardKind = (
                "zipkin" if path.rstrip("/").endswith(ZIPKIN_PATH_SUFFIX) else "otlp"
            )
            forward = TraceForward(url, kind, HostAddress(host, port), path)
        xray = None
        if provider == "xray":
            xray = HostAddress(*raw.get("address", XRAY_DAEMON_ADDRESS))
        sampling = raw.get("sampling", TRACE_AUTO)
        auto = sampling == TRACE_AUTO
        return Tracing(
            provider=provider,
            sampling_percent=TRACE_SAMPLING_PERCENT if auto else sampling,
            adaptive=auto,
            forward=forward,
            xray_address=xray,
        )

    def check_reachability(self, mesh: Mesh) -> None:
        """Every upstream a pod may call needs a port its own app does not hold."""
        for service in mesh.services:
            names = (
                [s.name for s in mesh.services if s.name != service.name]
                if service.egress == "all"
                else list(service.calls)
            )
            for upstream in (mesh.service(n) for n in names if mesh.has_service(n)):
                if outbound_ports(service.port, upstream):
                    continue
                if service.egress == "all":
                    at: Path = ("services", service.name, "egress")
                    if "egress" not in self.raw_services[service.name]:
                        at = ("services", service.name, "port")
                else:
                    at = ("services", service.name, "calls", service.calls.index(upstream.name))
                self.error(
                    at,
                    f"'{service.name}' listens on port {service.port}, the only port "
                    f"'{upstream.name}' can be reached on from its pod; change one of the ports",
                )


def _inside(path: str, root: str) -> bool:
    path, root = os.path.abspath(path), os.path.abspath(root)
    return os.path.commonpath([path, root]) == root


def _value_match(name: str, raw: Any) -> ValueMatch:
    if isinstance(raw, str):
        return ValueMatch(name, "exact", raw)
    if "present" in raw:
        return ValueMatch(name, "present" if raw["present"] else "absent")
    for kind in ("exact", "prefix", "regex"):
        if kind in raw:
            return ValueMatch(name, kind, raw[kind])
    return ValueMatch(name, "present", "true")  # unreachable: the schema requires one key


__all__ = ["load", "load_path"]


def _relative_hint(weights: dict[str, int], total: int) -> str:
    """For weights that do not add up to 100: they are percentages here, and what App
    Mesh's relative weights (`blue: 1, green: 3`) come to, when that is whole."""
    if total <= 0 or not all(isinstance(w, int) and w >= 0 for w in weights.values()):
        return ""
    if any(w * 100 % total for w in weights.values()):
        return " (they are percentages, not relative weights)"
    shares = ", ".join(f"{v}: {w * 100 // total}" for v, w in weights.items())
    return f" (they are percentages, not relative weights: {{{shares}}})"
