"""How the commands show typed values as text: pure functions of `devmesh.api.types` values
(and the launcher's results), tested without a daemon or an engine."""

from __future__ import annotations

import json
import os
import time
import zlib
from typing import IO, TYPE_CHECKING, Any

from devmesh.api import codec, guards
from devmesh.api import types as api

if TYPE_CHECKING:
    from devmesh.cli.options import Format
    from devmesh.daemon.launcher import Instance


def as_json(value: Any) -> str:
    return json.dumps(codec.encode(value), indent=2, sort_keys=False)


def _expires(tls: api.PodTls | None, now: float | None) -> str:
    if tls is None:
        return "-"
    if now is None:
        return time.strftime("%H:%M:%S", time.localtime(tls.not_after))
    left = tls.not_after - now
    if left <= 0:
        return "expired"
    return f"{int(left // 3600)}h{int(left % 3600 // 60):02d}m" if left >= 3600 else f"{int(left)}s"


def overflow_line(stats: api.Stats | None) -> str | None:
    """`circuit breakers refused (UO): back/v1 12 (from front 9, ingress 3)`: requests each
    version's circuit breaker turned away at its callers, since their Envoys started."""
    refused = guards.refusals(stats)
    if not refused:
        return None
    parts = [f"{service}/{version} {text}" for (service, version), text in refused.items()]
    return "circuit breakers refused (UO): " + "; ".join(parts)


def ps_table(state: api.MeshState, stats: api.Stats | None = None, now: float | None = None) -> str:
    """The pods, with their mTLS (mode, certificate time left: `now` given, else the
    expiry's clock time) and, with `stats`, the callers their sidecars refused."""
    rows = [("POD", "SERVICE", "VERSION", "STATE", "ADDRESS", "CONFIG", "XDS", "TLS", "CERT")]
    reasons: dict[int, str] = {}
    identities: dict[int, str] = {}
    denials = {pod: f"denied: {text}" for pod, text in guards.denials(stats).items()}
    for p in state.pods:
        if not p.ready and p.reason:
            reasons[len(rows)] = " ".join(p.reason.split())
        notes = [p.tls.identity] if p.tls else []
        if p.pod in denials:
            notes.append(denials[p.pod])
        if notes:
            identities[len(rows)] = "  ".join(notes)
        rows.append(
            (
                p.pod,
                p.service,
                p.version,
                p.state.value,
                p.address or "-",
                p.xds.version or "-",
                p.xds.word,
                p.tls.mode if p.tls else "-",
                _expires(p.tls, now),
            )
        )
    for f in state.failed:
        reasons[len(rows)] = f.reason
        rows.append(("-", f.service, f.version, api.PodState.FAILED.value, "-", "-", "-", "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i in reasons:
            lines.append(f"  └ {reasons[i]}")
        if i in identities:
            lines.append(f"  · {identities[i]}")
    word = f"{state.phase.value}, {readiness(state)}" if state.pid else state.phase.value
    head = f"mesh '{state.project}' ({word})"
    if state.pid:
        head += f" pid {state.pid}"
    if state.transport:
        head += f" transport {state.transport}"
    gw = state.gateway
    if gw is not None:
        where = f"ingress {gw.url}" if gw.url else "gateway"
        head += f"  {where}" + ("" if gw.ready else f" (gateway not ready: {gw.state})")
        if gw.reason and not gw.ready:
            lines.append(f"gateway: {gw.reason}")
    overflow = overflow_line(stats)
    if overflow:
        lines.append(overflow)
    if state.tracing is not None:
        lines.append(tracing_line(state.tracing))
    if state.metrics:
        lines.append(f"metrics: {state.metrics}")
    if state.access is not None:
        a = state.access
        lines.append(
            f"access log: {a.kept} of {a.capacity} entries kept, {a.received} received, "
            f"{a.dropped} dropped"
        )
    if not state.engine.ok:
        lines.append(f"the container engine does not answer: {state.engine.detail}")
    for problem in state.problems:
        lines.append(f"mesh file problem (the last good config serves on): {problem}")
    return "\n".join([head, *lines])


def failed_versions(state: api.MeshState) -> int:
    """How many versions cannot run (`failed` has an entry per pod of theirs)."""
    return len({(f.service, f.version) for f in state.failed})


def readiness(state: api.MeshState) -> str:
    """`ready`, or `not ready` with how many versions cannot run (their pods are not among
    the pods counted, so `1/1 pods ready` alone would read as healthy)."""
    if state.ready:
        return "ready"
    failed = failed_versions(state)
    return "not ready" + (f": {failed} version(s) cannot run" if failed else "")


def not_ready_lines(state: api.MeshState) -> list[str]:
    """Each version that cannot run and each pod that is not ready, with why."""
    lines = []
    reported: set[tuple[str, str, str]] = set()
    for f in state.failed:
        if (f.service, f.version, f.reason) not in reported:
            reported.add((f.service, f.version, f.reason))
            lines.append(f"  {f.service}/{f.version}: {f.reason}")
    for p in state.pods:
        if not p.ready and (p.service, p.version, p.reason) not in reported:
            lines.append(f"  {p.service}/{p.version} ({p.pod}): {p.state.value}: {p.reason}")
    for b in state.builds:
        if b.running:
            lines.append(f"  {b.service}/{b.version}: building: {b.step}")
    gw = state.gateway
    if gw is not None and not gw.ready:
        lines.append(
            f"  gateway: {gw.state}, xDS {gw.xds.word}" + (f": {gw.reason}" if gw.reason else "")
        )
    if state.push_error:
        lines.append(f"  config delivery: {state.push_error}")
    if not state.engine.ok:
        lines.append(f"  the container engine: {state.engine.detail}")
    return lines


def no_route_lines(state: api.MeshState, waited: float) -> list[str]:
    """Transport tcp, and not one sidecar (nor the gateway) ever connected while their
    containers run: the pods have no route to the daemon. Says where they dial and what
    to check, instead of each pod's "not ACKed yet"; [] in any other case."""
    if not state.control_plane:
        return []
    proxies = [(p.sidecar, p.xds) for p in state.pods]
    if state.gateway is not None:
        proxies.append((state.gateway.state, state.gateway.xds))
    running = [xds for container, xds in proxies if container == "running"]
    if not running or any(xds.connected for xds in running):
        return []
    host = state.control_plane.rpartition(":")[0]
    return [
        f"  no sidecar reached the control plane at {state.control_plane} within "
        f"{waited:g} s ({len(running)} running, none connected).",
        f"  Check that containers on this engine reach {host} (the daemon's host: "
        "host.docker.internal on Docker Desktop, the engine's host-gateway elsewhere), that "
        "nothing between them drops the port, or give an address they can reach as "
        "DEVMESH_XDS_ADDRESS=host:port (e.g. a port forwarded to the daemon's).",
    ]


def url_lines(state: api.MeshState) -> list[str]:
    gw = state.gateway
    if gw is None:
        return []
    lines = [f"ingress: {gw.url}"] if gw.url else []
    lines += [f"  {name}: {url}" for name, url in gw.services.items()]
    if state.metrics:
        lines.append(f"metrics: {state.metrics}")
    return lines


def dump(value: Any, fmt: Format) -> str:
    """An API value as JSON or YAML (the same document either way)."""
    return dump_plain(codec.encode(value), fmt)


def dump_plain(data: Any, fmt: Format) -> str:
    if fmt.value == "yaml":
        import yaml

        return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True)).rstrip("\n")
    return json.dumps(data, indent=2, sort_keys=False)


