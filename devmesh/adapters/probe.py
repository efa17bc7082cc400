"""Health probes from the host to a pod's app, straight to its address and port."""

from __future__ import annotations

import http.client
import socket

from devmesh.core.model import HEALTH_TIMEOUT_MS, HEALTHY_STATUSES, Health


def probe(ip: str, port: int, health: Health | None) -> tuple[bool, str]:
    """(healthy, why not). With a path: GET must answer one of HEALTHY_STATUSES (2xx or 3xx);
    else a TCP connect."""
    timeout = (health.timeout_ms if health else HEALTH_TIMEOUT_MS) / 1000
    if health is not None and health.path is not None:
        conn = http.client.HTTPConnection(ip, port, timeout=timeout)
        try:
            conn.request("GET", health.path, headers={"User-Agent": "devmesh-health"})
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException) as exc:
            return False, f"GET {health.path}: {_why(exc)}"
        finally:
            conn.close()
        if status in HEALTHY_STATUSES:
            return True, ""
        return False, f"GET {health.path} answered {status}"
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, f"port {port}: {_why(exc)}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return str(exc) or type(exc).__name__
