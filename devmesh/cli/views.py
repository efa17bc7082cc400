"""How the commands show typed values as text: pure functions of `devmesh.api.types` values
(and the launcher's results), tested without a daemon or an engine."""

from __future__ import annotations

import json
from typing import Any

from devmesh.api import codec
from devmesh.api import types as api


def as_json(value: Any) -> str:
    return json.dumps(codec.encode(value), indent=2, sort_keys=False)


def ps_table(state: api.MeshState) -> str:
    rows = [("POD", "SERVICE", "VERSION", "STATE", "ADDRESS", "CONFIG", "XDS")]
    reasons: dict[int, str] = {}
    for p in state.pods:
        if not p.ready and p.reason:
            reasons[len(rows)] = " ".join(p.reason.split())
        rows.append(
            (
                p.pod,
                p.service,
                p.version,
                p.state.value,
                p.address or "-",
                p.xds.version or "-",
                p.xds.word,
            )
        )
    for f in state.failed:
        reasons[len(rows)] = f.reason
        rows.append(("-", f.service, f.version, api.PodState.FAILED.value, "-", "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i in reasons:
            lines.append(f"  └ {reasons[i]}")
    head = f"mesh '{state.project}' ({state.phase.value})"
    if state.pid:
        head += f" pid {state.pid}"
    gw = state.gateway
    if gw is not None:
        where = f"ingress {gw.url}" if gw.url else "gateway"
        head += f"  {where} {'ready' if gw.ready else gw.state}"
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
    if state.metrics:
        lines.append(f"metrics: {state.metrics}")
    return lines


def log_line(line: api.LogLine, several: bool) -> str:
    """A line of a service's app log: prefixed by its pod when the service has several."""
    return f"{line.pod} | {line.text}" if several else line.text


def tracing_line(t: api.TracingStatus) -> str:
    """`ps`'s tracing line: where spans go, how many are kept, and what was dropped."""
    if t.provider == "xray":
        return f"tracing: X-Ray, {t.sampling:g}% sampled"
    line = (
        f"tracing: {t.sampling:g}% sampled, {t.traces} traces kept, {t.spans} spans received, "
        f"{t.dropped} dropped"
    )
    if t.forward:
        line += f"; forwarded to {t.forward}: {t.forwarded} sent, {t.forward_dropped} dropped"
        if t.forward_error:
            line += f" ({t.forward_error})"
    return line
