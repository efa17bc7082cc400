"""The daemon's access log: what every Envoy's access loggers send, in mesh terms, the
last `ACCESS_CAPACITY` entries kept in memory whoever is (or is not) watching.

Envoy sends a batch per flush per listener kind. The xDS loop only keeps each batch as it
came (`offer`: a count and an append); whole batches make room for newer ones. A batch is
decoded and mapped to `AccessEntry` values (`to_entry`, pure) the first time a reader wants
it: readers filter the ring (`query`) or follow it (`follow`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from devmesh.adapters.access_log_service import Batch, EnvoyAccess, decode
from devmesh.adapters.engine import ContainerInfo
from devmesh.api import types as api
from devmesh.core.model import Mesh
from devmesh.core.problems import clip
from devmesh.envoy.names import parse_cluster_name, parse_hop_name, parse_route_entry_name
from devmesh.plan.desired import Desired

log = logging.getLogger("devmesh.access")
# A follower holds each entry this long and gives what came meanwhile in time order: each
# Envoy flushes its entries every half second (envoy/access_log.py), so a request's lines
# from its caller's and its callee's Envoys come within about one flush of each other (a
# trial saw 73 of 90 followed lines out of order when each wake-up was sorted alone).
REORDER = 1.0

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
    (`Root=1-5759e988-bd86...;Parent=...`); "" when there is none, or when the request was
    not sampled (flags `00`, `Sampled=0`: with `sampling: auto` under load, most are not,
    and no span of theirs exists to open)."""
    if not header:
        return ""
    if header.startswith("Root=") or ";" in header:
        fields = dict(part.strip().partition("=")[::2] for part in header.split(";"))
        return "" if fields.get("Sampled") == "0" else fields.get("Root", "")
    parts = header.split("-")
    if len(parts) < 4 or len(parts[1]) != 32:
        return ""
    try:
        sampled = int(parts[3][:2], 16) & 1
    except ValueError:
        return ""
    return parts[1] if sampled else ""


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
        named = parse_route_entry_name(route)
        if named is not None:
            route = named[1]
        parsed = parse_cluster_name(raw.upstream_cluster)
        if parsed is not None:
            pod = directory.ips.get(raw.upstream_ip, NOBODY)[2]
            dest = (parsed[0], parsed[1], pod)
        elif named is not None:  # routed, but no host was reached (UO, UH): no version
            dest = (named[0], "", "")
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
    return f"status '{clip(status)}' is neither a class (2xx, 4xx, 5xx) nor a code (100-599)"


@dataclass(frozen=True, slots=True)
class Filter:
    service: str | None = None
    status: str | None = None
    route: str | None = None
    slower_ms: float | None = None

    def __call__(self, e: api.AccessEntry) -> bool:
        if (
            self.service is not None
            and self.service not in (e.service, e.source_service)
            # the gateway's public listener's entries come from outside: no source service
            and not (self.service == api.INGRESS and e.reporter is api.Reporter.INGRESS)
        ):
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


@dataclass(slots=True)
class _Batch:
    """One message of an Envoy's access-log stream: kept as Envoy sent it until a reader
    wants its entries (`AccessLog._entries`), then as mesh-term entries."""

    first: int  # the number of its first entry (entries are numbered from 1, in arrival)
    size: int
    raw: tuple[str, str, str, Batch, Directory] | None  # node id, cluster, log name, message
    entries: list[api.AccessEntry] | None = None


