"""The daemon's Aggregated Discovery Service: xDS v3, state of the world, over a UNIX socket.

Every sidecar's Envoy opens one ADS stream. Snapshots are keyed by Envoy's node *cluster*
(all replicas of one version share a configuration); status is kept per node *id* (each
Envoy has its own). One snapshot holds one node group's `Resources`, already converted to
packed protobuf, with one version per resource type: a stable hash of that type's dicts.

Protocol, as Envoy speaks it (SotW):
- A request with an empty `response_nonce` opens a subscription for its type: answer it.
- A request whose nonce is the last one sent for its type is an ACK of `version_info`, or a
  NACK when it carries `error_detail` (then `version_info` is the version Envoy kept).
- A request with an older nonce answers a response that has since been superseded: ignore it.
- LDS and CDS are wildcard: every resource of the type. RDS and EDS return the resources named
  in the latest request; an unknown name is left out.
- A rejected version is never sent again on its own: only a new snapshot version is pushed.

Threads: grpc's sync server runs each stream's handler on a pool thread for as long as the
stream is open, so `max_workers` must cover every sidecar plus a margin. Each stream also has
a reader thread feeding its requests into the stream's event queue; `set_snapshot` puts a
wake-up on the same queue, so one loop answers both.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import queue
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

# types-protobuf may or may not be installed; `unused-ignore` keeps strict mypy quiet either way.
from google.protobuf import any_pb2, json_format  # type: ignore[import-untyped,unused-ignore]

from devmesh.adapters.xds_types import CLUSTER, ENDPOINT, LISTENER, ROUTE, to_proto
from devmesh.core.problems import MeshError
from devmesh.envoy.resources import Json, Resources

log = logging.getLogger("devmesh.xds")

# Make before break: clusters and their endpoints before the listeners and routes that use them.
PUSH_ORDER: Final = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
WILDCARD: Final = frozenset({LISTENER, CLUSTER})  # SotW: these always carry every resource
_NAME_KEY: Final = {LISTENER: "name", ROUTE: "name", CLUSTER: "name", ENDPOINT: "cluster_name"}


class SnapshotError(MeshError):
    """A snapshot that cannot be served: a field Envoy's API lacks, or a duplicate name."""


# -- values ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Nack:
    type_url: str
    version_rejected: str  # what we sent
    message: str  # Envoy's words; they contain protobuf debug markers, show them, do not parse
    version_kept: str = ""  # what Envoy runs instead (its request's version_info)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: str
    cluster: str
    connected: bool
    acked: dict[str, str]  # type_url -> version Envoy ACKed
    sent: dict[str, str]  # type_url -> version last sent
    nack: Nack | None
    nonces: dict[str, str] = field(default_factory=dict)  # type_url -> nonce last sent
    responses: dict[str, int] = field(default_factory=dict)  # type_url -> responses sent


@dataclass(frozen=True, slots=True)
class _TypeSnapshot:
    version: str
    packed: Mapping[str, Any]  # resource name -> google.protobuf.Any, in the snapshot's order


@dataclass(frozen=True, slots=True)
class _Snapshot:
    types: Mapping[str, _TypeSnapshot]
    # The RDS / EDS names the snapshot's listeners and clusters refer to: what a node must
    # have requested, been sent and ACKed before it counts as synced.
    references: Mapping[str, frozenset[str]]


class _PackCache:
    """Resource JSON digest -> packed protobuf. Callers share most resources (every caller
    of a service gets the same route config) and a push changes few of them, so parsing
    each distinct resource once, not once per node group per push, is most of the work
    saved: measured on 20 services, 62 % of a save's time was ParseDict of unchanged ones."""

    def __init__(self, limit: int = 20_000) -> None:
        self._items: dict[str, Any] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, digest: str) -> Any | None:
        with self._lock:
            return self._items.get(digest)

    def put(self, digest: str, packed: Any) -> None:
        with self._lock:
            if len(self._items) >= self._limit:
                self._items.clear()  # crude, and rare: a mesh has far fewer resources
            self._items[digest] = packed


