"""The API's endpoints: each decodes nothing itself (the server does, into the request type
it names), reads the loop's view or hands the loop a command, and answers a typed value.

Reads (state, routes, stats, events, logs) never wait for the loop: they use its last
published view. Changes (reload, shift, fault, restart) run on the loop; shift and fault
then wait here, off the loop, until the Envoys have ACKed them.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from devmesh.adapters.envoy_admin import StatsSource, StatsTarget
from devmesh.adapters.xds_server import NodeStatus, XdsServer
from devmesh.api import types as api
from devmesh.core.limits import check_fault_values
from devmesh.core.load import GATEWAY_NAMES, gateway_logs_hint, names_gateway
from devmesh.core.model import Abort, Delay, Fault
from devmesh.core.problems import MeshError, clip, did_you_mean
from devmesh.daemon.accesslog import AccessLog, Filter, status_problem
from devmesh.daemon.api import Endpoint, Refusal
from devmesh.daemon.controller import Controller
from devmesh.daemon.errors import Refused
from devmesh.daemon.eventlog import EventLog
from devmesh.daemon.logtail import LogTails
from devmesh.daemon.state import StateDir
from devmesh.daemon.status import mesh_state, routes
from devmesh.daemon.traces import TraceStore, parse_status
from devmesh.daemon.tracing import Telemetry
from devmesh.envoy.names import sidecar_stats, unreadable
from devmesh.envoy.tracing import GATEWAY_SERVICE


class Handlers:
    def __init__(
        self,
        controller: Controller,
        xds: XdsServer,
        state: StateDir,
        events: EventLog,
        stats: StatsSource,
        log_tails: LogTails,
        follow: Callable[[api.FollowRequest, threading.Event], Iterator[api.LogLine | None]],
        request_stop: Callable[[], None],
    ) -> None:
        self._loop = controller
        self._xds = xds
        self._state = state
        self._events = events
        self._stats = stats
        self._log_tails = log_tails
        self._follow = follow
        self._request_stop = request_stop
        self.sidecar_image: str | None = None
        self.access: AccessLog | None = None  # every request every Envoy saw (accesslog.py)
        self.metrics_url: str | None = None  # where the daemon serves /metrics, if it does
        self.telemetry: Telemetry | None = None  # the span store and sinks (daemon/tracing.py)
        self.transport = ""  # how the daemon reaches its pods (core/transport.py)
        self.control_plane = ""  # transport tcp: where the pods dial the daemon (host:port)

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/v1/state", lambda _: self.state()),
            Endpoint("GET", "/v1/routes", lambda _: self.routes()),
            Endpoint("GET", "/v1/stats", lambda _: self.stats()),
            Endpoint("GET", "/v1/events", lambda _: api.Events(self._events.last())),
            Endpoint("POST", "/v1/reload", self.reload, api.ReloadRequest),
            Endpoint("POST", "/v1/shift", self.shift, api.ShiftRequest),
            Endpoint("POST", "/v1/fault", self.fault, api.FaultRequest),
            Endpoint("POST", "/v1/restart", self.restart, api.RestartRequest),
            Endpoint("POST", "/v1/dev", self.dev, api.DevRequest),
            Endpoint("POST", "/v1/logs", self.logs, api.LogsRequest),
            Endpoint("POST", "/v1/logs/follow", self.follow_logs, api.FollowRequest),
            Endpoint("POST", "/v1/traces", self.traces, api.TracesRequest),
            Endpoint("POST", "/v1/trace", self.trace, api.TraceRequest),
            Endpoint("POST", "/v1/access", self.access_entries, api.AccessRequest),
            Endpoint("POST", "/v1/access/follow", self.follow_access, api.AccessFollowRequest),
            Endpoint("POST", "/v1/shutdown", lambda _: self.shutdown()),
        ]

    # -- reads ----------------------------------------------------------------------------------

    def _xds_lookup(self, node_id: str) -> tuple[NodeStatus | None, bool]:
        try:
            status = self._xds.status(node_id)
        except KeyError:
            return None, False
        return status, self._xds.is_synced(node_id)

    def state(self) -> api.MeshState:
        view = self._loop.view
        out = mesh_state(
            view,
            self._xds_lookup,
            self._loop.project,
            str(self._loop.mesh_file),
            self.sidecar_image,
            self._events.last(50),
        )
        if self.telemetry is not None:
            out = dataclasses.replace(out, tracing=self.telemetry.status())
        if self.metrics_url is not None:
            out = dataclasses.replace(out, metrics=self.metrics_url)
        if self.access is not None:
            out = dataclasses.replace(out, access=self.access.counters())
        if self.transport:
            out = dataclasses.replace(out, transport=self.transport)
        if self.control_plane:
            out = dataclasses.replace(out, control_plane=self.control_plane)
        return out

    def traces(self, req: api.TracesRequest) -> api.TracesResult:
        store = self._trace_store()
        if req.service == api.INGRESS and not self._loop.view.mesh.has_service(api.INGRESS):
            # the gateway is `ingress` in access logs and stats: either name finds it here
            req = dataclasses.replace(req, service=GATEWAY_SERVICE)
        if req.service is not None:
            self._known_service(req.service, store.services())
        if req.status is not None:
            try:
                parse_status(req.status)
            except ValueError as exc:
                raise Refusal(api.ErrorCode.BAD_REQUEST, str(exc)) from None
        if not 1 <= req.limit <= 1000:
            raise Refusal(api.ErrorCode.BAD_REQUEST, "limit: expected 1 to 1000")
        if req.slower_ms is not None and not 0 <= req.slower_ms < 1e9:
            raise Refusal(api.ErrorCode.BAD_REQUEST, "slower_ms: expected 0 or more")
        return api.TracesResult(tuple(store.query(req)), len(store), store.capacity)

    def trace(self, req: api.TraceRequest) -> api.Trace:
        want = req.trace_id.strip().lower()
        if len(want) < 6 or len(want) > 32 or any(c not in "0123456789abcdef" for c in want):
            raise Refusal(
                api.ErrorCode.BAD_REQUEST,
                f"trace id {clip(req.trace_id)!r}: expected 6 to 32 hex digits",
            )
        found = self._trace_store().find(want)
        if not found:
            raise Refusal(
                api.ErrorCode.NOT_FOUND,
                f"no trace {want} (the daemon keeps the last "
                f"{self._trace_store().capacity}; `devmesh traces` lists them)",
            )
        if len(found) > 1:
            raise Refusal(
                api.ErrorCode.BAD_REQUEST,
                f"trace id {want} is the start of {len(found)} traces; give more digits",
            )
        return found[0]

    def _trace_store(self) -> TraceStore:
        if self.telemetry is None or self._loop.view.served.observability.tracing is None:
            raise Refusal(
                api.ErrorCode.CONFLICT,
                "tracing is off in this mesh: remove `tracing: false` from its observability:",
            )
        if self._loop.view.served.observability.tracing.provider != "otel":
            raise Refusal(
                api.ErrorCode.CONFLICT,
                "traces go to X-Ray (tracing.provider: xray), not to the daemon",
            )
        return self.telemetry.store

    def _known_service(self, name: str, seen: frozenset[str]) -> None:
        """A mesh service (or the gateway's spans): else a located refusal, "did you mean"."""
        mesh = self._loop.view.mesh
        names = [s.name for s in mesh.services]
        if name in names or (name == GATEWAY_SERVICE and (mesh.has_gateway or name in seen)):
            return
        hint = did_you_mean(name, [*names, *GATEWAY_NAMES])
        raise Refusal(
            api.ErrorCode.NOT_FOUND,
            f"{self._loop.mesh_file}: no service '{clip(name)}' in mesh '{self._loop.project}'"
            f"{hint} (services: {', '.join(names)})",
        )

    def routes(self) -> api.Routes:
        view = self._loop.view
        return routes(view.served, view.overrides)

    def stats(self) -> api.Stats:
        """Each sidecar's (and the gateway's) counters, read from its admin socket (or as it
        pushed them: transport tcp), in mesh terms."""
        want = self._loop.view.desired
        if want is None:
            return api.Stats(time.time())
        sources = {p.name: (p.service, p.version) for p in want.pods}
        nodes = {p.name: p.node_id for p in want.pods}
        if want.gateway is not None:
            sources[want.gateway.name] = (api.INGRESS, "")
            nodes[want.gateway.name] = want.gateway.name
        read = self._stats.read_targets(
            {n: StatsTarget(self._state.admin_socket(n), nodes[n]) for n in sources}
        )
        out = []
        for name, (service, version) in sources.items():
            counters = read.get(name, "not read")
            if isinstance(counters, str):
                out.append(unreadable(name, service, version, counters))
            else:
                out.append(sidecar_stats(name, service, version, counters))
        return api.Stats(time.time(), tuple(out))

    def logs(self, req: api.LogsRequest) -> api.LogsResult:
        view = self._loop.view
        pods = view.desired.pods if view.desired else ()
        chosen = next((p for p in pods if p.name == req.pod), None)
        if chosen is None:
            raise Refusal(
                api.ErrorCode.NOT_FOUND, f"no pod {clip(req.pod)!r} in mesh '{self._loop.project}'"
            )
        tail = max(1, min(req.tail, 1000))
        app = view.infos.get(chosen.app.name)
        running = app is not None and app.state == "running"
        try:
            lines = self._log_tails.tail(chosen.app.name, tail, running)
        except MeshError as exc:
            raise Refusal(api.ErrorCode.NOT_FOUND, str(exc)) from None
        return api.LogsResult(chosen.name, tuple(lines))

    def follow_logs(self, req: api.FollowRequest) -> Iterator[api.LogLine | None]:
        view = self._loop.view
        gateway = names_gateway(req.service, req.proxy)  # its Envoy's own log
        if req.service is not None and not gateway and not view.mesh.has_service(req.service):
            names = [s.name for s in view.mesh.services]
            known = [*names, *GATEWAY_NAMES] if req.proxy else names  # --proxy gateway too
            raise Refusal(
                api.ErrorCode.NOT_FOUND,
                f"no service '{clip(req.service)}' in mesh '{self._loop.project}'"
                f"{did_you_mean(req.service, known)}; services: {', '.join(names)}"
                f"{gateway_logs_hint(req.service)}",
            )
        stop = threading.Event()
        lines = self._follow(req, stop)
        try:
            yield from lines
        finally:
            stop.set()

    def _access_filter(
        self, service: str | None, status: str | None, route: str | None, slower: float | None
    ) -> Filter:
        mesh = self._loop.view.mesh
        if service == GATEWAY_SERVICE and not mesh.has_service(GATEWAY_SERVICE):
            service = api.INGRESS  # the gateway is `gateway` in traces: either name finds it
        if service is not None and service != api.INGRESS and not mesh.has_service(service):
            names = [s.name for s in mesh.services]
            hint = did_you_mean(service, [*names, *GATEWAY_NAMES]) or (
                f"; services: {', '.join(names)}, and the gateway's '{api.INGRESS}'"
            )
            raise Refusal(
                api.ErrorCode.NOT_FOUND,
                f"no service '{clip(service)}' in mesh '{self._loop.project}'{hint}",
            )
        problem = status_problem(status)
        if problem is not None:
            raise Refusal(api.ErrorCode.BAD_REQUEST, problem)
        if slower is not None and not slower >= 0:
            raise Refusal(api.ErrorCode.BAD_REQUEST, f"slower_ms must be 0 or more, got {slower}")
        return Filter(service, status, route, slower)

    def _access_log(self) -> AccessLog:
        if self.access is None:
            raise Refusal(api.ErrorCode.UNAVAILABLE, "this daemon keeps no access log")
        return self.access

    def _unknown_route(self, route: str | None) -> None:
        """A route filter that names no route of the mesh: a located refusal with "did you
        mean". Route names as entries carry them: a service's (`default` when it declares
        none) and the ingress's."""
        if route is None:
            return
        mesh = self._loop.view.mesh
        names = [r.name for s in mesh.services for r in s.routes]
        if mesh.ingress is not None:
            names += [r.name for r in mesh.ingress.routes]
        names = list(dict.fromkeys(names))
        if route in names:
            return
        raise Refusal(
            api.ErrorCode.NOT_FOUND,
            f"no route '{clip(route)}' in mesh '{self._loop.project}'"
            + (did_you_mean(route, names) or "")
            + f" (routes: {', '.join(names) or 'none'})",
        )

    def access_entries(self, req: api.AccessRequest) -> api.AccessResult:
        keep = self._access_filter(req.service, req.status, req.route, req.slower_ms)
        limit = max(1, min(req.limit, api.ACCESS_CAPACITY))
        result = self._access_log().query(keep, limit)
        if not result.entries:  # kept entries of a route a reload took out still match
            self._unknown_route(req.route)
        if not self._loop.view.served.observability.access_log:
            return dataclasses.replace(result, logging=False)
        return result

    def follow_access(self, req: api.AccessFollowRequest) -> Iterator[api.AccessEntry | None]:
        keep = self._access_filter(req.service, req.status, req.route, req.slower_ms)
        self._unknown_route(req.route)  # what comes next comes from the mesh's routes
        if not self._loop.view.served.observability.access_log:
            raise Refusal(
                api.ErrorCode.CONFLICT,
                "access logs are off in this mesh: nothing more will come; remove "
                "`access_log: false` from its observability: (`logs --access` without "
                "--follow lists the entries kept from before)",
            )
        log = self._access_log()
        stop = threading.Event()
        try:
            # Each item, or a keepalive at least once a second: a follow that outlives
            # `access_log: false` ends (the client asks why) instead of waiting for good.
            for item in log.follow(keep, max(0, min(req.tail, api.ACCESS_CAPACITY)), stop):
                if not self._loop.view.served.observability.access_log:
                    return
                yield item
        finally:
            stop.set()

    # -- changes --------------------------------------------------------------------------------

    def _on_loop(self, run: Callable[[Controller], Any], wait: float = api.LOOP_WAIT) -> Any:
        try:
            return self._loop.call(run, wait)
        except Refused as exc:
            raise Refusal(exc.code, str(exc)) from None
        except TimeoutError:
            raise Refusal(api.ErrorCode.UNAVAILABLE, "the daemon is busy; try again") from None

    def _wait_pushed(self) -> bool:
        """Until every connected sidecar and the gateway has ACKed what was just published,
        so an API change is in force when its call returns (a test's `with mesh.fault(...)`
        sends its first request straight after). False after PUSH_WAIT seconds (a NACK, or an
        Envoy not answering); the change stays published either way."""
        groups = self._loop.view.published
        nodes = [s.node_id for s in self._xds.statuses() if s.connected and s.cluster in groups]
        return self._xds.wait_synced(nodes, api.PUSH_WAIT)

    def reload(self, req: api.ReloadRequest) -> api.ReloadResult:
        self._loop.prebuild(req.file)  # off the loop: it keeps serving meanwhile
        problems = self._on_loop(lambda loop: loop.reload(req.file), api.RELOAD_WAIT)
        return api.ReloadResult(ok=not problems, problems=problems)

    def shift(self, req: api.ShiftRequest) -> api.ShiftResult:
        route = self._on_loop(lambda loop: loop.shift(req.service, req.weights, req.route))
        return api.ShiftResult(req.service, route, req.weights, self._wait_pushed())

    def fault(self, req: api.FaultRequest) -> api.FaultResult:
        fault = _fault(req)
        route = self._on_loop(lambda loop: loop.set_fault(req.service, req.route, fault))
        return api.FaultResult(req.service, route, fault is not None, self._wait_pushed())

    def dev(self, req: api.DevRequest) -> api.DevResult:
        active = self._on_loop(lambda loop: loop.set_dev(req))
        return api.DevResult(req.service, req.version, active, self._wait_pushed())

    def restart(self, req: api.RestartRequest) -> api.RestartResult:
        if not req.pod and not req.service:
            raise Refusal(api.ErrorCode.BAD_REQUEST, "restart needs a service or a pod")
        if req.pod and req.service:  # which was meant is not ours to guess
            raise Refusal(api.ErrorCode.BAD_REQUEST, "restart takes a service or a pod, not both")
        names = self._on_loop(lambda loop: loop.restart(req.service, req.pod))
        return api.RestartResult(names)

    def shutdown(self) -> api.Ok:
        self._request_stop()
        return api.Ok()


def _fault(req: api.FaultRequest) -> Fault | None:
    """The API's fault as the model's, range-checked by the rules `fault:` in a mesh file
    follows."""
    delay, abort = req.delay, req.abort
    if delay is None and abort is None:
        return None
    problems = check_fault_values(
        delay_percent=None if delay is None else delay.percent,
        fixed_ms=None if delay is None else delay.fixed_ms,
        abort_percent=None if abort is None else abort.percent,
        status=None if abort is None else abort.status,
        grpc_status=None if abort is None else abort.grpc_status,
    )
    if abort is not None and (abort.status is None) == (abort.grpc_status is None):
        problems.append("abort: needs one of status (HTTP) or grpc_status")
    if problems:
        raise Refusal(api.ErrorCode.BAD_REQUEST, "bad fault: " + "; ".join(problems))
    return Fault(
        delay=None if delay is None else Delay(fixed_ms=delay.fixed_ms, percent=delay.percent),
        abort=None
        if abort is None
        else Abort(percent=abort.percent, http_status=abort.status, grpc_status=abort.grpc_status),
    )
