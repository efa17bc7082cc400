"""The TUI's screens as values: table rows, header, banner and event lines computed from the
daemon's API documents (`devmesh.api.types`) and the live rates. Pure: no I/O, no Textual;
tested on its own.

A cell is (text, style) with a style *name* ("ok", "warn", "bad", "dim", "accent", ""); the
widgets turn names into colours, and NO_COLOR turns them into plain text. States never rely on
colour alone: each carries a symbol and a word. Nothing here reads the daemon's English: a
pod's state is its `PodState`, an event's weight its `Severity`; reasons and details are
shown as they are.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from devmesh.api import types as api
from devmesh.tui.stats import (
    INGRESS,
    Live,
    Rates,
    Split,
    fmt_ms,
    fmt_rps,
    fmt_share,
    fmt_success,
    pod_key,
    route_key,
    service_key,
    share_key,
    sparkline,
)

Cell = tuple[str, str]
TREND_WIDTH = 10

POD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "NAME"),
    ("state", "STATE"),
    ("version", "VERSION"),
    ("xds", "XDS"),
    ("rps", "REQ/S"),
    ("ok", "OK"),
    ("p99", "P99"),
    ("trend", "TREND"),
    ("config", "CONFIG"),
    ("address", "ADDRESS"),
)
ROUTE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("route", "ROUTE"),
    ("weight", "WEIGHT"),
    ("seen", "SEEN"),
    ("rps", "REQ/S"),
    ("ok", "OK"),
    ("p50", "P50"),
    ("p99", "P99"),
    ("trend", "TREND"),
    ("policy", "POLICY"),
    ("match", "MATCH"),
)


def cells(columns: Sequence[tuple[str, str]], **by_column: Cell) -> tuple[Cell, ...]:
    """A row's cells in the columns' order; a column not given is empty."""
    return tuple(by_column.get(key, ("", "")) for key, _ in columns)


@dataclass(frozen=True, slots=True)
class Row:
    """One table row: its key, its cells, what it stands for, and its detail line."""

    key: str
    cells: tuple[Cell, ...]
    kind: str  # service | pod | failed | gateway | route | version | ingress | section
    service: str | None = None
    pod: str | None = None
    route: str | None = None
    version: str | None = None
    detail: str = ""


# -- pods and services ---------------------------------------------------------------------------

POD_STATES: Mapping[api.PodState, Cell] = {
    api.PodState.READY: ("● ready", "ok"),
    api.PodState.FAILED: ("✗ failed", "bad"),
    api.PodState.ENGINE_DOWN: ("? engine down", "warn"),
    api.PodState.STARTING: ("◐ starting", "warn"),
    api.PodState.CRASHING: ("↻ restarting", "warn"),  # the engine restarts the exiting app
    api.PodState.SIDECAR_DOWN: ("✗ no sidecar", "bad"),
    api.PodState.NACKED: ("✗ NACKed", "bad"),
    api.PodState.SYNCING: ("◐ syncing", "warn"),
    api.PodState.UNHEALTHY: ("◐ unhealthy", "warn"),
    api.PodState.DRAINING: ("⇣ draining", "warn"),  # a roll's old pod, leaving
}


def pod_state(pod: api.Pod) -> Cell:
    return POD_STATES[pod.state]


def xds_cell(xds: api.XdsStatus) -> Cell:
    if xds.nack is not None:
        return "NACK", "bad"
    if xds.synced:
        return "ACK", "ok"
    if xds.connected:
        return "…", "warn"
    return "-", "dim"


def _live_cells(live: Live | None, history: Sequence[float] | None) -> dict[str, Cell]:
    live = live or Live()
    return {
        "rps": (fmt_rps(live.rps), ""),
        "ok": (fmt_success(live.success), _ok_style(live)),
        "p99": (fmt_ms(live.p99), ""),
        "trend": (sparkline(history or (), TREND_WIDTH), "accent"),
    }


def _short_pod(pod: api.Pod) -> str:
    """The pod under its service's row: `v2-1` for tuidev-catalog-v2-1."""
    return f"{pod.version}-{pod.replica}"


def service_order(state: api.MeshState, routes: api.Routes | None) -> list[str]:
    names = [s.name for s in routes.services] if routes else []
    for pod in state.pods:
        if pod.service not in names:
            names.append(pod.service)
    return names