def instance_json(i: Instance) -> dict[str, Any]:
    s = i.state
    return {
        "project": i.project,
        "pid": i.pid,
        "phase": s.phase.value if s else None,
        "ready": s.ready if s else False,
        "pods": len(s.pods) if s else None,
        "pods_ready": sum(p.ready for p in s.pods) if s else None,
        "failed_versions": failed_versions(s) if s else None,
        "url": s.gateway.url if s and s.gateway else None,
        "file": s.file if s else None,
        "error": i.error or None,
        "daemon": i.pid > 0,
        "containers_running": i.running if i.pid == 0 else None,
    }


def ls_table(found: list[Instance]) -> str:
    if not found:
        return "no mesh runs (`devmesh up -d` starts one)"
    rows: list[tuple[str, ...]] = [("PROJECT", "STATE", "PODS", "URL", "FILE")]
    for i in found:
        d = instance_json(i)
        if i.pid == 0:
            rows.append((i.project, "no daemon", f"{i.running} containers running", "-", "-"))
            continue
        if i.state is None:
            rows.append((i.project, "not answering", "-", "-", "-"))
            continue
        word = "ready" if d["ready"] else f"{d['phase']}, not ready"
        pods = f"{d['pods_ready']}/{d['pods']}"
        if d["failed_versions"]:
            pods += f" +{d['failed_versions']} version(s) failed"
        rows.append((i.project, word, pods, d["url"] or "-", d["file"] or "-"))
    return _table(rows)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def event_line(e: api.Event) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(e.time))
    return f"{when}  {e.severity.value:<7}  {e.kind.value:<9}  {e.text}"


def event_json(e: api.Event) -> str:
    return json.dumps(codec.encode(e), sort_keys=False)


def events_after(events: tuple[api.Event, ...], last: api.Event | None) -> list[api.Event]:
    """The events newer than `last` (the daemon keeps the last 200; a poll sees a window)."""
    if last is None:
        return list(events)
    for i in range(len(events) - 1, -1, -1):
        if events[i] == last:
            return list(events[i + 1 :])
    return [e for e in events if e.time >= last.time and e != last]


def use_colour(stream: IO[str]) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


_COLOURS = (36, 33, 32, 35, 34, 91, 92, 93, 94, 95, 96)  # ANSI foregrounds, compose-like


def log_line(line: api.LogLine, several: bool, colour: bool = False) -> str:
    """A log line: prefixed by its pod when there are several pods (every service's logs
    interleaved, or a service with replicas), the prefix coloured per pod on a terminal."""
    if not several:
        return line.text
    who = line.pod if line.source in ("app", "gateway") else f"{line.pod} {line.source}"
    prefix = f"{who} |"
    if colour:
        code = _COLOURS[zlib.crc32(line.pod.encode()) % len(_COLOURS)]  # stable per pod
        prefix = f"\x1b[{code}m{prefix}\x1b[0m"
    return f"{prefix} {line.text}"


def tracing_line(t: api.TracingStatus) -> str:
    """`ps`'s tracing line: where spans go, how many are kept, and what was dropped."""
    if t.provider == "xray":
        return f"tracing: X-Ray, {t.sampling:g}% sampled"
    # Spans are decoded when someone reads traces: until then they wait, uncounted in traces.
    unread = f" ({t.unread} not read yet)" if t.unread else ""
    line = (
        f"tracing: {t.sampling:g}% sampled{' (auto)' if t.adaptive else ''}, {t.traces} traces "
        f"kept, {t.spans} spans "
        f"received{unread}, {t.evicted} of older traces made room, {t.dropped} lost"
    )
    if t.forward:
        line += f"; forwarded to {t.forward}: {t.forwarded} sent, {t.forward_dropped} dropped"
        if t.forward_error:
            line += f" ({t.forward_error})"
    return line
