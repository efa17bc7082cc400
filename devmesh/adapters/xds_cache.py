"""The xDS snapshot cache: what is served, and what each Envoy has of it.

Modelled on go-control-plane's `cache/v3/simple.go`, apart from the gRPC server that reads
it (`devmesh.adapters.xds_server`):

- the current snapshot per node group (Envoy's node *cluster*), each packed to protobuf
  once, every distinct resource parsed once (keyed by its digest) however many groups share
  it;
- per node id (each Envoy): connected, what was sent and what was ACKed or NACKed;
- the open streams' wake-ups: a stream registers a callback for its group, and a snapshot
  change calls it. The callback must not block (a queue put, or `call_soon_threadsafe`).

`set_snapshots` replaces every group at once: groups not given are removed (their Envoys
keep what they have; nothing is pushed), unchanged ones wake nobody, and if any snapshot
fails to pack nothing changes. A snapshot that drops clusters is served in two steps: first
with the dropped clusters kept (`envoy.snapshot.bridging`), then, once every connected Envoy
of the group has taken that, as given; a route never names a cluster its Envoy has lost.
Thread-safe; the lock is held only for bookkeeping, never while packing.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# types-protobuf may or may not be installed; `unused-ignore` keeps strict mypy quiet either way.
from google.protobuf import any_pb2, json_format  # type: ignore[import-untyped,unused-ignore]

from devmesh.adapters.xds_types import CLUSTER, LISTENER, to_proto
from devmesh.envoy.resources import Json
from devmesh.envoy.snapshot import NAME_KEY, SHORT, Snapshot, SnapshotError, bridging

log = logging.getLogger("devmesh.xds")

Wake = Callable[[], None]


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
    cluster: str  # the node group
    connected: bool
    acked: dict[str, str]  # type_url -> version Envoy ACKed
    sent: dict[str, str]  # type_url -> version last sent
    nack: Nack | None
    nonces: dict[str, str] = field(default_factory=dict)  # type_url -> nonce last sent
    responses: dict[str, int] = field(default_factory=dict)  # type_url -> responses sent


@dataclass(frozen=True, slots=True)
class ServedType:
    version: str
    packed: Mapping[str, Any]  # resource name -> google.protobuf.Any, in the snapshot's order


@dataclass(frozen=True, slots=True)
class Served:
    """A snapshot as the server sends it."""

    snapshot: Snapshot
    types: Mapping[str, ServedType]
    # The RDS / EDS names the listeners and clusters refer to: what a node must have
    # requested, been sent and ACKed before it counts as synced.
    references: Mapping[str, frozenset[str]]

    @property
    def versions(self) -> dict[str, str]:
        return self.snapshot.versions


@dataclass(slots=True)
class _Node:
    """What the cache knows of one Envoy; guarded by the cache lock."""

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


@dataclass(slots=True)
class _Waiter:
    remaining: set[str]  # the nodes a wait_synced call has not yet seen synced


@dataclass(frozen=True, slots=True)
class _Watch:
    node_id: str
    group: str
    wake: Wake


# -- the cache ------------------------------------------------------------------------------


def _packed(type_url: str, item: Json) -> Any:
    """One resource as a google.protobuf.Any. json_format.ParseError if it does not parse."""
    message = any_pb2.Any()
    message.Pack(to_proto(type_url, item))
    return message


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """What the daemon hears of the Envoys: connections, rejections, and a stream's first
    listener ACK ("configured": the loop waits for it to put a healthy pod in service)."""

    node_id: str
    kind: Literal["connected", "disconnected", "nack", "configured"]
    detail: str = ""


class SnapshotCache:
    def __init__(self, on_event: Callable[[NodeEvent], None] | None = None) -> None:
        self._on_event = on_event  # called outside the lock, on the server's threads
        self._lock = threading.Condition()
        # One publisher at a time, held while packing (reentrant: set_snapshot calls
        # set_snapshots). Streams and status readers only ever take `_lock`.
        self._publishing = threading.RLock()
        self._served: dict[str, Served] = {}
        # group -> what it serves once its Envoys have taken the bridge `_served` holds
        self._finals: dict[str, Served] = {}
        self._packed: dict[str, Any] = {}  # resource digest -> Any; guarded by _publishing
        self._ready: dict[str, Any] = {}  # packed ahead by `prepare`; guarded by _publishing
        self._nodes: dict[str, _Node] = {}
        self._watches: dict[int, _Watch] = {}
        self._waiters: list[_Waiter] = []
        self._stream_ids = itertools.count(1)

    # -- snapshots

    def set_snapshots(self, snapshots: Mapping[str, Snapshot]) -> frozenset[str]:
        """Serve exactly these node groups, and wake the streams of every group whose
        snapshot changed. Returns the changed groups. Raises SnapshotError, changing nothing,
        if any resource does not parse as its Envoy type."""
        with self._publishing:
            with self._lock:
                old, old_finals = dict(self._served), dict(self._finals)
            fresh: dict[str, Served] = {}
            finals: dict[str, Served] = {}
            problems: list[str] = []
            for group, snapshot in snapshots.items():
                before, final = old.get(group), old_finals.get(group)
                if final is not None and final.versions == snapshot.versions:
                    fresh[group], finals[group] = before or final, final  # still bridging
                    continue
                if before is not None and before.versions == snapshot.versions:
                    fresh[group] = before
                    continue
                bridge = bridging(before.snapshot, snapshot) if before is not None else None
                try:
                    if bridge is None:
                        fresh[group] = self._pack(group, snapshot, before)
                    else:
                        fresh[group] = self._pack(group, bridge, before)
                        finals[group] = self._pack(group, snapshot, fresh[group])
                except SnapshotError as e:
                    problems += e.problems
            if problems:
                raise SnapshotError(problems)
            # Keep only the packed resources still in use: the cache never outgrows the mesh.
            in_use = {
                d
                for s in (*fresh.values(), *finals.values())
                for t in s.snapshot.types
                for d in t.digests
            }
            self._packed = {d: p for d, p in self._packed.items() if d in in_use}
            self._ready = {d: p for d, p in self._ready.items() if d not in in_use}
            changed = frozenset(g for g, s in fresh.items() if old.get(g) is not s)
            with self._lock:
                self._served = fresh
                self._finals = finals
                for watch in self._watches.values():
                    if watch.group in changed:
                        watch.wake()
                self._recheck(None)  # a group set back to what its nodes ACKed is synced
                self._finish(None)  # a group with no Envoy connected goes on at once
        for group in sorted(changed):
            log.debug("snapshot %s: %s", group, fresh[group].versions)
        return changed

    def prepare(self, type_url: str, items: Iterable[tuple[str, Json]]) -> None:
        """Pack (digest, resource) pairs ahead of the snapshot that will serve them (a
        certificate issued ahead of its renewal), so that push only looks them up. Replaces
        what an earlier call prepared and no snapshot has used yet. Raises SnapshotError,
        keeping nothing, if any does not parse."""
        with self._publishing:
            ready: dict[str, Any] = {}
            problems: list[str] = []
            for key, item in items:
                if key in self._packed or key in ready:
                    continue
                if key in self._ready:
                    ready[key] = self._ready[key]
                    continue
                try:
                    ready[key] = _packed(type_url, item)
                except json_format.ParseError as e:
                    problems.append(f"{SHORT[type_url]} {item.get(NAME_KEY[type_url])!r}: {e}")
            if problems:
                raise SnapshotError(problems)
            self._ready = ready

    def set_snapshot(self, group: str, snapshot: Snapshot) -> bool:
        """Set one group's snapshot, leaving the others. True if it changed."""
        with self._publishing:
            with self._lock:
                snapshots = {g: s.snapshot for g, s in self._served.items()}
            snapshots[group] = snapshot
            return group in self.set_snapshots(snapshots)

    def remove_snapshot(self, group: str) -> None:
        """Forget a node group's config. Its Envoys keep what they have; nothing is pushed."""
        with self._publishing, self._lock:
            self._served.pop(group, None)
            self._finals.pop(group, None)

    def served(self, group: str) -> Served | None:
        with self._lock:
            return self._served.get(group)

    def bridging(self, group: str) -> bool:
        """The group is served a bridge: its Envoys have not all taken it yet."""
        with self._lock:
            return group in self._finals

    def groups(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._served)

    def _pack(self, group: str, snapshot: Snapshot, before: Served | None = None) -> Served:
        types: dict[str, ServedType] = {}
        problems: list[str] = []
        for typed in snapshot.types:
            if before is not None and before.types[typed.type_url].version == typed.version:
                types[typed.type_url] = before.types[typed.type_url]  # a rotation: SDS alone
                continue
            packed: dict[str, Any] = {}
            for name, item, digest in zip(typed.names, typed.items, typed.digests, strict=True):
                message = self._packed.get(digest)
                if message is None:
                    message = self._ready.get(digest)
                if message is None:
                    try:
                        message = _packed(typed.type_url, item)
                    except json_format.ParseError as e:
                        problems.append(f"{group}: {SHORT[typed.type_url]} {name!r}: {e}")
                        continue
                self._packed[digest] = message
                packed[name] = message
            types[typed.type_url] = ServedType(typed.version, packed)
        if problems:
            raise SnapshotError(problems)
        same_refs = before is not None and all(
            before.snapshot.of_type(t).version == snapshot.of_type(t).version
            for t in (LISTENER, CLUSTER)
        )
        refs = before.references if before is not None and same_refs else snapshot.references()
        return Served(snapshot, types, refs)

    # -- streams (called by the server)

    def open_stream(self, node_id: str, group: str, wake: Wake) -> int:
        """A stream of `node_id` in `group` opened: a fresh status (versions are per stream
        in SotW), and `wake` is called whenever the group's snapshot changes."""
        with self._lock:
            stream_id = next(self._stream_ids)
            self._watches[stream_id] = _Watch(node_id, group, wake)
            self._nodes[node_id] = _Node(cluster=group, stream_id=stream_id)
        log.debug("%s (%s) connected", node_id, group)
        self._tell(NodeEvent(node_id, "connected", group))
        return stream_id

    def close_stream(self, stream_id: int) -> None:
        with self._lock:
            watch = self._watches.pop(stream_id, None)
            if watch is None:
                return
            node = self._owned(watch.node_id, stream_id)
            if node is not None:
                node.connected = False
                self._finish(watch.group)  # it was perhaps the last one not to take a bridge
        log.debug("%s disconnected", watch.node_id)
        if node is not None:  # not when a newer stream of the same Envoy took over
            self._tell(NodeEvent(watch.node_id, "disconnected"))

    def record_sent(
        self, stream_id: int, type_url: str, version: str, names: frozenset[str], nonce: str
    ) -> None:
        with self._lock:
            node = self._owned_by_stream(stream_id)
            if node is not None:
                node.sent[type_url] = version
                node.sent_names[type_url] = names
                node.nonces[type_url] = nonce
                node.responses[type_url] = node.responses.get(type_url, 0) + 1

    def record_unsubscribed(self, stream_id: int, type_url: str) -> None:
        """The node asked for none of this type any more (RDS/EDS/SDS naming nothing): what
        was sent of it is no longer owed an ACK."""
        with self._lock:
            node = self._owned_by_stream(stream_id)
            if node is None:
                return
            for table in (node.sent, node.sent_names, node.nonces, node.acked, node.acked_nonce):
                table.pop(type_url, None)
            if node.nack is not None and node.nack.type_url == type_url:
                node.nack = None  # what was rejected is no longer asked for
            node_id = self._watches[stream_id].node_id
            self._recheck(node_id)
            self._finish(node.cluster)

    def record_ack(self, stream_id: int, type_url: str, version: str, nonce: str) -> None:
        with self._lock:
            node = self._owned_by_stream(stream_id)
            if node is None:
                return
            first = type_url == LISTENER and LISTENER not in node.acked
            node_id = self._watches[stream_id].node_id
            node.acked[type_url] = version
            node.acked_nonce[type_url] = nonce
            if node.nack is not None and node.nack.type_url == type_url:
                node.nack = None
            self._recheck(node_id)
            self._finish(node.cluster)
        if first:
            self._tell(NodeEvent(node_id, "configured"))

    def record_nack(self, stream_id: int, nack: Nack) -> None:
        with self._lock:
            node = self._owned_by_stream(stream_id)
            if node is None:
                return
            node.nack = nack
            node_id = self._watches[stream_id].node_id
        self._tell(
            NodeEvent(node_id, "nack", f"{nack.type_url.rsplit('.', 1)[-1]}: {nack.message}")
        )

    def _tell(self, event: NodeEvent) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a listener's fault must not break a stream
                log.exception("xDS event listener failed")

    def _owned_by_stream(self, stream_id: int) -> _Node | None:
        watch = self._watches.get(stream_id)
        return None if watch is None else self._owned(watch.node_id, stream_id)

    def _owned(self, node_id: str, stream_id: int) -> _Node | None:
        """The node's status, unless a newer stream of the same node id has taken it over."""
        node = self._nodes.get(node_id)
        return node if node is not None and node.stream_id == stream_id else None

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
            waiter = _Waiter({n for n in wanted if not self._synced(n)})
            if not waiter.remaining:
                return True
            self._waiters.append(waiter)
            try:
                # Each change rechecks only the node it concerns (an ACK), so a push to N
                # nodes costs O(N), not O(N) per ACK; once none remains, confirm all at once
                # (a node synced earlier may have fallen behind a newer snapshot since).
                deadline = time.monotonic() + timeout
                while self._lock.wait_for(
                    lambda: not waiter.remaining, max(0.0, deadline - time.monotonic())
                ):
                    waiter.remaining.update(n for n in wanted if not self._synced(n))
                    if not waiter.remaining:
                        return True
                return False
            finally:
                self._waiters.remove(waiter)

    def _finish(self, group: str | None) -> None:
        """Under the lock: serve a group (None: any) its final snapshot once every connected
        Envoy of it has taken the bridge that kept its dropped clusters."""
        for name in [group] if group is not None else list(self._finals):
            final = self._finals.get(name)
            if final is None:
                continue
            nodes = [n for n, node in self._nodes.items() if node.cluster == name]
            if not all(self._synced(n) for n in nodes if self._nodes[n].connected):
                continue
            del self._finals[name]
            self._served[name] = final
            log.debug("snapshot %s: dropped clusters removed: %s", name, final.versions)
            for watch in self._watches.values():
                if watch.group == name:
                    watch.wake()

    def _recheck(self, node_id: str | None) -> None:
        """Under the lock, after a change that can make `node_id` (None: any) synced."""
        woken = False
        for waiter in self._waiters:
            if node_id is None:
                done = {n for n in waiter.remaining if self._synced(n)}
            else:
                done = {node_id} if node_id in waiter.remaining and self._synced(node_id) else set()
            if done:
                waiter.remaining -= done
                woken = woken or not waiter.remaining
        if woken:
            self._lock.notify_all()

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
        served = self._served.get(node.cluster)
        if served is None or LISTENER not in node.sent or CLUSTER not in node.sent:
            return False
        for type_url, version in node.sent.items():
            if version != served.types[type_url].version:
                return False
            if node.acked_nonce.get(type_url) != node.nonces.get(type_url):
                return False
        for type_url, names in served.references.items():
            if names and not names <= node.sent_names.get(type_url, frozenset()):
                return False
        return True