def pod_rows(state: api.MeshState, routes: api.Routes | None, rates: Rates | None) -> list[Row]:
    """Each service, then its pods (and versions that cannot run); the gateway last."""
    rates = rates or Rates(0.0)
    rows: list[Row] = []
    for service in service_order(state, routes):
        mine = [p for p in state.pods if p.service == service]
        broken = [f for f in state.failed if f.service == service]
        ready = sum(1 for p in mine if p.ready)
        if broken:
            state_cell: Cell = (f"✗ {ready}/{len(mine)} ready", "bad")
        elif mine and ready == len(mine):
            state_cell = (f"● {ready}/{len(mine)} ready", "ok")
        else:
            state_cell = (f"◐ {ready}/{len(mine)} ready", "warn")
        svc = routes.service(service) if routes else None
        versions = dict(svc.versions) if svc and svc.versions else _versions_of(mine)
        version_text = " ".join(v if n == 1 else f"{v}×{n}" for v, n in versions.items())
        live = rates.services.get(service)
        detail = (
            f"{service} ({svc.protocol if svc else '?'}): {len(versions)} version(s), "
            f"{len(mine)} pod(s), {ready} ready"
            + (f"; requests from callers: {_live_text(live)}" if live else "")
            + (
                f"; circuit breakers refused (UO): {rates.overflow[service]}"
                if service in rates.overflow
                else ""
            )
        )
        rows.append(
            Row(
                key=f"svc:{service}",
                cells=cells(
                    POD_COLUMNS,
                    name=(service, "accent"),
                    state=state_cell,
                    version=(version_text, ""),
                    **_live_cells(live, rates.history.get(service_key(service))),
                ),
                kind="service",
                service=service,
                detail=detail,
            )
        )
        for i, pod in enumerate(mine):
            last = i == len(mine) - 1 and not broken
            rows.append(_pod_row(pod, last, rates))
        for j, f in enumerate(broken):
            if any(p.version == f.version and not p.ready for p in mine):
                continue  # its pods already say why
            branch = "└" if j == len(broken) - 1 else "├"
            rows.append(
                Row(
                    key=f"failed:{service}|{f.version}",
                    cells=cells(
                        POD_COLUMNS,
                        name=(f" {branch} {f.version}", ""),
                        state=POD_STATES[api.PodState.FAILED],
                        version=(f.version, ""),
                    ),
                    kind="failed",
                    service=service,
                    version=f.version,
                    detail=f"{service}/{f.version} cannot run: {f.reason}",
                )
            )
    gateway = state.gateway
    if gateway is not None:
        live = rates.pods.get(gateway.name)
        g_state: Cell = ("● ready", "ok") if gateway.ready else (gateway.state, "warn")
        rows.append(
            Row(
                key="gateway",
                cells=cells(
                    POD_COLUMNS,
                    name=("ingress", "accent"),
                    state=g_state,
                    xds=xds_cell(gateway.xds),
                    **_live_cells(live, rates.history.get(pod_key(gateway.name))),
                    config=(gateway.xds.version or "-", "dim"),
                    address=(gateway.url or "", ""),
                ),
                kind="gateway",
                pod=gateway.name,
                detail=f"ingress gateway {gateway.name}: {gateway.state}, "
                f"{gateway.url or ''}; {_xds_text(gateway.xds)}",
            )
        )
    return rows


