"""The daemon's Aggregated Discovery Service: xDS v3, state of the world, over a UNIX socket.

render → snapshot → cache → server, as go-control-plane does it: `devmesh.envoy.render`
renders the whole mesh, `devmesh.envoy.snapshot` makes checked snapshots of it, the
`SnapshotCache` (`xds_cache`) holds them and every Envoy's status, and this module only
serves streams from the cache. Snapshots are keyed by Envoy's node *cluster* (the node
group: all replicas of one version share a configuration); status is kept per node *id*.

Protocol, as Envoy speaks it (SotW), in `SotwStream`, which does no I/O:
- A request with an empty `response_nonce` opens a subscription for its type: answer it.
- A request whose nonce is the last one sent for its type is an ACK of `version_info`, or a
  NACK when it carries `error_detail` (then `version_info` is the version Envoy kept).
- A request with an older nonce answers a response that has since been superseded: ignore it.
- LDS and CDS are wildcard: every resource of the type. RDS and EDS return the resources named
  in the latest request; an unknown name is left out.
- A rejected version is never sent again on its own: only a new snapshot version is pushed.

Threads: grpc's sync server runs each stream's handler on a pool thread for as long as the
stream is open, so `max_workers` must cover every sidecar plus a margin. Each stream also has
a reader thread feeding its requests into the stream's event queue; the cache's wake-up for
the stream's group puts on the same queue, so one loop answers both.

Why threads and not grpc.aio: measured with bench/xds_server.py (30 and 100 ADS streams over
this UNIX socket, one route change pushed to every stream), see WHY_THREADS below.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from devmesh.adapters.xds_cache import Nack, NodeStatus, Served, SnapshotCache
from devmesh.adapters.xds_types import CLUSTER, ENDPOINT, LISTENER, ROUTE
from devmesh.core.problems import MeshError
from devmesh.envoy.resources import Resources
from devmesh.envoy.snapshot import NAME_KEY, SHORT, Snapshot, SnapshotError, new_snapshot

__all__ = ["Nack", "NodeStatus", "SnapshotCache", "SnapshotError", "SotwStream", "XdsServer"]

log = logging.getLogger("devmesh.xds")

# Make before break: clusters and their endpoints before the listeners and routes that use them.
PUSH_ORDER: Final = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
WILDCARD: Final = frozenset({LISTENER, CLUSTER})  # SotW: these always carry every resource
_NONCES: Final = itertools.count(1)  # unique across streams and server restarts in a process


# -- one stream's protocol, without I/O -----------------------------------------------------


class SotwStream:
    """One ADS stream's state of the world: requests and wake-ups in, responses out.

    The transport (the thread server here, or an asyncio one) feeds it each DiscoveryRequest
    (`on_request`) and each wake-up the cache sends (`on_wake`) from one task at a time, and
    writes the responses it returns in order; `close` when the stream ends."""

    def __init__(self, cache: SnapshotCache, wake: Callable[[], None]) -> None:
        self._cache = cache
        self._wake = wake
        self.stream_id = 0  # the cache's, once the first request names the node
        self.node_id = ""
        self.group = ""
        self._requested: dict[str, frozenset[str]] = {}  # type -> names
        self._sent_version: dict[str, str] = {}
        self._sent_names: dict[str, frozenset[str]] = {}
        self._nonce: dict[str, str] = {}

    def _subscribed(self, type_url: str) -> bool:
        names = self._requested.get(type_url)
        # An RDS/EDS request naming nothing unsubscribes (LDS/CDS with no names: wildcard).
        return names is not None and (type_url in WILDCARD or bool(names))

    def on_request(self, request: Any) -> list[Any]:
        if not self.stream_id:
            if not request.HasField("node") or not request.node.id:
                log.warning("a stream's first request carries no node id; ignored")
                return []
            self.node_id, self.group = request.node.id, request.node.cluster
            self.stream_id = self._cache.open_stream(self.node_id, self.group, self._wake)
        type_url: str = request.type_url
        if type_url not in NAME_KEY:
            log.warning("%s: unknown type %s; ignored", self.node_id, type_url)
            return []
        nonce: str = request.response_nonce
        if nonce and nonce != self._nonce.get(type_url):
            # Answers a response we have since superseded; the newer one will be answered too.
            log.debug("%s: %s stale nonce %s", self.node_id, SHORT[type_url], nonce)
            return []
        if nonce:
            self._record_answer(request)
        names = frozenset(request.resource_names)
        self._requested[type_url] = names
        served = self._cache.served(self.group)
        if served is None or not self._subscribed(type_url):
            return []  # no config for this group yet: the stream waits for a snapshot
        if (
            not nonce  # a new subscription on this stream
            or self._sent_version.get(type_url) != served.types[type_url].version
            or (type_url not in WILDCARD and names != self._sent_names.get(type_url))
        ):
            return [self._response(type_url, served)]
        return []

    def on_wake(self) -> list[Any]:
        served = self._cache.served(self.group) if self.stream_id else None
        if served is None:
            return []
        return [
            self._response(type_url, served)
            for type_url in PUSH_ORDER
            if self._subscribed(type_url)
            and self._sent_version.get(type_url) != served.types[type_url].version
        ]

    def close(self) -> None:
        if self.stream_id:
            self._cache.close_stream(self.stream_id)

    def _response(self, type_url: str, served: Served) -> Any:
        typed = served.types[type_url]
        names = self._requested[type_url]
        if type_url in WILDCARD:
            resources = list(typed.packed.values())
        else:
            resources = [message for name, message in typed.packed.items() if name in names]
        nonce = str(next(_NONCES))
        self._sent_version[type_url] = typed.version
        self._sent_names[type_url] = names
        self._nonce[type_url] = nonce
        self._cache.record_sent(self.stream_id, type_url, typed.version, names, nonce)
        log.debug(
            "%s: push %s %s (%d resources, nonce %s)",
            self.node_id,
            SHORT[type_url],
            typed.version,
            len(resources),
            nonce,
        )
        return discovery_pb2.DiscoveryResponse(
            version_info=typed.version, resources=resources, type_url=type_url, nonce=nonce
        )

    def _record_answer(self, request: Any) -> None:
        type_url: str = request.type_url
        if request.HasField("error_detail"):
            sent = self._sent_version.get(type_url, "")
            message: str = request.error_detail.message
            self._cache.record_nack(
                self.stream_id, Nack(type_url, sent, message, request.version_info)
            )
            log.warning(
                "%s rejected %s %s, keeps %s: %s",
                self.node_id,
                SHORT[type_url],
                sent,
                request.version_info or "nothing",
                message,
            )
        else:
            self._cache.record_ack(
                self.stream_id, type_url, request.version_info, request.response_nonce
            )
            log.debug("%s: ACK %s %s", self.node_id, SHORT[type_url], request.version_info)


# -- the thread server ----------------------------------------------------------------------


class _Closed:
    """Stream event: the client went away or the server is stopping."""


class _Wake:
    """Stream event: the snapshot of the stream's node group changed."""