def _digest(item: Json) -> str:
    text = json.dumps(item, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _versions_of(resources: Resources) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Each type's version (from its resources' digests, in order), and the digests."""
    digests: dict[str, list[str]] = {}
    versions: dict[str, str] = {}
    for type_url, items in _by_type(resources).items():
        digests[type_url] = [_digest(item) for item in items]
        joined = ",".join(digests[type_url])
        versions[type_url] = hashlib.sha256(joined.encode()).hexdigest()[:16]
    return versions, digests


def _by_type(resources: Resources) -> dict[str, Sequence[Json]]:
    return {
        LISTENER: resources.listeners,
        ROUTE: resources.routes,
        CLUSTER: resources.clusters,
        ENDPOINT: resources.endpoints,
    }


def _build_snapshot(
    cluster: str,
    resources: Resources,
    cache: _PackCache | None = None,
    computed: tuple[dict[str, str], dict[str, list[str]]] | None = None,
) -> _Snapshot:
    versions, digests = computed or _versions_of(resources)
    types: dict[str, _TypeSnapshot] = {}
    for type_url, items in _by_type(resources).items():
        packed: dict[str, Any] = {}
        for item, digest in zip(items, digests[type_url], strict=True):
            name = str(item.get(_NAME_KEY[type_url], ""))
            if name in packed:
                raise SnapshotError(f"{cluster}: two {_short(type_url)} resources named {name!r}")
            any_message = cache.get(digest) if cache is not None else None
            if any_message is None:
                try:
                    message = to_proto(type_url, item)
                except json_format.ParseError as e:
                    raise SnapshotError(f"{cluster}: {_short(type_url)} {name!r}: {e}") from e
                any_message = any_pb2.Any()
                any_message.Pack(message)
                if cache is not None:
                    cache.put(digest, any_message)
            packed[name] = any_message
        types[type_url] = _TypeSnapshot(versions[type_url], packed)
    references = {
        ROUTE: frozenset(_rds_names(list(resources.listeners))),
        ENDPOINT: frozenset(_eds_names(resources.clusters)),
    }
    for type_url, names in references.items():
        missing = sorted(names - types[type_url].packed.keys())
        if missing:
            # Envoy would wait for these forever (a listener or cluster stuck warming).
            log.warning(
                "%s: %s names missing from the snapshot: %s", cluster, _short(type_url), missing
            )
    return _Snapshot(types, references)


def _rds_names(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        rds = node.get("rds")
        if isinstance(rds, dict) and "route_config_name" in rds:
            yield str(rds["route_config_name"])
        for value in node.values():
            yield from _rds_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _rds_names(value)


def _eds_names(clusters: Iterable[Json]) -> Iterator[str]:
    for c in clusters:
        if c.get("type") == "EDS":
            yield str(c.get("eds_cluster_config", {}).get("service_name") or c["name"])


def _short(type_url: str) -> str:
    return {LISTENER: "LDS", ROUTE: "RDS", CLUSTER: "CDS", ENDPOINT: "EDS"}.get(type_url, type_url)


# -- per-stream and per-node state ----------------------------------------------------------


class _Closed:
    """Stream event: the client went away or the server is stopping."""


class _Wake:
    """Stream event: the snapshot of the stream's node cluster changed."""


_CLOSED: Final = _Closed()
_WAKE: Final = _Wake()
_Event = Any  # a DiscoveryRequest, _WAKE or _CLOSED (DiscoveryRequest has no type stubs)


@dataclass(slots=True)
class _Stream:
    """Owned by its handler thread; only `events` and `cluster` are touched by others."""

    id: int
    events: queue.SimpleQueue[_Event] = field(default_factory=queue.SimpleQueue)
    node_id: str = ""
    cluster: str = ""  # set under the server lock: set_snapshot reads it
    requested: dict[str, frozenset[str]] = field(default_factory=dict)  # type -> names
    sent_version: dict[str, str] = field(default_factory=dict)
    sent_names: dict[str, frozenset[str]] = field(default_factory=dict)
    nonce: dict[str, str] = field(default_factory=dict)

    def subscribed(self, type_url: str) -> bool:
        names = self.requested.get(type_url)
        # An RDS/EDS request naming nothing unsubscribes (LDS/CDS with no names: wildcard).
        return names is not None and (type_url in WILDCARD or bool(names))


