"""What the mesh's guards turned away, in words: RBAC denials by caller, and the requests
circuit breakers refused (UO), counted since each Envoy started. Plain text from `Stats`,
shared by `devmesh ps` and the TUI's detail lines."""

from __future__ import annotations

from devmesh.api.types import GATEWAY_CALLER, UNKNOWN_CALLER, Stats


def caller_name(caller: str) -> str:
    return {GATEWAY_CALLER: "gateway", UNKNOWN_CALLER: "unknown peer"}.get(caller, caller)


def denials(stats: Stats | None) -> dict[str, str]:
    """Pod -> `front 3, unknown peer 1`, for each pod whose sidecar refused callers."""
    out = {}
    for s in stats.sidecars if stats else ():
        if s.denials:
            ordered = sorted(s.denials, key=lambda d: d.caller)
            out[s.source] = ", ".join(f"{caller_name(d.caller)} {d.count}" for d in ordered)
    return out


def refusals(stats: Stats | None) -> dict[tuple[str, str], str]:
    """(service, version) -> `12 (from front 9, ingress 3)`: the requests that version's
    circuit breaker turned away at its callers."""
    refused: dict[tuple[str, str], dict[str, int]] = {}
    for s in stats.sidecars if stats else ():
        for up in s.upstreams:
            if up.traffic.overflow:
                callers = refused.setdefault((up.service, up.version), {})
                callers[s.service] = callers.get(s.service, 0) + up.traffic.overflow
    return {
        key: f"{sum(callers.values())} (from "
        + ", ".join(f"{c} {n}" for c, n in sorted(callers.items()))
        + ")"
        for key, callers in sorted(refused.items())
    }
