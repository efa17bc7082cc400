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
- A second request with the nonce already answered asks again: answer it, even unchanged.
  Envoy does so when it replaces a cluster (a new transport socket, new limits): the new
  cluster warms until its endpoints come, and the server must send them although neither
  their version nor their names changed (the xDS protocol's "resource warming"). Left
  unanswered, the old cluster serves on until the 15 s initial-fetch timeout.
- An RDS/EDS/SDS request naming nothing ends that subscription, even with a stale nonce
  (Envoy answers no response of a type it no longer watches): the node's status forgets the
  type, else a node that stopped using secrets (TLS turned off) never counts as synced.
- LDS and CDS are wildcard: every resource of the type. RDS and EDS return the resources named
  in the latest request; an unknown name is left out.
- A rejected version is never sent again on its own: only a new snapshot version is pushed.

Transport: grpc.aio on an event loop of its own (why: `XdsServer`'s docstring). Each stream
is a coroutine reading its events from one queue: its requests (fed by a reader task) and the
cache's wake-ups for its group, so one loop answers both, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import os
import stat
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from devmesh.adapters.xds_cache import Nack, NodeStatus, Served, SnapshotCache
from devmesh.adapters.xds_types import CLUSTER, ENDPOINT, LISTENER, ROUTE, RUNTIME, SECRET
from devmesh.core.problems import MeshError
from devmesh.envoy.resources import Resources
from devmesh.envoy.snapshot import NAME_KEY, SHORT, Snapshot, SnapshotError, new_snapshot
from devmesh.plan.desired import PROXY_UID

__all__ = ["Nack", "NodeStatus", "SnapshotCache", "SnapshotError", "SotwStream", "XdsServer"]

log = logging.getLogger("devmesh.xds")

# Make before break: secrets, clusters and their endpoints before the listeners and routes
# that use them (a certificate's rotation changes SDS alone). The runtime layer refers to
# nothing and nothing refers to it: first.
PUSH_ORDER: Final = (RUNTIME, SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)
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
        self._answered: dict[str, str] = {}  # type -> the nonce whose ACK or NACK came
        self._nacked: set[str] = set()  # types whose last answer was a NACK

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
            # Answers a response we have since superseded; the newer one will be answered too
            # unless this request ends the subscription: Envoy answers nothing of a type it
            # no longer watches, so the end is taken from here.
            log.debug("%s: %s stale nonce %s", self.node_id, SHORT[type_url], nonce)
            if type_url not in WILDCARD and not request.resource_names:
                self._unsubscribe(type_url)
            return []
        again = bool(nonce) and self._answered.get(type_url) == nonce
        if nonce and not again:
            self._record_answer(request)
            self._answered[type_url] = nonce
            if request.HasField("error_detail"):
                self._nacked.add(type_url)
            else:
                self._nacked.discard(type_url)
        names = frozenset(request.resource_names)
        self._requested[type_url] = names
        if not self._subscribed(type_url):
            self._unsubscribe(type_url)
            return []
        served = self._cache.served(self.group)
        if served is None:
            return []  # no config for this group yet: the stream waits for a snapshot
        if (
            not nonce  # a new subscription on this stream
            # asked again (a replaced cluster warming): answer even unchanged, but a
            # rejected version is not sent again (a newer one is, by the version check)
            or (again and type_url not in self._nacked)
            or self._sent_version.get(type_url) != served.types[type_url].version
            or (type_url not in WILDCARD and names != self._sent_names.get(type_url))
        ):
            return [self._response(type_url, served)]
        return []

    def _unsubscribe(self, type_url: str) -> None:
        """Envoy watches none of this type (RDS/EDS/SDS) any more: nothing of it is owed."""
        self._requested[type_url] = frozenset()
        if type_url in self._sent_version:
            self._sent_version.pop(type_url)
            self._sent_names.pop(type_url, None)
            self._cache.record_unsubscribed(self.stream_id, type_url)

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


# -- transport tcp: the listener and its token -----------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpListen:
    """Transport tcp: also listen on `host:port` (127.0.0.1, or the mesh network's own
    gateway; port 0: any free one), and refuse every call that does not carry `token`
    as `authorization: Bearer TOKEN` (UNAUTHENTICATED)."""

    host: str
    port: int
    token: str


class TokenCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every call on every port (ADS with SDS, access logs, spans, stats) must carry the
    mesh's token; others end at once with UNAUTHENTICATED, before any handler runs."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        given = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value if isinstance(value, str) else value.decode(errors="replace")
        if hmac.compare_digest(given.encode(), self._expected):
            return await continuation(details)
        log.warning("refused a call to %s: no or a wrong token", details.method)
        handler = await continuation(details)
        return _refusal(handler)


def _refusal(handler: Any) -> Any:
    """A handler of the same kind as `handler` that ends the call with UNAUTHENTICATED."""

    async def refuse(_request: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "devmesh: no or a wrong token")

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


# -- the server -----------------------------------------------------------------------------


class _Closed:
    """Stream event: the client went away or the server is stopping."""


class _Wake:
    """Stream event: the snapshot of the stream's node group changed."""


_CLOSED: Final = _Closed()
_WAKE: Final = _Wake()


def _not_cancelled(record: logging.LogRecord) -> bool:
    """A logging filter: False for a record of a handler that ended by cancellation."""
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, asyncio.CancelledError)


class XdsServer:
    """ADS over `unix:<socket_path>`, serving `cache`'s snapshots (a new cache if none is
    given), on grpc.aio: one event loop on a thread of its own ("xds-loop"), every stream a
    coroutine. Start and stop it from any other thread.

    grpc.aio rather than grpc's sync server (a pool thread held by each open stream plus a
    reader thread each, devmesh's server before), measured with bench/xds_server.py: both on
    this cache and protocol code, one route change pushed to N streams over this socket, on
    2 cores shared with other work (load average 3 to 17), four runs:

                          aio                  threads (256 workers)
      100 ADS streams     p50 23-41 ms         p50 37-62 ms          push → all ACKed
                          17-27 ms CPU/push    33-59 ms CPU/push     serving, less publishing
                          9 threads, 56 MiB    208 threads, 62 MiB
      30 real Envoys      p50 19-29 ms         p50 23-32 ms
                          7-11 ms CPU/push     11-15 ms CPU/push

    aio had the lower p50 and about half the serving CPU in every run; the p99 (50 to 170
    ms for both) moved with the machine's load, mostly in aio's favour. And no stream waits
    for a free worker: the sync server queues the 257th stream until another one ends.
    Never call the cache's blocking `wait_synced` on this loop.

    The snapshot and status methods are shortcuts to the cache, kept for callers that set
    one group at a time; the whole mesh goes in with `set_snapshots`."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        cache: SnapshotCache | None = None,
        services: Sequence[Callable[[Any], None]] = (),
        tcp: TcpListen | None = None,
    ) -> None:
        """`services`: more gRPC services on the same socket (the span collector): each is
        called with the grpc.aio server before it starts, to add its servicer. `tcp`:
        transport tcp (core/transport.py): a TCP port too, and the token on every call."""
        self.socket_path = Path(socket_path)
        self.tcp = tcp
        self.tcp_port: int | None = None  # the port bound, once started with `tcp`
        self.cache = cache if cache is not None else SnapshotCache()
        self._services = tuple(services)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._streams: set[asyncio.Queue[Any]] = set()  # touched on the loop thread only

    # -- lifecycle

    def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("XdsServer already started")
        if self.socket_path.is_socket():
            self.socket_path.unlink()  # left by a server that did not stop cleanly
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="xds-loop", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result()
        except BaseException:
            self._end_loop()
            raise
        # grpc binds with the process umask; only the daemon's user (and the sidecars it
        # bind-mounts the socket into, running as that user) may talk to the control plane.
        os.chmod(self.socket_path, stat.S_IRUSR | stat.S_IWUSR)
        if os.geteuid() == 0:  # the proxies run as PROXY_UID under a root daemon
            os.chown(self.socket_path, PROXY_UID, PROXY_UID)
        log.info("xDS server listening on unix:%s", self.socket_path)
        if self.tcp is not None:
            log.info("xDS server listening on %s:%s (token required)", self.tcp.host, self.tcp_port)

    async def _start(self) -> None:
        # No interceptor at all for unix: its calls cost what they did before tcp existed.
        if self.tcp is None:
            server = grpc.aio.server()
        else:
            # grpc sets SO_REUSEPORT by default: a second daemon on a port another one holds
            # would get half its connections (and refuse them: another token). Never share.
            server = grpc.aio.server(
                interceptors=[TokenCheck(self.tcp.token)], options=[("grpc.so_reuseport", 0)]
            )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), server)
        for add in self._services:
            add(server)
        try:
            port = server.add_insecure_port(f"unix:{self.socket_path}")
        except RuntimeError:
            port = 0
        if port == 0:
            raise MeshError(f"cannot listen on unix:{self.socket_path}")
        if self.tcp is not None:
            where = f"{self.tcp.host}:{self.tcp.port}"
            try:
                self.tcp_port = server.add_insecure_port(where)
            except RuntimeError:
                self.tcp_port = 0
            if not self.tcp_port:
                raise MeshError(f"cannot listen on {where} (transport tcp): is the port in use?")
        await server.start()
        self._server = server

    def stop(self, grace: float = 1.0) -> None:
        """Stop accepting streams, end the open ones, and end the loop's thread."""
        loop = self._loop
        if loop is None:
            return
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._stop(grace), loop).result()
        self._end_loop()
        log.info("xDS server stopped")

    async def _stop(self, grace: float) -> None:
        for events in self._streams:
            events.put_nowait(_CLOSED)  # each handler returns: its Envoy sees the stream end
        # The other services' streams (access logs, stats, span exports) are cancelled
        # after `grace`: grpc may log a cancelled handler with its CancelledError's
        # traceback (seen once in 12 foreground stops); that is the stop working, not a
        # fault. The filter is added once (logging keeps one of each) and stays: several
        # servers may stop at once (tests), and a handler is only ever cancelled so.
        logging.getLogger("grpc._cython.cygrpc").addFilter(_not_cancelled)
        await self._server.stop(grace)  # refuses new streams; cancels the rest after `grace`
        self._server = None
        # What is left (reader tasks being cancelled) ends here, not in a closed loop.
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def _end_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self._loop = self._thread = None

    def open_streams(self) -> int:
        """How many ADS streams are open now."""
        return len(self._streams)

    # -- shortcuts to the cache

    def set_snapshots(self, snapshots: Mapping[str, Snapshot]) -> frozenset[str]:
        """Serve exactly these node groups (see SnapshotCache.set_snapshots)."""
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

    # -- one stream, on the loop

    async def stream(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()

        def wake() -> None:  # on the publishing thread, under the cache's lock: never block
            # RuntimeError: the loop has closed; the server is gone, and so is the stream.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(events.put_nowait, _WAKE)

        async def read() -> None:
            try:
                async for request in requests:
                    events.put_nowait(request)
            except grpc.RpcError:
                pass  # cancelled: the client went away or the server stopped
            except Exception:
                log.exception("reading an ADS stream's requests failed")
            finally:
                events.put_nowait(_CLOSED)

        sotw = SotwStream(self.cache, wake)
        self._streams.add(events)
        reader = asyncio.ensure_future(read())
        try:
            while True:
                event = await events.get()
                if event is _CLOSED:
                    return
                for response in sotw.on_wake() if event is _WAKE else sotw.on_request(event):
                    yield response
        finally:
            reader.cancel()
            self._streams.discard(events)
            sotw.close()


class _Servicer:
    """The grpc-facing methods; not a subclass of the generated servicer (it is untyped)."""

    def __init__(self, server: XdsServer) -> None:
        self._server = server

    async def StreamAggregatedResources(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        # An async generator function itself: grpc.aio tells handler kinds apart by that.
        async for response in self._server.stream(requests):
            yield response

    async def DeltaAggregatedResources(self, requests: AsyncIterator[Any], context: Any) -> None:
        # devmesh's bootstraps ask for state of the world (api_type GRPC), never delta.
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "devmesh serves state-of-the-world ADS only"
        )