class AccessLog:
    """The last `capacity` entries, kept as the batches Envoy sent (whole batches make room
    for newer ones, so between capacity minus one batch and capacity are kept).

    Taking a batch in costs a count and an append on the xDS loop: no decoding there, and
    nothing a request waits for. Entries are decoded and put in mesh terms the first time
    someone reads them (a list, a follower, the TUI's pane), with the directory of the
    moment they came in, and kept decoded: measured on this machine, decoding is about
    100 us an entry, which at 2,000 entries a second would be a fifth of a core spent
    whether or not anybody looks."""

    def __init__(
        self,
        directory: Callable[[], Directory],
        capacity: int = api.ACCESS_CAPACITY,
        decoder: Callable[[str, str, str, Any], list[EnvoyAccess]] = decode,
    ) -> None:
        self._directory = directory
        self._decode = decoder
        self._capacity = capacity
        self._batches: collections.deque[_Batch] = collections.deque()
        self._kept = 0
        self._seq = 0  # the last entry's number: followers read past the one they saw
        self._changed = threading.Condition()
        self._received = 0
        self._evicted = 0
        self._dropped = 0

    # -- in

    def offer(
        self, node_id: str, node_cluster: str, log_name: str, message: Batch, size: int
    ) -> None:
        """From the xDS loop: keep one batch (its bytes, holding `size` entries) as it
        came. Never blocks for long."""
        if not size:
            return
        raw = (node_id, node_cluster, log_name, message, self._directory())
        with self._changed:
            self._batches.append(_Batch(self._seq + 1, size, raw))
            self._seq += size
            self._kept += size
            self._received += size
            while self._kept > self._capacity and len(self._batches) > 1:
                gone = self._batches.popleft()
                self._kept -= gone.size
                self._evicted += gone.size
            self._changed.notify_all()

    def add(self, entries: list[api.AccessEntry]) -> None:
        """Entries already in mesh terms (tests, and anything not from Envoy)."""
        if not entries:
            return
        with self._changed:
            self._batches.append(_Batch(self._seq + 1, len(entries), None, list(entries)))
            self._seq += len(entries)
            self._kept += len(entries)
            self._received += len(entries)
            while self._kept > self._capacity and len(self._batches) > 1:
                gone = self._batches.popleft()
                self._kept -= gone.size
                self._evicted += gone.size
            self._changed.notify_all()

    def _entries(self, batch: _Batch) -> list[api.AccessEntry]:
        """A batch's entries, decoded the first time (outside the lock: two readers may
        both decode one batch, and keep equal results)."""
        if batch.entries is not None:
            return batch.entries
        raw = batch.raw
        if raw is None:
            return []
        node_id, cluster, log_name, message, directory = raw
        try:
            decoded = [
                to_entry(r, directory) for r in self._decode(node_id, cluster, log_name, message)
            ]
        except Exception:
            log.exception("an access-log batch could not be read")
            decoded = []
        with self._changed:
            if batch.raw is not None:  # the first reader to finish: counts what was left out
                self._dropped += max(0, batch.size - len(decoded))
                batch.entries, batch.raw = decoded, None
        return decoded

    # -- out

    def counters(self) -> api.AccessCounters:
        with self._changed:
            return api.AccessCounters(
                kept=self._kept,
                capacity=self._capacity,
                received=self._received,
                evicted=self._evicted,
                dropped=self._dropped,
            )

    def query(self, keep: Filter, limit: int) -> api.AccessResult:
        with self._changed:
            batches = list(self._batches)
        found = [e for b in batches for e in self._entries(b) if keep(e)]
        # Envoys send in batches, each on its own stream: arrival order is not time order.
        found.sort(key=lambda e: e.time)
        return api.AccessResult(tuple(found[-limit:] if limit else ()), self.counters())

    def follow(
        self,
        keep: Filter,
        tail: int,
        stop: threading.Event,
        idle: float = 1.0,
        reorder: float = REORDER,
    ) -> Iterator[api.AccessEntry | None]:
        """The last `tail` matches, then each new match as it comes: held `reorder` seconds,
        then given in time order with every match held that began before it; None after
        `idle` seconds with nothing (the API's keepalive), until `stop` is set."""
        with self._changed:
            batches = list(self._batches)
            seen = self._seq
        if tail:  # in time order, as `query` gives them
            backlog = [e for b in batches for e in self._entries(b) if keep(e)]
            backlog.sort(key=lambda e: e.time)
            yield from backlog[-tail:]
        held: list[tuple[float, api.AccessEntry]] = []  # (when it came, entry), oldest first
        last_yield = time.monotonic()
        while not stop.is_set():
            with self._changed:
                if self._seq == seen:
                    due_in = held[0][0] + reorder - time.monotonic() if held else idle
                    self._changed.wait(max(0.0, min(idle, due_in)))
                # Newest last: the batches past `seen` are the last ones (those a follower
                # more than a whole ring behind missed are gone).
                fresh = []
                for b in reversed(self._batches):
                    if b.first + b.size - 1 <= seen:
                        break
                    fresh.append(b)
                seen = self._seq
            now = time.monotonic()
            held += [(now, e) for b in reversed(fresh) for e in self._entries(b) if keep(e)]
            due = [e for came, e in held if now - came >= reorder]
            if due:
                # and what came since but began before them: a slower Envoy's lines
                cutoff = max(e.time for e in due)
                out = sorted((e for _, e in held if e.time <= cutoff), key=lambda e: e.time)
                held = [(came, e) for came, e in held if e.time > cutoff]
                yield from out
                last_yield = time.monotonic()
            elif now - last_yield >= idle:
                yield None  # the API's keepalive; it notices a client gone here
                last_yield = now


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
