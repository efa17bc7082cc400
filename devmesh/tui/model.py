"""The TUI's screens as values: table rows, header, banner and event lines computed from the
daemon's API documents and the live rates. Pure: no I/O, no Textual; tested on its own.

A cell is (text, style) with a style *name* ("ok", "warn", "bad", "dim", "accent", ""); the
widgets turn names into colours, and NO_COLOR turns them into plain text. States never rely on
colour alone: each carries a symbol and a word.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True, slots=True)
class Event:
    time: float
    text: str
    style: str = ""
    seen: bool = False  # derived by the TUI from two reads, not told by the daemon

    def line(self) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(self.time))
        return f"{clock} {'· ' if self.seen else ''}{self.text}"


# -- pods and services ---------------------------------------------------------------------------


def pod_state(pod: Mapping[str, Any]) -> Cell:
    if pod.get("ready"):
        return "● ready", "ok"
    reason = str(pod.get("reason") or "")
    if reason.startswith("cannot "):
        return "✗ failed", "bad"
    if reason.startswith("config NACKed"):
        return "✗ NACKed", "bad"
    if reason.startswith("app exiting"):
        return "↻ restarting", "warn"
    if reason.startswith("sidecar not running"):
        return "✗ no sidecar", "bad"
    if reason == "daemon not running":
        return "? no daemon", "dim"
    if reason.startswith("health failing") and "not checked yet" not in reason:
        if pod.get("restarts"):
            return "↻ restarting", "warn"
        return "◐ unhealthy", "warn"
    return "◐ starting", "warn"


def xds_cell(xds: Mapping[str, Any] | None) -> Cell:
    if not xds:
        return "-", "dim"
    if xds.get("nack"):
        return "NACK", "bad"
    if xds.get("synced"):
        return "ACK", "ok"
    if xds.get("connected"):
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


def _short_pod(pod: Mapping[str, Any], project: str) -> str:
    name = str(pod["pod"])
    prefix = f"{project}-{pod['service']}-"
    return name[len(prefix) :] if name.startswith(prefix) else name


def service_order(state: Mapping[str, Any], routes: Mapping[str, Any] | None) -> list[str]:
    names: list[str] = []
    for svc in (routes or {}).get("services", []):
        names.append(str(svc["name"]))
    for pod in state.get("pods", []):
        if pod["service"] not in names:
            names.append(str(pod["service"]))
    return names


def pod_rows(
    state: Mapping[str, Any], routes: Mapping[str, Any] | None, rates: Rates | None
) -> list[Row]:
    """Each service, then its pods (and versions that cannot run); the gateway last."""
    rates = rates or Rates(0.0)
    project = str(state.get("project", ""))
    pods = list(state.get("pods", []))
    failed = list(state.get("failed", []))
    replicas: dict[str, dict[str, int]] = {
        str(s["name"]): dict(s.get("versions", {})) for s in (routes or {}).get("services", [])
    }
    protocols = {str(s["name"]): str(s["protocol"]) for s in (routes or {}).get("services", [])}
    rows: list[Row] = []
    for service in service_order(state, routes):
        mine = [p for p in pods if p["service"] == service]
        broken = [f for f in failed if f["service"] == service]
        ready = sum(1 for p in mine if p.get("ready"))
        if broken:
            state_cell: Cell = (f"✗ {ready}/{len(mine)} ready", "bad")
        elif mine and ready == len(mine):
            state_cell = (f"● {ready}/{len(mine)} ready", "ok")
        else:
            state_cell = (f"◐ {ready}/{len(mine)} ready", "warn")
        versions = replicas.get(service) or _versions_of(mine)
        version_text = " ".join(v if n == 1 else f"{v}×{n}" for v, n in versions.items())
        live = rates.services.get(service)
        detail = (
            f"{service} ({protocols.get(service, '?')}): {len(versions)} version(s), "
            f"{len(mine)} pod(s), {ready} ready"
            + (f"; requests from callers: {_live_text(live)}" if live else "")
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
            rows.append(_pod_row(pod, project, last, rates))
        for j, f in enumerate(broken):
            if any(p["version"] == f["version"] and not p.get("ready") for p in mine):
                continue  # its pods already say why
            branch = "└" if j == len(broken) - 1 else "├"
            rows.append(
                Row(
                    key=f"failed:{service}|{f['version']}",
                    cells=cells(
                        POD_COLUMNS,
                        name=(f" {branch} {f['version']}", ""),
                        state=("✗ failed", "bad"),
                        version=(str(f["version"]), ""),
                    ),
                    kind="failed",
                    service=service,
                    version=str(f["version"]),
                    detail=f"{service}/{f['version']} cannot run: {f['reason']}",
                )
            )
    gateway = state.get("gateway")
    if gateway:
        live = rates.pods.get(str(gateway["name"]))
        g_state: Cell = ("● ready", "ok") if gateway.get("ready") else (gateway["state"], "warn")
        rows.append(
            Row(
                key="gateway",
                cells=cells(
                    POD_COLUMNS,
                    name=("ingress", "accent"),
                    state=g_state,
                    xds=xds_cell(gateway.get("xds")),
                    **_live_cells(live, rates.history.get(pod_key(str(gateway["name"])))),
                    config=((gateway.get("xds") or {}).get("version") or "-", "dim"),
                    address=(str(gateway.get("url", "")), ""),
                ),
                kind="gateway",
                pod=str(gateway["name"]),
                detail=f"ingress gateway {gateway['name']}: {gateway['state']}, "
                f"{gateway.get('url', '')}; {_xds_text(gateway.get('xds'))}",
            )
        )
    return rows


def _versions_of(pods: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in pods:
        out[str(p["version"])] = out.get(str(p["version"]), 0) + 1
    return out


def _pod_row(pod: Mapping[str, Any], project: str, last: bool, rates: Rates) -> Row:
    name = str(pod["pod"])
    live = rates.pods.get(name)
    xds = pod.get("xds") or {}
    state = pod_state(pod)
    detail = (
        f"{name} ({pod.get('address') or 'no address'}): {state[0][2:]}"
        + (f" — {pod['reason']}" if pod.get("reason") else "")
        + f"; app {pod.get('app')}, {pod.get('restarts', 0)} restart(s); "
        f"sidecar {pod.get('sidecar')}; {_xds_text(xds)}"
    )
    return Row(
        key=f"pod:{name}",
        cells=cells(
            POD_COLUMNS,
            name=(f" {'└' if last else '├'} {_short_pod(pod, project)}", ""),
            state=state,
            version=(str(pod["version"]), ""),
            xds=xds_cell(xds),
            **{
                **_live_cells(live, rates.history.get(pod_key(name))),
                "p99": ("", ""),  # into a pod: counted, but no latency histogram is read
            },
            config=(str(xds.get("version") or "-"), "dim"),
            address=(str(pod.get("address") or "-"), ""),
        ),
        kind="pod",
        service=str(pod["service"]),
        pod=name,
        version=str(pod["version"]),
        detail=detail,
    )


def _xds_text(xds: Mapping[str, Any] | None) -> str:
    if not xds:
        return "xDS: not connected"
    text = f"config {xds.get('version') or '-'} "
    if xds.get("nack"):
        nack = xds["nack"]
        return text + f"NACKed ({nack['type']}): {' '.join(str(nack['message']).split())}"
    if xds.get("synced"):
        return text + "ACKed"
    return text + ("pushed, waiting for the ACK" if xds.get("connected") else "(not connected)")


def _live_text(live: Live | None) -> str:
    if live is None or live.rps is None:
        return "no numbers yet"
    text = f"{fmt_rps(live.rps)} req/s, {fmt_success(live.success)} ok"
    if live.p50 is not None or live.p99 is not None:
        text += f", p50 {fmt_ms(live.p50)} p99 {fmt_ms(live.p99)}"
    if live.cx is not None:
        text += f", {live.cx} conn"
    return text


# -- routes --------------------------------------------------------------------------------------


def find_service(routes: Mapping[str, Any] | None, name: str | None) -> Mapping[str, Any] | None:
    for svc in (routes or {}).get("services", []):
        if svc["name"] == name:
            found: Mapping[str, Any] = svc
            return found
    return None


def fault_text(fault: Mapping[str, Any] | None) -> str:
    if not fault:
        return ""
    parts = []
    if fault.get("delay"):
        d = fault["delay"]
        parts.append(f"delay {fmt_ms(float(d['fixed_ms']))} {d['percent']:g}%")
    if fault.get("abort"):
        a = fault["abort"]
        code = a.get("status") or f"grpc {a.get('grpc_status')}"
        parts.append(f"abort {code} {a['percent']:g}%")
    return ", ".join(parts)


def policy_text(route: Mapping[str, Any]) -> str:
    parts = []
    if route.get("retries"):
        parts.append(f"retry {route['retries']['attempts']}")
    if route.get("timeout_ms") is not None:
        parts.append(fmt_ms(float(route["timeout_ms"])))
    fault = fault_text(route.get("fault"))
    if fault:
        parts.append(("⚡" if route.get("fault_override") else "") + fault)
    if route.get("mirror"):
        parts.append(f"mirror {route['mirror']['percent']:g}%")
    return " · ".join(parts)


def route_detail(service: str, route: Mapping[str, Any]) -> str:
    to = ", ".join(f"{v} {w}%" for v, w in route.get("to", {}).items())
    parts = [f"{service}/{route['name']}: {route.get('match') or 'any request'} → {to}"]
    if route.get("retries"):
        r = route["retries"]
        parts.append(f"retries {r['attempts']} on {','.join(r['on'])}")
    if route.get("timeout_ms") is not None:
        parts.append(f"timeout {fmt_ms(float(route['timeout_ms']))}")
    fault = fault_text(route.get("fault"))
    if fault:
        origin = "set here, not in the file" if route.get("fault_override") else "from the file"
        parts.append(f"fault {fault} ({origin})")
    if route.get("mirror"):
        m = route["mirror"]
        parts.append(f"mirror {m['percent']:g}% to {m['service']}/{m['version']}")
    return " · ".join(parts)


def route_rows(
    routes: Mapping[str, Any] | None,
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
        name = str(svc["name"])
        versions = list(svc.get("versions", {}))
        for route in svc.get("routes", []):
            rname = str(route["name"])
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
                        policy=(policy_text(route), "warn" if route.get("fault") else ""),
                        match=(str(route.get("match") or "*"), "dim"),
                    ),
                    kind="route",
                    service=name,
                    route=rname,
                    detail=route_detail(name, route),
                )
            )
            configured: Mapping[str, int] = route.get("to", {})
            wanted = pending.get((name, rname))
            shown = [v for v in versions if v in configured or (wanted and v in wanted)]
            if len(versions) > 1:
                shown = versions  # every version can be shifted into
            for k, version in enumerate(shown):
                rows.append(
                    _version_row(name, rname, version, configured, wanted, split, live, rates, k)
                )
        if not svc.get("routes"):
            rows.append(
                Row(
                    key=f"none:{name}",
                    cells=cells(ROUTE_COLUMNS, route=(f"{name} has no routes", "dim")),
                    kind="section",
                    service=name,
                )
            )
    ingress = (routes or {}).get("ingress")
    if ingress:
        rows.append(
            Row(
                key="section:ingress",
                cells=cells(
                    ROUTE_COLUMNS,
                    route=("ingress", "accent"),
                    match=(str(ingress.get("address", "")), "dim"),
                ),
                kind="section",
                detail=f"the ingress gateway on {ingress.get('address')}",
            )
        )
        for r in ingress.get("routes", []):
            live = rates.routes.get((INGRESS, str(r["name"])))
            rows.append(
                Row(
                    key=f"ingress:{r['name']}",
                    cells=cells(
                        ROUTE_COLUMNS,
                        route=(f" {r['name']} → {r['service']}", ""),
                        **_route_live(live, rates.history.get(route_key(INGRESS, str(r["name"])))),
                        match=(str(r.get("match") or "*"), "dim"),
                    ),
                    kind="ingress",
                    service=str(r["service"]),
                    route=str(r["name"]),
                    detail=f"ingress route {r['name']}: {r.get('match') or 'any request'} → "
                    f"{r['service']} (its routes apply)",
                )
            )
    return rows


def _route_live(live: Live | None, history: Sequence[float] | None) -> dict[str, Cell]:
    return {
        **_live_cells(live, history),
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
    if not weight and not share and not (wanted or {}).get(version):
        live = None  # the route sends this version nothing: its numbers are other routes'
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


# -- header, banner, events ----------------------------------------------------------------------


def header_text(state: Mapping[str, Any] | None, owns_mesh: bool) -> str:
    if not state:
        return "connecting to the daemon …"
    pods = state.get("pods", [])
    ready = sum(1 for p in pods if p.get("ready"))
    name = state.get("mesh", "?")
    project = state.get("project", name)
    title = f"{name}" + (f" ({project})" if project != name else "")
    parts = [f"{title} {state.get('phase', '?')}", f"{ready}/{len(pods)} pods ready"]
    if owns_mesh:
        parts.append("q stops the mesh")
    gateway = state.get("gateway")
    if gateway:
        parts.append(str(gateway.get("url", "")))
    return " · ".join(parts)


@dataclass(frozen=True, slots=True)
class Banner:
    lines: tuple[Cell, ...] = ()


def banner(state: Mapping[str, Any] | None, unavailable: str | None) -> Banner:
    lines: list[Cell] = []
    if unavailable:
        lines.append((f"✗ {unavailable}", "bad"))
    if state:
        problems = state.get("problems") or []
        if problems:
            lines.append(
                (
                    f"✗ the mesh file has {len(problems)} problem(s); "
                    "the last good config keeps serving:",
                    "bad",
                )
            )
            lines.extend((f"  {p}", "bad") for p in problems)
        for error in state.get("errors") or []:
            lines.append((f"! {error}", "warn"))
        for f in state.get("failed") or []:
            lines.append((f"✗ {f['service']}/{f['version']} cannot run: {f['reason']}", "bad"))
    return Banner(tuple(lines))


def event_style(text: str) -> str:
    lowered = text.lower()
    if any(w in lowered for w in ("nack", "error", "problem", "unhealthy", "failed", ": die")):
        return "bad"
    if any(w in lowered for w in ("restart", "fault", "shift", "oom", "destroy")):
        return "warn"
    return ""


@dataclass
class EventFeed:
    """New daemon events since the last read, and events the TUI sees by comparing two states
    (the daemon does not log pushes, ACKs and NACKs: the sidecars' xDS status shows them)."""

    last: tuple[float, str] = (0.0, "")
    pods: dict[str, tuple[str | None, str | None, int]] = field(default_factory=dict)

    def daemon_events(self, events: Sequence[Mapping[str, Any]]) -> list[Event]:
        out = []
        for e in events:
            key = (float(e["time"]), str(e["text"]))
            if key > self.last:
                out.append(Event(key[0], key[1], event_style(key[1])))
        if out:
            self.last = (out[-1].time, out[-1].text)
        return out

    def seen(self, state: Mapping[str, Any], now: float) -> list[Event]:
        out: list[Event] = []
        current: dict[str, tuple[str | None, str | None, int]] = {}
        items = [
            (str(p["pod"]), p.get("xds") or {}, int(p.get("restarts") or 0))
            for p in state.get("pods", [])
        ]
        gateway = state.get("gateway")
        if gateway:
            items.append((str(gateway["name"]), gateway.get("xds") or {}, 0))
        for name, xds, restarts in items:
            nack = xds.get("nack")
            nack_text = (
                f"{nack['type']}: {' '.join(str(nack['message']).split())}" if nack else None
            )
            now_status = (xds.get("version"), nack_text, restarts)
            current[name] = now_status
            before = self.pods.get(name)
            if before is None:
                continue
            if now_status[0] and now_status[0] != before[0] and xds.get("synced"):
                out.append(
                    Event(now, f"{name}: config {now_status[0]} pushed and ACKed", seen=True)
                )
            if nack_text and nack_text != before[1]:
                out.append(Event(now, f"{name}: NACK ({nack_text})", "bad", seen=True))
            elif before[1] and not nack_text:
                out.append(Event(now, f"{name}: NACK cleared", seen=True))
            if restarts > before[2]:
                out.append(
                    Event(now, f"{name}: app restarted ({restarts} so far)", "warn", seen=True)
                )
        self.pods = current
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