@dataclass(slots=True)
class _Node:
    """What the server knows of one Envoy; guarded by the server lock."""

    cluster: str
    stream_id: int  # the stream that owns this status (a reconnect replaces it)
    connected: bool = True
    acked: dict[str, str] = field(default_factory=dict)
    acked_nonce: dict[str, str] = field(default_factory=dict)
    sent: dict[str, str] = field(default_factory=dict)
    sent_names: dict[str, frozenset[str]] = field(default_factory=dict)
    nonces: dict[str, str] = field(default_factory=dict)
    responses: dict[str, int] = field(default_factory=dict)
    nack: Nack | None = None

    def status(self, node_id: str) -> NodeStatus:
        return NodeStatus(
            node_id=node_id,
            cluster=self.cluster,
            connected=self.connected,
            acked=dict(self.acked),
            sent=dict(self.sent),
            nack=self.nack,
            nonces=dict(self.nonces),
            responses=dict(self.responses),
        )


# -- the server -----------------------------------------------------------------------------


class XdsServer:
    """ADS over `unix:<socket_path>`. Size `max_workers` to the number of sidecars + a margin:
    each open stream holds one worker thread for its whole life."""

    def __init__(self, socket_path: str | os.PathLike[str], max_workers: int = 32) -> None:
        self.socket_path = Path(socket_path)
        self.max_workers = max_workers
        self._lock = threading.Condition()
        self._snapshots: dict[str, _Snapshot] = {}
        self._nodes: dict[str, _Node] = {}
        self._streams: dict[int, _Stream] = {}
        self._stream_ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._stopping = False
        self._executor: futures.ThreadPoolExecutor | None = None
        self._server: Any = None
        self._readers: list[threading.Thread] = []
        self._cache = _PackCache()

    # -- lifecycle

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("XdsServer already started")
        if self.socket_path.is_socket():
            self.socket_path.unlink()  # left by a server that did not stop cleanly
        self._stopping = False
        self._executor = futures.ThreadPoolExecutor(
            max_workers=self.max_workers, thread_name_prefix="xds-stream"
        )
        server = grpc.server(self._executor)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), server)
        if server.add_insecure_port(f"unix:{self.socket_path}") == 0:
            raise MeshError(f"cannot listen on unix:{self.socket_path}")
        server.start()
        # grpc binds with the process umask; only the daemon's user (and the sidecars it
        # bind-mounts the socket into, running as that user) may talk to the control plane.
        os.chmod(self.socket_path, stat.S_IRUSR | stat.S_IWUSR)
        self._server = server
        log.info("xDS server listening on unix:%s (%d workers)", self.socket_path, self.max_workers)

    def stop(self, grace: float = 1.0) -> None:
        """Stop accepting streams, end the open ones, and wait for every thread to finish."""
        server, executor = self._server, self._executor
        if server is None or executor is None:
            return
        done = server.stop(grace)  # refuses new streams now; cancels the rest after `grace`
        with self._lock:
            self._stopping = True
            for stream in self._streams.values():
                stream.events.put(_CLOSED)
        done.wait()
        executor.shutdown(wait=True)
        with self._lock:
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.join(timeout=grace + 1.0)
        self._server = self._executor = None
        log.info("xDS server stopped")

    # -- snapshots

    def set_snapshot(self, cluster: str, resources: Resources) -> None:
        """Set what every Envoy of node cluster `cluster` gets. Raises SnapshotError, keeping
        the previous snapshot, if a resource does not parse as its Envoy type."""
        computed = _versions_of(resources)
        with self._lock:
            old = self._snapshots.get(cluster)
            if old is not None and _versions(old) == computed[0]:
                return  # identical: nothing to parse, nothing to push
        # Outside the lock: parsing what is new is the slow part.
        snapshot = _build_snapshot(cluster, resources, self._cache, computed)
        with self._lock:
            old = self._snapshots.get(cluster)
            if old is not None and _versions(old) == _versions(snapshot):
                return  # identical: nothing to push
            self._snapshots[cluster] = snapshot
            log.debug("snapshot %s: %s", cluster, _versions(snapshot))
            self._wake(cluster)

    def remove_snapshot(self, cluster: str) -> None:
        """Forget a node group's config. Its Envoys keep what they have; nothing is pushed."""
        with self._lock:
            self._snapshots.pop(cluster, None)
            self._lock.notify_all()

    def _wake(self, cluster: str) -> None:
        for stream in self._streams.values():
            if stream.cluster == cluster:
                stream.events.put(_WAKE)
        self._lock.notify_all()

    # -- status

    def status(self, node_id: str) -> NodeStatus:
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None:
                raise KeyError(f"no Envoy with node id {node_id!r} has connected")
            return node.status(node_id)

    def statuses(self) -> list[NodeStatus]:
        with self._lock:
            return [node.status(node_id) for node_id, node in sorted(self._nodes.items())]

    def is_synced(self, node_id: str) -> bool:
        with self._lock:
            return self._synced(node_id)

    def wait_synced(self, node_ids: Iterable[str], timeout: float) -> bool:
        """Block until every node has ACKed its group's current snapshot, or `timeout`."""
        wanted = tuple(node_ids)
        with self._lock:
            return self._lock.wait_for(lambda: all(self._synced(n) for n in wanted), timeout)

    def _synced(self, node_id: str) -> bool:
        """Connected, LDS and CDS sent, and the last response of every type sent is ACKed at
        the group's current version. RDS/EDS must also have covered every name the listeners
        and clusters refer to: when a snapshot adds a cluster, the EDS push that follows the
        CDS push still carries the old names, and Envoy ACKs it at the new version before its
        request for the new cluster's endpoints is answered; "all sent is ACKed" alone would
        be true too early there."""
        node = self._nodes.get(node_id)
        if node is None or not node.connected:
            return False
        snapshot = self._snapshots.get(node.cluster)
        if snapshot is None or LISTENER not in node.sent or CLUSTER not in node.sent:
            return False
        for type_url, version in node.sent.items():
            if version != snapshot.types[type_url].version:
                return False
            if node.acked_nonce.get(type_url) != node.nonces.get(type_url):
                return False
        for type_url, names in snapshot.references.items():
            if names and not names <= node.sent_names.get(type_url, frozenset()):
                return False
        return True

    # -- one stream

    def stream(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        stream = _Stream(next(self._stream_ids))
        with self._lock:
            if self._stopping:
                return
            self._streams[stream.id] = stream
            if len(self._streams) >= self.max_workers:
                # grpc queues a stream that finds no free worker: that Envoy gets no config
                # until another stream ends. Say so now, while it is the last one that fits.
                log.warning("all %d xDS workers hold a stream; raise max_workers", self.max_workers)
        context.add_callback(lambda: stream.events.put(_CLOSED))
        reader = threading.Thread(
            target=_read, args=(requests, stream), name=f"xds-read-{stream.id}", daemon=True
        )
        with self._lock:
            self._readers = [t for t in self._readers if t.is_alive()]
            self._readers.append(reader)
        reader.start()
        try:
            while True:
                event = stream.events.get()
                if event is _CLOSED:
                    return
                if event is _WAKE:
                    yield from self._on_snapshot(stream)
                else:
                    yield from self._on_request(stream, event)
        finally:
            self._close(stream)

    def _on_request(self, stream: _Stream, request: Any) -> list[Any]:
        if not stream.node_id:
            if not request.HasField("node") or not request.node.id:
                log.warning("stream %d: first request carries no node id; ignored", stream.id)
                return []
            self._open(stream, request.node.id, request.node.cluster)
        type_url: str = request.type_url
        if type_url not in _NAME_KEY:
            log.warning("%s: unknown type %s; ignored", stream.node_id, type_url)
            return []
        nonce: str = request.response_nonce
        if nonce and nonce != stream.nonce.get(type_url):
            # Answers a response we have since superseded; the newer one will be answered too.
            log.debug("%s: %s stale nonce %s", stream.node_id, _short(type_url), nonce)
            return []
        if nonce:
            self._record_answer(stream, request)
        names = frozenset(request.resource_names)
        stream.requested[type_url] = names
        with self._lock:
            snapshot = self._snapshots.get(stream.cluster)
        if snapshot is None or not stream.subscribed(type_url):
            return []  # no config for this group yet: the stream waits for set_snapshot
        if (
            not nonce  # a new subscription on this stream
            or stream.sent_version.get(type_url) != snapshot.types[type_url].version
            or (type_url not in WILDCARD and names != stream.sent_names.get(type_url))
        ):
            return [self._response(stream, type_url, snapshot)]
        return []

    def _on_snapshot(self, stream: _Stream) -> list[Any]:
        with self._lock:
            snapshot = self._snapshots.get(stream.cluster)
        if snapshot is None:
            return []
        return [
            self._response(stream, type_url, snapshot)
            for type_url in PUSH_ORDER
            if stream.subscribed(type_url)
            and stream.sent_version.get(type_url) != snapshot.types[type_url].version
        ]

    def _response(self, stream: _Stream, type_url: str, snapshot: _Snapshot) -> Any:
        typed = snapshot.types[type_url]
        names = stream.requested[type_url]
        if type_url in WILDCARD:
            resources = list(typed.packed.values())
        else:
            resources = [message for name, message in typed.packed.items() if name in names]
        nonce = str(next(self._nonces))
        stream.sent_version[type_url] = typed.version
        stream.sent_names[type_url] = names
        stream.nonce[type_url] = nonce
        with self._lock:
            node = self._owned_node(stream)
            if node is not None:
                node.sent[type_url] = typed.version
                node.sent_names[type_url] = names
                node.nonces[type_url] = nonce
                node.responses[type_url] = node.responses.get(type_url, 0) + 1
                self._lock.notify_all()
        log.debug(
            "%s: push %s %s (%d resources, nonce %s)",
            stream.node_id,
            _short(type_url),
            typed.version,
            len(resources),
            nonce,
        )
        return discovery_pb2.DiscoveryResponse(
            version_info=typed.version, resources=resources, type_url=type_url, nonce=nonce
        )

    def _record_answer(self, stream: _Stream, request: Any) -> None:
        type_url: str = request.type_url
        sent = stream.sent_version.get(type_url, "")
        with self._lock:
            node = self._owned_node(stream)
            if node is None:
                return
            if request.HasField("error_detail"):
                message: str = request.error_detail.message
                node.nack = Nack(type_url, sent, message, request.version_info)
                log.warning(
                    "%s rejected %s %s, keeps %s: %s",
                    stream.node_id,
                    _short(type_url),
                    sent,
                    request.version_info or "nothing",
                    message,
                )
            else:
                node.acked[type_url] = request.version_info
                node.acked_nonce[type_url] = request.response_nonce
                if node.nack is not None and node.nack.type_url == type_url:
                    node.nack = None
                log.debug("%s: ACK %s %s", stream.node_id, _short(type_url), request.version_info)
            self._lock.notify_all()

    def _open(self, stream: _Stream, node_id: str, cluster: str) -> None:
        with self._lock:
            stream.node_id = node_id
            stream.cluster = cluster
            # A reconnect starts a fresh status: versions are per stream in SotW.
            self._nodes[node_id] = _Node(cluster=cluster, stream_id=stream.id)
            self._lock.notify_all()
        log.info("%s (%s) connected", node_id, cluster)

    def _close(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.pop(stream.id, None)
            node = self._owned_node(stream)
            if node is not None:
                node.connected = False
            self._lock.notify_all()
        if stream.node_id:
            log.info("%s disconnected", stream.node_id)

    def _owned_node(self, stream: _Stream) -> _Node | None:
        """The node's status, unless a newer stream of the same node id has taken it over."""
        node = self._nodes.get(stream.node_id)
        return node if node is not None and node.stream_id == stream.id else None


def _versions(snapshot: _Snapshot) -> dict[str, str]:
    return {type_url: typed.version for type_url, typed in snapshot.types.items()}


def _read(requests: Iterator[Any], stream: _Stream) -> None:
    """Feed a stream's requests into its event queue until the client or the server ends it."""
    try:
        for request in requests:
            stream.events.put(request)
    except grpc.RpcError:
        pass  # cancelled: the client went away or the server stopped
    except Exception:
        log.exception("stream %d: reading requests failed", stream.id)
    finally:
        stream.events.put(_CLOSED)


class _Servicer:
    """The grpc-facing methods; not a subclass of the generated servicer (it is untyped)."""

    def __init__(self, server: XdsServer) -> None:
        self._server = server

    def StreamAggregatedResources(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        return self._server.stream(requests, context)

    def DeltaAggregatedResources(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        # devmesh's bootstraps ask for state of the world (api_type GRPC), never delta.
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "devmesh serves state-of-the-world ADS only")
        return iter(())
