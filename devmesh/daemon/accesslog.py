"""The daemon's access log: what every Envoy's gRPC access logger sends, in mesh terms, the
last `ACCESS_CAPACITY` entries kept in memory whoever is (or is not) watching.

Envoy sends a batch per flush per listener kind. The xDS loop only queues each batch
(`offer`, never blocking: a full queue drops the batch and counts its entries); one worker
thread decodes the batches, maps them to `AccessEntry` values (`to_entry`, pure), and
appends them to a ring. Readers filter the ring (`query`) or follow it (`follow`).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from devmesh.adapters.access_log_service import EnvoyAccess, decode
from devmesh.adapters.engine import ContainerInfo
from devmesh.api import types as api
from devmesh.core.model import Mesh
from devmesh.envoy.names import parse_cluster_name, parse_hop_name
from devmesh.plan.desired import Desired

log = logging.getLogger("devmesh.access")

BACKLOG_BATCHES = 2_000  # undecoded batches waiting for the worker (a batch: one flush)
Who = tuple[str, str, str]  # (service, version, pod); "" where unknown
NOBODY: Who = ("", "", "")


@dataclass(frozen=True, slots=True)
class Directory:
    """Who is who in the running mesh: Envoy node ids and pod addresses to mesh terms."""

    nodes: Mapping[str, Who] = field(default_factory=dict)  # node id (sidecar container)
    ips: Mapping[str, Who] = field(default_factory=dict)  # a pod's (or the gateway's) address
    services: frozenset[str] = frozenset()


def trace_id_of(header: str) -> str:
    """The trace id in a `traceparent` (`00-TRACE-SPAN-01`) or X-Ray header
    (`Root=1-5759e988-bd86...;Parent=...`); "" when there is none."""
    if not header:
        return ""
    if header.startswith("Root=") or ";" in header:
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == "Root":
                return value
        return ""
    parts = header.split("-")
    return parts[1] if len(parts) >= 4 and len(parts[1]) == 32 else ""


def _me(raw: EnvoyAccess, directory: Directory) -> Who:
    found = directory.nodes.get(raw.node_id)
    if found is not None:
        return found
    # A node the directory does not know yet (a pod just started): its node cluster is
    # MESH/SERVICE/VERSION, or MESH/gateway.
    parts = raw.node_cluster.split("/")
    if len(parts) == 2 and parts[1] == "gateway":
        return (api.INGRESS, "", raw.node_id)
    if len(parts) == 3:
        return (parts[1], parts[2], "")
    return NOBODY


def _authority_service(authority: str, services: frozenset[str]) -> str:
    host = authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
    return host if host in services else ""


def to_entry(raw: EnvoyAccess, directory: Directory) -> api.AccessEntry:
    """One Envoy entry in mesh terms. Which side logged it (the logger's name) says where
    the source and the destination are read from."""
    me = _me(raw, directory)
    try:
        reporter = api.Reporter(raw.log_name)
    except ValueError:
        reporter = api.Reporter.OUTBOUND
    route = raw.route_name
    if reporter is api.Reporter.INBOUND:
        source, dest = directory.ips.get(raw.downstream_ip, NOBODY), me
        route = ""  # the pod's own listener has one route to its app; the caller's is named
    elif reporter is api.Reporter.INGRESS:
        source = NOBODY  # a client outside the mesh
        service = parse_hop_name(raw.upstream_cluster) or ""
        dest = (service, "", "")
    else:
        source = me
        parsed = parse_cluster_name(raw.upstream_cluster)
        if parsed is not None:
            pod = directory.ips.get(raw.upstream_ip, NOBODY)[2]
            dest = (parsed[0], parsed[1], pod)
        else:  # no route, or no cluster: the name the app called
            dest = (_authority_service(raw.authority, directory.services), "", "")
    return api.AccessEntry(
        time=raw.start,
        reporter=reporter,
        node=raw.node_id,
        source_service=source[0],
        source_version=source[1],
        source_pod=source[2],
        service=dest[0],
        version=dest[1],
        pod=dest[2],
        route=route,
        method=raw.method,
        authority=raw.authority,
        path=raw.path,
        status=raw.status,
        flags=raw.flags,
        duration_ms=raw.duration_ms,
        upstream_ms=raw.upstream_ms,
        bytes_received=raw.bytes_received,
        bytes_sent=raw.bytes_sent,
        request_id=raw.request_id,
        trace_id=trace_id_of(raw.trace_header),
        detail=raw.detail,
        tcp=raw.tcp,
    )


# -- filters --------------------------------------------------------------------------------


def status_problem(status: str | None) -> str | None:
    """None when `status` is a class (`5xx`) or a code (`503`), else why not."""
    if status is None:
        return None
    text = status.lower()
    if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
        return None
    if text.isdigit() and 100 <= int(text) <= 599:
        return None
    return f"status '{status}' is neither a class (2xx, 4xx, 5xx) nor a code (100-599)"


@dataclass(frozen=True, slots=True)
class Filter:
    service: str | None = None
    status: str | None = None
    route: str | None = None
    slower_ms: float | None = None

    def __call__(self, e: api.AccessEntry) -> bool:
        if self.service is not None and self.service not in (e.service, e.source_service):
            return False
        if self.route is not None and e.route != self.route:
            return False
        if self.slower_ms is not None and (
            e.duration_ms is None or e.duration_ms <= self.slower_ms
        ):
            return False
        if self.status is not None:
            if e.status is None:
                return False
            text = self.status.lower()
            if text.endswith("xx"):
                return e.status // 100 == int(text[0])
            return e.status == int(text)
        return True


# -- the ring -------------------------------------------------------------------------------


class AccessLog:
    def __init__(
        self,
        directory: Callable[[], Directory],
        capacity: int = api.ACCESS_CAPACITY,
        backlog: int = BACKLOG_BATCHES,
        decoder: Callable[[str, str, str, Any], list[EnvoyAccess]] = decode,
    ) -> None:
        self._directory = directory
        self._decode = decoder
        self._capacity = capacity
        self._ring: collections.deque[tuple[int, api.AccessEntry]] = collections.deque(
            maxlen=capacity
        )
        self._seq = 0  # the last entry's number: followers read past the one they saw
        self._queue: queue.Queue[tuple[str, str, str, Any] | None] = queue.Queue(backlog)
        self._changed = threading.Condition()
        self._received = 0
        self._evicted = 0
        self._dropped = 0
        self._thread: threading.Thread | None = None

    # -- in

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=1)
            self._thread.join(timeout=2)
            self._thread = None

    def offer(self, node_id: str, node_cluster: str, log_name: str, message: Any) -> None:
        """From the xDS loop: queue one batch, or drop it (counted) when the worker is
        behind. Never blocks."""
        try:
            self._queue.put_nowait((node_id, node_cluster, log_name, message))
        except queue.Full:
            lost = _entries_in(message)
            with self._changed:
                self._dropped += lost

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                raws = self._decode(*item)
                directory = self._directory()
                self.add([to_entry(r, directory) for r in raws])
            except Exception:
                log.exception("an access-log batch could not be read")

    def add(self, entries: list[api.AccessEntry]) -> None:
        if not entries:
            return
        with self._changed:
            for entry in entries:
                if len(self._ring) == self._capacity:
                    self._evicted += 1
                self._seq += 1
                self._ring.append((self._seq, entry))
            self._received += len(entries)
            self._changed.notify_all()

    # -- out

    def counters(self) -> api.AccessCounters:
        with self._changed:
            return api.AccessCounters(
                kept=len(self._ring),
                capacity=self._capacity,
                received=self._received,
                evicted=self._evicted,
                dropped=self._dropped,
            )

    def query(self, keep: Filter, limit: int) -> api.AccessResult:
        with self._changed:
            snapshot = list(self._ring)
        # Envoys send in batches, each on its own stream: arrival order is not time order.
        found = sorted((e for _, e in snapshot if keep(e)), key=lambda e: e.time)
        return api.AccessResult(tuple(found[-limit:] if limit else ()), self.counters())

    def follow(
        self, keep: Filter, tail: int, stop: threading.Event, idle: float = 1.0
    ) -> Iterator[api.AccessEntry | None]:
        """The last `tail` matches, then each new match as it comes; None after `idle`
        seconds with nothing (the API's keepalive), until `stop` is set."""
        with self._changed:
            snapshot = list(self._ring)
            seen = self._seq
        if tail:
            yield from [e for _, e in snapshot if keep(e)][-tail:]
        last_yield = time.monotonic()
        while not stop.is_set():
            with self._changed:
                if self._seq == seen:
                    self._changed.wait(idle)
                # Newest last: the entries past `seen` are the ring's last ones (those a
                # follower more than a ring behind missed are gone).
                k = min(self._seq - seen, len(self._ring))
                fresh = list(itertools.islice(reversed(self._ring), k))
                seen = self._seq
            matches = [e for _, e in reversed(fresh) if keep(e)]
            if matches:
                yield from matches
                last_yield = time.monotonic()
            elif time.monotonic() - last_yield >= idle:
                yield None  # the API's keepalive; it notices a client gone here
                last_yield = time.monotonic()


def _entries_in(message: Any) -> int:
    n = 0
    if message.HasField("http_logs"):
        n += len(message.http_logs.log_entry)
    if message.HasField("tcp_logs"):
        n += len(message.tcp_logs.log_entry)
    return n


def directory_of(
    desired: Desired | None, infos: Mapping[str, ContainerInfo], mesh: Mesh
) -> Directory:
    """The running mesh's directory: each sidecar's node id and each pod's address (the
    pod's namespace owner holds it) to (service, version, pod); the gateway as `INGRESS`."""
    nodes: dict[str, Who] = {}
    ips: dict[str, Who] = {}
    for pod in desired.pods if desired else ():
        who = (pod.service, pod.version, pod.name)
        nodes[pod.node_id] = who
        info = infos.get(pod.name)
        if info is not None and info.ip:
            ips[info.ip] = who
    gateway = desired.gateway if desired else None
    if gateway is not None:
        who = (api.INGRESS, "", gateway.name)
        nodes[gateway.name] = who
        info = infos.get(gateway.name)
        if info is not None and info.ip:
            ips[info.ip] = who
    return Directory(nodes, ips, frozenset(s.name for s in mesh.services))
