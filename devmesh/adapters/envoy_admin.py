"""Reading a sidecar's counters through its admin API's UNIX socket (never a port: admin
has /quitquitquit). Filtered queries only: a full /stats dump is 300-500 KB per sidecar."""

from __future__ import annotations

import http.client
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

# Requests, errors and retries per version cluster, per route, and into the pod.
STATS_FILTER = (
    r"^(cluster\.[^.]+\|[^.]+\.(upstream_rq_total|upstream_rq_[245]xx|upstream_rq_retry"
    r"|upstream_cx_active|upstream_rq_pending_overflow|outlier_detection\.ejections_active)"
    r"|vhost\.[^.]+\.route\..+\.upstream_rq_(total|completed|[245]xx|retry)"
    r"|http\.(in|ingress)\.downstream_rq_(total|[245]xx)"
    r"|http\.(in|ingress)\.downstream_cx_active)$"
)


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)  # admin refuses HTTP/1.0: this is 1.1
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def read_stats(admin_socket: Path, regex: str = STATS_FILTER, timeout: float = 2) -> dict[str, int]:
    """Counters and gauges whose names match `regex` (used ones only)."""
    conn = _UnixHTTP(admin_socket, timeout)
    try:
        conn.request("GET", f"/stats?format=json&usedonly&filter={quote(regex)}")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise OSError(f"admin answered {resp.status}")
    out: dict[str, int] = {}
    for item in json.loads(body).get("stats", []):
        if "value" in item:
            out[str(item["name"])] = int(item["value"])
    return out


def read_many(sockets: dict[str, Path]) -> dict[str, dict[str, int] | str]:
    """name -> stats, or the reason they could not be read; read in parallel."""

    def one(path: Path) -> dict[str, int] | str:
        try:
            return read_stats(path)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            return f"unreadable: {exc}"

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="stats") as pool:
        return dict(zip(sockets, pool.map(one, sockets.values()), strict=True))