_CLOSED: Final = _Closed()
_WAKE: Final = _Wake()
_Event = Any  # a DiscoveryRequest, _WAKE or _CLOSED (DiscoveryRequest has no type stubs)


@dataclass(slots=True)
class _Stream:
    id: int
    events: queue.SimpleQueue[_Event] = field(default_factory=queue.SimpleQueue)


class XdsServer:
    """ADS over `unix:<socket_path>`, serving `cache`'s snapshots (a new cache if none is
    given). Size `max_workers` to the number of sidecars + a margin: each open stream holds
    one worker thread for its whole life.

    The snapshot and status methods are shortcuts to the cache, kept for callers that set
    one group at a time; the whole mesh goes in with `cache.set_snapshots`."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        max_workers: int = 32,
        cache: SnapshotCache | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.max_workers = max_workers
        self.cache = cache if cache is not None else SnapshotCache()
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._stream_ids = itertools.count(1)
        self._stopping = False
        self._executor: futures.ThreadPoolExecutor | None = None
        self._server: Any = None
        self._readers: list[threading.Thread] = []

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

    # -- shortcuts to the cache (the daemon's calls before set_snapshots)

    def set_snapshots(self, snapshots: Mapping[str, Snapshot]) -> frozenset[str]:
        return self.cache.set_snapshots(snapshots)

    def set_snapshot(self, cluster: str, resources: Resources) -> None:
        """Set what every Envoy of node group `cluster` gets. Raises SnapshotError, keeping
        the previous snapshot, if the resources are inconsistent or do not parse."""
        self.cache.set_snapshot(cluster, new_snapshot(resources, cluster))

    def remove_snapshot(self, cluster: str) -> None:
        self.cache.remove_snapshot(cluster)

    def status(self, node_id: str) -> NodeStatus:
        return self.cache.status(node_id)

    def statuses(self) -> list[NodeStatus]:
        return self.cache.statuses()

    def is_synced(self, node_id: str) -> bool:
        return self.cache.is_synced(node_id)

    def wait_synced(self, node_ids: Iterable[str], timeout: float) -> bool:
        return self.cache.wait_synced(node_ids, timeout)

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
        sotw = SotwStream(self.cache, lambda: stream.events.put(_WAKE))
        try:
            while True:
                event = stream.events.get()
                if event is _CLOSED:
                    return
                if event is _WAKE:
                    yield from sotw.on_wake()
                else:
                    yield from sotw.on_request(event)
        finally:
            sotw.close()
            with self._lock:
                self._streams.pop(stream.id, None)


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
