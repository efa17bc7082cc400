"""How the CLI shows the access log: one line an entry, Envoy's flags in words."""

from __future__ import annotations

import json
import time
from typing import Any

from devmesh.api import codec
from devmesh.api import types as api
from devmesh.api.response_flags import explain_flags


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


def access_line(e: api.AccessEntry) -> str:
    """One access-log entry on one line: when, who called whom over which route, what came
    back, and Envoy's response flags in words."""
    stamp = time.strftime("%H:%M:%S", time.localtime(e.time)) + f".{int(e.time * 1000) % 1000:03d}"
    source = "/".join(x for x in (e.source_service, e.source_version) if x) or "outside"
    dest = "/".join(x for x in (e.service, e.version) if x) or "?"
    if e.pod:
        dest += f" ({e.pod})"
    route = f" [{e.route}]" if e.route else ""
    status = str(e.status) if e.status is not None else "---"
    what = "TCP" if e.tcp else f"{e.method} {e.authority}{e.path}"
    if e.mirrored_copy:
        what += " (mirrored copy)"
    line = (
        f"{stamp} {e.reporter.value:<8} {source} -> {dest}{route} {what} {status} "
        f"{_ms(e.duration_ms)} (upstream {_ms(e.upstream_ms)}) "
        f"in {e.bytes_received}B out {e.bytes_sent}B"
    )
    if e.flags:
        line += f" {','.join(e.flags)}: {explain_flags(e.flags)}"
    if e.request_id:
        line += f" id={e.request_id}"
    if e.trace_id:
        line += f" trace={e.trace_id}"
    return line


def access_counters_line(c: api.AccessCounters) -> str:
    return (
        f"access log: {c.kept} of {c.capacity} entries kept, {c.received} received, "
        f"{c.evicted} made room for newer ones, {c.dropped} dropped (undecodable)"
    )


def as_json_line(value: Any) -> str:
    """One value as one line of JSON (`--follow --json` prints a stream of them)."""
    return json.dumps(codec.encode(value), separators=(",", ":"))