def _versions_of(pods: Sequence[api.Pod]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in pods:
        out[p.version] = out.get(p.version, 0) + 1
    return out


def _pod_row(pod: api.Pod, last: bool, rates: Rates) -> Row:
    live = rates.pods.get(pod.pod)
    state = pod_state(pod)
    detail = (
        f"{pod.pod} ({pod.address or 'no address'}): {state[0][2:]}"
        + (f" — {pod.reason}" if pod.reason else "")
        + f"; app {pod.app}, {pod.restarts} restart(s); "
        f"sidecar {pod.sidecar}; {_xds_text(pod.xds)}"
        + _tls_text(pod.tls)
        + (f"; denied (RBAC): {rates.denied[pod.pod]}" if pod.pod in rates.denied else "")
        + (
            f"; stats unreadable: {rates.unreadable[pod.pod]}"
            if pod.pod in rates.unreadable
            else ""
        )
    )
    return Row(
        key=f"pod:{pod.pod}",
        cells=cells(
            POD_COLUMNS,
            name=(f" {'└' if last else '├'} {_short_pod(pod)}", ""),
            state=state,
            version=(pod.version, ""),
            xds=xds_cell(pod.xds),
            **{
                **_live_cells(live, rates.history.get(pod_key(pod.pod))),
                "p99": ("", ""),  # into a pod: counted, but no latency histogram is read
            },
            config=(pod.xds.version or "-", "dim"),
            address=(pod.address or "-", ""),
        ),
        kind="pod",
        service=pod.service,
        pod=pod.pod,
        version=pod.version,
        detail=detail,
    )


def _tls_text(tls: api.PodTls | None) -> str:
    """`; mTLS STRICT as spiffe://... (certificate until 14:02:11)`; nothing without TLS."""
    if tls is None:
        return ""
    until = time.strftime("%H:%M:%S", time.localtime(tls.not_after))
    return f"; mTLS {tls.mode} as {tls.identity} (certificate until {until})"


def _xds_text(xds: api.XdsStatus) -> str:
    text = f"config {xds.version or '-'} "
    if xds.nack is not None:
        return text + f"NACKed ({xds.nack.type}): {' '.join(xds.nack.message.split())}"
    if xds.synced:
        return text + "ACKed"
    return text + ("pushed, waiting for the ACK" if xds.connected else "(not connected)")


def _live_text(live: Live | None) -> str:
    if live is None or live.rps is None:
        return "no numbers yet"
    text = f"{fmt_rps(live.rps)} req/s, {fmt_success(live.success)} ok"
    if live.p50 is not None or live.p99 is not None:
        # From every Envoy's latency buckets added up (tui/stats.py `Live`).
        text += f", p50 {fmt_ms(live.p50)} p99 {fmt_ms(live.p99)}"
        if live.merged > 1:
            text += f" (over {live.merged} callers)"
    if live.cx is not None:
        text += f", {live.cx} conn"
    return text


# -- routes --------------------------------------------------------------------------------------


def find_service(routes: api.Routes | None, name: str | None) -> api.ServiceRoutes | None:
    return routes.service(name) if routes is not None and name is not None else None


def find_route(routes: api.Routes | None, service: str, route: str) -> api.RouteInfo | None:
    svc = find_service(routes, service)
    return next((r for r in svc.routes if r.name == route), None) if svc else None


def fault_text(fault: api.FaultSpec | None) -> str:
    if fault is None:
        return ""
    parts = []
    if fault.delay is not None:
        d = fault.delay
        parts.append(f"delay {fmt_ms(float(d.fixed_ms))} {d.percent:g}%")
    if fault.abort is not None:
        a = fault.abort
        code = a.status or f"grpc {a.grpc_status}"
        parts.append(f"abort {code} {a.percent:g}%")
    return ", ".join(parts)


def policy_text(route: api.RouteInfo) -> str:
    parts = []
    if route.retries is not None:
        parts.append(f"retry {route.retries.attempts}")
    if route.timeout_ms is not None:
        parts.append(fmt_ms(float(route.timeout_ms)))
    fault = fault_text(route.fault)
    if fault:
        parts.append(("⚡" if route.fault_override else "") + fault)
    if route.mirror is not None:
        parts.append(f"mirror {route.mirror.percent:g}%")
    return " · ".join(parts)


def route_detail(service: str, route: api.RouteInfo) -> str:
    to = ", ".join(f"{v} {w}%" for v, w in route.to.items())
    parts = [f"{service}/{route.name}: {route.match or 'any request'} → {to}"]
    if route.retries is not None:
        r = route.retries
        parts.append(f"retries {r.attempts} on {','.join(r.on)}")
    if route.timeout_ms is not None:
        parts.append(f"timeout {fmt_ms(float(route.timeout_ms))}")
    fault = fault_text(route.fault)
    if fault:
        origin = "set here, not in the file" if route.fault_override else "from the file"
        parts.append(f"fault {fault} ({origin})")
    if route.mirror is not None:
        m = route.mirror
        to_what = f"{m.service}/{m.version}" if m.version else m.service
        parts.append(f"mirror {m.percent:g}% to {to_what}")
    return " · ".join(parts)


def route_rows(
    routes: api.Routes | None,
    service: str | None,
    rates: Rates | None,
    pending: Mapping[tuple[str, str], Mapping[str, int]] | None = None,
) -> list[Row]:
    """The selected service's routes, each followed by its versions; then the ingress."""
    rates = rates or Rates(0.0)
    pending = pending or {}
    rows: list[Row] = []
    svc = find_service(routes, service)
    if svc is not None:
        name = svc.name
        versions = list(svc.versions)
        for route in svc.routes:
            rname = route.name
            live = rates.routes.get((name, rname))
            split = rates.splits.get((name, rname))
            rows.append(
                Row(
                    key=f"route:{name}/{rname}",
                    cells=cells(
                        ROUTE_COLUMNS,
                        route=(rname, "accent"),
                        seen=("" if split is None or split.exact else "≈all", "dim"),
                        **_route_live(live, rates.history.get(route_key(name, rname))),
                        policy=(policy_text(route), "warn" if route.fault else ""),
                        match=(route.match or "*", "dim"),
                    ),
                    kind="route",
                    service=name,
                    route=rname,
                    detail=route_detail(name, route),
                )
            )
            configured = route.to
            wanted = pending.get((name, rname))
            shown = [v for v in versions if v in configured or (wanted and v in wanted)]
            if len(configured) > 1:
                shown = versions  # a split: every version can be shifted into
            # A route to one version shows that one only: a "→ v1 0" row under `to: v2` read
            # as a split it never had, with the service's numbers for v1 beside it. Its
            # weights still change with + - w on the route's row (they act on the canary).
            for k, version in enumerate(shown):
                rows.append(
                    _version_row(name, rname, version, configured, wanted, split, live, rates, k)
                )
        if not svc.routes:
            rows.append(
                Row(
                    key=f"none:{name}",
                    cells=cells(ROUTE_COLUMNS, route=(f"{name} has no routes", "dim")),
                    kind="section",
                    service=name,
                )
            )
    ingress = routes.ingress if routes is not None else None
    if ingress is not None:
        rows.append(
            Row(
                key="section:ingress",
                cells=cells(
                    ROUTE_COLUMNS,
                    route=("ingress", "accent"),
                    match=(ingress.address, "dim"),
                ),
                kind="section",
                detail=f"the ingress gateway on {ingress.address}",
            )
        )
        for r in ingress.routes:
            live = rates.routes.get((INGRESS, r.name))
            rows.append(
                Row(
                    key=f"ingress:{r.name}",
                    cells=cells(
                        ROUTE_COLUMNS,
                        route=(f" {r.name} → {r.service}", ""),
                        **_route_live(live, rates.history.get(route_key(INGRESS, r.name))),
                        match=(r.match or "*", "dim"),
                    ),
                    kind="ingress",
                    service=r.service,
                    route=r.name,
                    detail=f"ingress route {r.name}: {r.match or 'any request'} → "
                    f"{r.service} (its routes apply)",
                )
            )
    return rows


def _route_live(live: Live | None, history: Sequence[float] | None) -> dict[str, Cell]:
    return {
        **_live_cells(live, history),
        # The highest of the callers' p50s (an upper bound of the route's median, see
        # `stats.Live`); the help screen says so.
        "p50": (fmt_ms(live.p50 if live else None), ""),
    }


def _ok_style(live: Live | None) -> str:
    return "bad" if live and live.success is not None and live.success < 0.99 else ""


def _version_row(
    service: str,
    route: str,
    version: str,
    configured: Mapping[str, int],
    wanted: Mapping[str, int] | None,
    split: Split | None,
    route_live: Live | None,
    rates: Rates,
    index: int,
) -> Row:
    weight = int(configured.get(version, 0))
    if wanted is not None and wanted.get(version, 0) != weight:
        weight_cell: Cell = (f"{weight}→{wanted.get(version, 0)}", "warn")
    else:
        weight_cell = (str(weight), "" if weight else "dim")
    share = split.shares.get(version) if split else None
    seen_style = ""
    if share is not None and split is not None and split.exact and abs(share - weight) > 10:
        seen_style = "warn"  # far from what is configured (yet): a shift is under way
    live = rates.versions.get((service, version))
    if not weight and not (wanted or {}).get(version):
        live = None  # the route sends this version nothing: its numbers are other routes'
        if split is None or not split.exact:
            share = None  # a share over all the service's routes is not this route's
    rps = None
    if route_live is not None and route_live.rps is not None and share is not None:
        rps = route_live.rps * share / 100
    detail = (
        f"{service}/{version} in route {route}: weight {weight}"
        + (f" (asked: {wanted.get(version, 0)})" if wanted is not None else "")
        + (f"; seen {share:.0f}% of the route's requests" if share is not None else "")
        + ("" if split is None or split.exact else " (over all of the service's routes)")
        + f"; {version} from every caller: {_live_text(live)}"
    )
    return Row(
        key=f"version:{service}/{route}/{version}",
        cells=cells(
            ROUTE_COLUMNS,
            route=(f"  → {version}", ""),
            weight=weight_cell,
            seen=(fmt_share(share), seen_style),
            **{
                **_route_live(live, None),
                "rps": (fmt_rps(rps), ""),  # this route's share, not the version's total
                "trend": (  # the share it received, on a 0-100 scale
                    sparkline(rates.history.get(share_key(service, route, version), ()), 10, 100),
                    "accent",
                ),
            },
        ),
        kind="version",
        service=service,
        route=route,
        version=version,
        detail=detail,
    )


# -- weights -------------------------------------------------------------------------------------


def set_weight(
    weights: Mapping[str, int], versions: Sequence[str], version: str, value: int
) -> dict[str, int]:
    """`version` gets `value` (0-100); the others share the rest in proportion to what they had
    (evenly if they had nothing), rounded so that the total stays 100."""
    value = max(0, min(100, value))
    others = [v for v in versions if v != version]
    if not others:
        return {version: 100}
    had = {v: max(0, int(weights.get(v, 0))) for v in others}
    total = sum(had.values())
    if total == 0:
        had = dict.fromkeys(others, 1)
        total = len(others)
    rest = 100 - value
    exact = {v: rest * had[v] / total for v in others}
    out = {v: int(exact[v]) for v in others}
    short = rest - sum(out.values())
    for v in sorted(others, key=lambda v: (-(exact[v] - out[v]), others.index(v)))[:short]:
        out[v] += 1
    out[version] = value
    return {v: out[v] for v in versions}


def step_weight(
    weights: Mapping[str, int], versions: Sequence[str], version: str, delta: int
) -> dict[str, int]:
    return set_weight(weights, versions, version, int(weights.get(version, 0)) + delta)


def weights_to_send(new: Mapping[str, int], configured: Mapping[str, int]) -> dict[str, int]:
    """What the shift call carries: zero weights only for versions the route already lists."""
    return {v: w for v, w in new.items() if w > 0 or v in configured}


ShiftKey = tuple[str, str]  # (service, route)
SHIFT_SETTLE = 0.35  # seconds without a key press before the asked-for weights are sent
SHIFT_GIVE_UP = 15.0  # seconds after which sent weights the daemon does not show are dropped


@dataclass
class PendingShifts:
    """Weights asked for with the keys and not served yet, per route. Quick key presses add
    up to one shift: nothing is sent until the keys have been quiet for `settle` seconds.
    Pure: the caller says what time it is (the app reads its `Clock`)."""

    settle: float = SHIFT_SETTLE
    give_up: float = SHIFT_GIVE_UP
    asked: dict[ShiftKey, dict[str, int]] = field(default_factory=dict)
    _since: dict[ShiftKey, float] = field(default_factory=dict)
    _sent: set[ShiftKey] = field(default_factory=set)
    _last_press: float = float("-inf")

    def ask(self, key: ShiftKey, weights: dict[str, int], now: float) -> None:
        self.asked[key] = weights
        self._since[key] = now
        self._sent.discard(key)
        self._last_press = now

    def due_in(self, now: float) -> float | None:
        """Seconds until `take_due` has something to send; None: nothing waits."""
        if not any(key not in self._sent for key in self.asked):
            return None
        left = self._last_press + self.settle - now
        return left if left > 1e-6 else 0.0  # a timer set for `left` may wake a hair early

    def take_due(self, now: float) -> list[tuple[ShiftKey, dict[str, int]]]:
        """What to send now (each route once), if the keys have been quiet long enough."""
        if self.due_in(now) != 0.0:
            return []
        out = [(key, weights) for key, weights in self.asked.items() if key not in self._sent]
        self._sent.update(key for key, _ in out)
        return out

    def settle_with(self, routes: api.Routes | None, now: float) -> None:
        """Forget sent weights once the daemon serves them (or after `give_up` seconds)."""
        for key in list(self.asked):
            if key not in self._sent:
                continue
            route = find_route(routes, *key)
            served = {v: w for v, w in (route.to if route else {}).items() if w > 0}
            asked = {v: w for v, w in self.asked[key].items() if w > 0}
            if served == asked or now - self._since.get(key, now) > self.give_up:
                self.forget(key)

    def forget(self, key: ShiftKey) -> None:
        self.asked.pop(key, None)
        self._since.pop(key, None)
        self._sent.discard(key)


# -- header, banner, events ----------------------------------------------------------------------


def header_text(
    state: api.MeshState | None, owns_mesh: bool, width: int = 0, progress: str = ""
) -> str:
    """The title line. On a narrow screen the least needed parts go first (the project
    name and the transport, the quit hint, the pod count), so the URL, which a user copies,
    is never cut."""
    if state is None:
        return progress or "connecting to the daemon …"
    ready = sum(1 for p in state.pods if p.ready)
    url = state.gateway.url if state.gateway is not None and state.gateway.url else ""
    parts = [  # (text, how readily it is dropped: higher first)
        (state.mesh, 0),
        (f"({state.project})" if state.project != state.mesh else "", 4),
        ("· " + url if url else "", 0),
        (f"· {state.phase}", 1),
        (f"· {progress}" if progress else "", 2),
        (f"· {ready}/{len(state.pods)} pods ready", 2),
        (f"· via {state.transport}" if state.transport else "", 4),  # how pods reach us
        ("· q stops the mesh" if owns_mesh else "", 3),
    ]
    kept = [(t, rank) for t, rank in parts if t]
    while width and len(" ".join(t for t, _ in kept)) > width - 2:
        worst = max(rank for _, rank in kept)
        if worst == 0:
            break
        kept.remove(next(p for p in reversed(kept) if p[1] == worst))
    return " ".join(t for t, _ in kept)


def bring_up_progress(state: api.MeshState | None, events: Sequence[api.Event]) -> str:
    """While a mesh comes up: what it is doing (an image being built, pods starting), from
    the daemon's typed state and its image events; "" once it serves with every pod ready."""
    if state is None:
        return "starting the daemon …"
    if state.phase == api.Phase.SERVING and state.ready:
        return ""
    images = [e for e in events if e.kind == api.EventKind.IMAGE]
    starting = [p for p in state.pods if not p.ready]
    if not state.pods and images:
        return " ".join(images[-1].text.split())  # "building devmesh-shop-app:1 from ./app"
    if starting:
        ready = len(state.pods) - len(starting)
        return f"pods starting: {ready}/{len(state.pods)} ready"
    if not state.pods:
        return "creating pods …"
    return ""


def filter_rows(rows: Sequence[Row], text: str) -> list[Row]:
    """The pods table under a `/` filter: services whose name holds `text` (any case), with
    their pods; the gateway stays (it serves them all)."""
    needle = text.strip().lower()
    if not needle:
        return list(rows)
    return [
        r
        for r in rows
        if r.kind == "gateway" or (r.service is not None and needle in r.service.lower())
    ]


def describe_lines(
    row: Row | None, state: api.MeshState | None, routes: api.Routes | None
) -> list[str]:
    """`d`: the selected service, pod or route in full, as k9s's describe (text, no change)."""
    if row is None or state is None:
        return ["nothing selected"]
    lines: list[str] = []
    pods = [p for p in state.pods if p.service == row.service]
    if row.kind in ("pod", "gateway"):
        pod = next((p for p in state.pods if p.pod == row.pod), None)
        if pod is not None:
            lines += [
                f"Pod:       {pod.pod}",
                f"Service:   {pod.service}   Version: {pod.version}   Replica: {pod.replica}",
                f"State:     {pod_state(pod)[0][2:]}" + (f" — {pod.reason}" if pod.reason else ""),
                f"Address:   {pod.address or '-'}",
                f"App:       {pod.app} ({pod.restarts} restart(s))",
                f"Sidecar:   {pod.sidecar}",
                f"Config:    {_xds_text(pod.xds)}",
            ]
            return lines
        if state.gateway is not None and row.kind == "gateway":
            g = state.gateway
            return [
                f"Gateway:   {g.name}",
                f"State:     {g.state}",
                f"URL:       {g.url or '-'}",
                f"Config:    {_xds_text(g.xds)}",
            ]
    svc = find_service(routes, row.service)
    name = row.service or "?"
    lines.append(f"Service:   {name} ({svc.protocol if svc else '?'})")
    if svc is not None:
        lines.append("Versions:  " + ", ".join(f"{v} ×{n}" for v, n in dict(svc.versions).items()))
    ready = sum(1 for p in pods if p.ready)
    lines.append(f"Pods:      {len(pods)}, {ready} ready")
    for p in pods:
        lines.append(f"  {p.pod:<32} {pod_state(p)[0]:<14} {p.address or '-'}")
    for f in state.failed:
        if f.service == name:
            lines.append(f"  {f.version}: cannot run: {f.reason}")
    if svc is not None and svc.routes:
        lines.append("Routes:")
        for route in svc.routes:
            lines.append("  " + route_detail(name, route))
    return lines


@dataclass(frozen=True, slots=True)
class Banner:
    lines: tuple[Cell, ...] = ()


def banner(state: api.MeshState | None, unavailable: str | None) -> Banner:
    lines: list[Cell] = []
    if unavailable:
        lines.append((f"✗ {unavailable}", "bad"))
    if state is not None:
        if not state.engine.ok:
            lines.append((f"✗ the container engine does not answer: {state.engine.detail}", "bad"))
        if state.problems:
            lines.append(
                (
                    f"✗ the mesh file has {len(state.problems)} problem(s); "
                    "the last good config keeps serving:",
                    "bad",
                )
            )
            lines.extend((f"  {p}", "bad") for p in state.problems)
        if state.push_error:
            lines.append((f"✗ config not delivered: {state.push_error}", "bad"))
        for error in state.errors:
            lines.append((f"! {error}", "warn"))
        for f in state.failed:
            lines.append((f"✗ {f.service}/{f.version} cannot run: {f.reason}", "bad"))
        for b in state.builds:  # a failed one is in `failed` too: its error shows there
            if b.running:
                lines.append((f"… building {b.service}/{b.version}: {b.step}", "warn"))
    return Banner(tuple(lines))


# The events pane is plain text: the severity shows as a mark, as the banner's do.
SEVERITY_MARK: Mapping[api.Severity, str] = {
    api.Severity.INFO: "",
    api.Severity.WARNING: "! ",
    api.Severity.ERROR: "✗ ",
}


def event_line(event: api.Event) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(event.time))
    return f"{clock} {SEVERITY_MARK[event.severity]}{event.text}"


@dataclass
class EventFeed:
    """The daemon's events not shown yet. The first read is its whole history, later ones the
    state's recent events: both overlap what was shown, so they are told apart by value."""

    last: float = 0.0
    at_last: set[api.Event] = field(default_factory=set)  # shown, with time `last`

    def new(self, events: Sequence[api.Event]) -> list[api.Event]:
        out = [
            e
            for e in events
            if e.time > self.last or (e.time == self.last and e not in self.at_last)
        ]
        if out:
            newest = max(e.time for e in out)
            if newest > self.last:
                self.last, self.at_last = newest, set()
            self.at_last.update(e for e in out if e.time == newest)
        return out


def appended(before: Sequence[str], after: Sequence[str]) -> list[str] | None:
    """The lines `after` (a log's last lines, read again) adds to `before`; None when they do not
    overlap (the log moved on by more than a read holds: show `after` anew). Two reads of a log
    can only be matched by content, so repeated identical lines may be counted once."""
    if not before:
        return list(after)
    for k in range(min(len(before), len(after)), 0, -1):
        if list(before[len(before) - k :]) == list(after[:k]):
            return list(after[k:])
    return None
