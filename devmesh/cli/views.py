"""How the commands show typed values as text: pure functions of `devmesh.api.types` values
(and the launcher's results), tested without a daemon or an engine."""

from __future__ import annotations

import json
import time
from typing import Any

from devmesh.api import codec
from devmesh.api import types as api


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


def _denials(stats: api.Stats | None) -> dict[str, str]:
    """Pod -> `denied: frontend 3, _unknown 1` for each pod whose sidecar refused callers."""
    out = {}
    for s in stats.sidecars if stats else ():
        if s.denials:
            named = ", ".join(
                f"{_caller(d.caller)} {d.count}" for d in sorted(s.denials, key=lambda d: d.caller)
            )
            out[s.source] = f"denied: {named}"
    return out


def _caller(caller: str) -> str:
    return {api.GATEWAY_CALLER: "gateway", api.UNKNOWN_CALLER: "unknown peer"}.get(caller, caller)


def ps_table(state: api.MeshState, stats: api.Stats | None = None, now: float | None = None) -> str:
    """The pods, with their mTLS (mode, certificate time left: `now` given, else the
    expiry's clock time) and, with `stats`, the callers their sidecars refused."""
    rows = [("POD", "SERVICE", "VERSION", "STATE", "ADDRESS", "CONFIG", "XDS", "TLS", "CERT")]
    reasons: dict[int, str] = {}
    identities: dict[int, str] = {}
    denials = _denials(stats)
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
    head = f"mesh '{state.project}' ({state.phase.value})"
    if state.pid:
        head += f" pid {state.pid}"
    gw = state.gateway
    if gw is not None:
        where = f"ingress {gw.url}" if gw.url else "gateway"
        head += f"  {where} {'ready' if gw.ready else gw.state}"
    if not state.engine.ok:
        lines.append(f"the container engine does not answer: {state.engine.detail}")
    for problem in state.problems:
        lines.append(f"mesh file problem (the last good config serves on): {problem}")
    return "\n".join([head, *lines])


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
    gw = state.gateway
    if gw is not None and not gw.ready:
        lines.append(f"  gateway: {gw.state}, xDS {gw.xds.word}")
    if state.push_error:
        lines.append(f"  config delivery: {state.push_error}")
    if not state.engine.ok:
        lines.append(f"  the container engine: {state.engine.detail}")
    return lines


def url_lines(state: api.MeshState) -> list[str]:
    gw = state.gateway
    if gw is None:
        return []
    lines = [f"ingress: {gw.url}"] if gw.url else []
    lines += [f"  {name}: {url}" for name, url in gw.services.items()]
    return lines


def log_line(line: api.LogLine, several: bool) -> str:
    """A line of a service's app log: prefixed by its pod when the service has several."""
    return f"{line.pod} | {line.text}" if several else line.text
