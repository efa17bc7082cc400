"""The xDS snapshot cache and the SotW stream protocol, without gRPC or Envoy: requests are
built as Envoy would send them and fed to `SotwStream` directly."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections import Counter
from typing import Any

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from devmesh.adapters.xds_cache import SnapshotCache
from devmesh.adapters.xds_server import SotwStream
from devmesh.core.load import load
from devmesh.envoy.render import render
from devmesh.envoy.resources import placeholder_endpoints
from devmesh.envoy.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Snapshot,
    SnapshotError,
    new_snapshots,
)

MESH = """
mesh: t
tls: {mode: DISABLED}  # plain routing here; mTLS: test_mtls_render.py
services:
  front: {image: f, port: 8000, calls: [back]}
  back:
    image: b
    port: 8000
    versions: {v1: {}, v2: {}}
    routes:
      - to: {v1: 75, v2: 25}
"""
FRONT = "t/front/default"


def _snapshots(weights: str = "{v1: 75, v2: 25}") -> dict[str, Snapshot]:
    mesh = load(MESH.replace("{v1: 75, v2: 25}", weights))
    return new_snapshots(render(mesh, placeholder_endpoints(mesh)))


class Woken:
    """Wake-up callbacks that count, one per stream name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, name: str) -> Any:
        return lambda: self.counts.update([name])


def test_set_snapshots_serves_exactly_the_groups_given() -> None:
    cache = SnapshotCache()
    everything = _snapshots()
    assert cache.set_snapshots(everything) == frozenset(everything)
    assert cache.groups() == frozenset(everything)

    only_front = {FRONT: everything[FRONT]}
    assert cache.set_snapshots(only_front) == frozenset()  # removed groups are not "changed"
    assert cache.groups() == {FRONT}
    assert cache.served("t/back/v1") is None


def test_unchanged_snapshot_wakes_nobody_and_a_change_wakes_only_its_group() -> None:
    cache = SnapshotCache()
    cache.set_snapshots(_snapshots())
    woken = Woken()
    cache.open_stream("front-0", FRONT, woken("front-0"))
    cache.open_stream("front-1", FRONT, woken("front-1"))
    cache.open_stream("back-0", "t/back/v1", woken("back-0"))
    served = cache.served(FRONT)

    assert cache.set_snapshots(_snapshots()) == frozenset()  # rebuilt from scratch, same content
    assert woken.counts == Counter()
    assert cache.served(FRONT) is served  # nothing repacked

    changed = cache.set_snapshots(_snapshots("{v1: 50, v2: 50}"))
    # Every caller of back carries back's route: front and the gateway, not back itself.
    assert changed == {FRONT, "t/gateway"}
    assert woken.counts == Counter({"front-0": 1, "front-1": 1})


def test_a_resource_envoy_cannot_parse_changes_nothing() -> None:
    cache = SnapshotCache()
    good = _snapshots()
    cache.set_snapshots(good)
    woken = Woken()
    cache.open_stream("front-0", FRONT, woken("front-0"))

    shifted = _snapshots("{v1: 50, v2: 50}")
    front = shifted[FRONT]
    clusters = [copy.deepcopy(c) for c in front.clusters.items]
    clusters[-1]["no_such_field"] = 1
    broken = dataclasses.replace(front, clusters=type(front.clusters).of(CLUSTER, clusters))
    with pytest.raises(SnapshotError) as caught:
        cache.set_snapshots({**shifted, FRONT: broken, "t/new": broken})
    assert len(caught.value.problems) == 2  # both groups, at once
    assert "no_such_field" in caught.value.problems[0]
    assert cache.groups() == frozenset(good)
    assert cache.served(FRONT).versions == good[FRONT].versions  # type: ignore[union-attr]
    assert woken.counts == Counter()


def test_a_resource_shared_by_groups_is_packed_once() -> None:
    cache = SnapshotCache()
    cache.set_snapshots(_snapshots())
    front, gateway = cache.served(FRONT), cache.served("t/gateway")
    assert front is not None and gateway is not None
    assert front.types[ROUTE].packed["out|back"] is gateway.types[ROUTE].packed["out|back"]


# -- one stream, as Envoy drives it ---------------------------------------------------------


def _request(
    type_url: str, names: tuple[str, ...] = (), ack: Any = None, node_id: str = "front-0"
) -> Any:
    request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names)
    request.node.id, request.node.cluster = node_id, FRONT
    if ack is not None:
        request.version_info, request.response_nonce = ack.version_info, ack.nonce
    return request


def test_a_stream_waiting_for_its_first_snapshot_is_woken_by_it() -> None:
    cache = SnapshotCache()
    wakes: list[int] = []
    stream = SotwStream(cache, lambda: wakes.append(1))
    assert stream.on_request(_request(CLUSTER)) == []  # connected, nothing to serve yet
    assert cache.status("front-0").connected
    assert not cache.is_synced("front-0")

    cache.set_snapshots(_snapshots())
    assert wakes == [1]
    (cds,) = stream.on_wake()
    assert cds.type_url == CLUSTER
    assert len(cds.resources) == 3  # _app, back|v1, back|v2


def test_a_nack_is_recorded_and_not_answered_with_the_same_version() -> None:
    cache = SnapshotCache()
    cache.set_snapshots(_snapshots())
    stream = SotwStream(cache, lambda: None)
    (cds,) = stream.on_request(_request(CLUSTER))
    nack = _request(CLUSTER, ack=cds)
    nack.version_info = ""  # the version Envoy keeps: none yet
    nack.error_detail.code, nack.error_detail.message = 13, "bad cluster"
    assert stream.on_request(nack) == []
    assert stream.on_wake() == []
    status = cache.status("front-0")
    assert status.nack is not None
    assert (status.nack.version_rejected, status.nack.message) == (cds.version_info, "bad cluster")
    assert status.responses[CLUSTER] == 1


def test_stream_protocol_subscribe_ack_push() -> None:
    cache = SnapshotCache()
    cache.set_snapshots(_snapshots())
    wakes: list[int] = []
    stream = SotwStream(cache, lambda: wakes.append(1))

    answers = {}
    for type_url, names in (
        (CLUSTER, ()),
        (ENDPOINT, ("back|v1", "back|v2")),
        (LISTENER, ()),
        (ROUTE, ("out|back",)),
    ):
        (answers[type_url],) = stream.on_request(_request(type_url, names))
    assert not cache.is_synced("front-0")  # sent, not yet ACKed
    for type_url, names in (
        (CLUSTER, ()),
        (ENDPOINT, ("back|v1", "back|v2")),
        (LISTENER, ()),
        (ROUTE, ("out|back",)),
    ):
        assert stream.on_request(_request(type_url, names, ack=answers[type_url])) == []
    assert cache.is_synced("front-0")
    status = cache.status("front-0")
    assert status.connected and status.nack is None and status.acked == status.sent

    cache.set_snapshots(_snapshots("{v1: 50, v2: 50}"))
    assert wakes == [1]
    assert not cache.is_synced("front-0")
    (route,) = stream.on_wake()  # only the route config changed
    assert route.type_url == ROUTE
    assert stream.on_wake() == []  # a second wake-up for the same change sends nothing
    stream.on_request(_request(ROUTE, ("out|back",), ack=route))
    assert cache.wait_synced(["front-0"], timeout=0)

    stream.close()
    assert not cache.status("front-0").connected
    assert not cache.is_synced("front-0")


def _subscribed_and_acked(cache: SnapshotCache) -> tuple[SotwStream, dict[str, Any]]:
    stream = SotwStream(cache, lambda: None)
    answers = {}
    for type_url, names in SUBSCRIPTIONS:
        (answers[type_url],) = stream.on_request(_request(type_url, names))
    for type_url, names in SUBSCRIPTIONS:
        assert stream.on_request(_request(type_url, names, ack=answers[type_url])) == []
    assert cache.is_synced("front-0")
    return stream, answers


def test_a_request_again_with_a_nonce_already_answered_gets_the_resources_again() -> None:
    """Envoy replacing a cluster (new TLS, new limits) asks for its endpoints again with
    the nonce it already ACKed: the server must answer, unchanged, or the new cluster
    warms until Envoy's 15 s initial-fetch timeout."""
    cache = SnapshotCache()
    cache.set_snapshots(_snapshots())
    stream, answers = _subscribed_and_acked(cache)
    names = ("back|v1", "back|v2")
    (again,) = stream.on_request(_request(ENDPOINT, names, ack=answers[ENDPOINT]))
    assert again.version_info == answers[ENDPOINT].version_info
    assert again.nonce != answers[ENDPOINT].nonce and len(again.resources) == 2
    assert not cache.is_synced("front-0")  # owed an ACK of the new nonce
    assert stream.on_request(_request(ENDPOINT, names, ack=again)) == []  # its ACK: no loop
    assert cache.is_synced("front-0")


def test_a_rejected_version_asked_again_is_not_sent_again_and_its_nack_ends_with_the_watch() -> (
    None
):
    cache = SnapshotCache()
    cache.set_snapshots(_snapshots())
    stream, _ = _subscribed_and_acked(cache)
    names = ("devmesh-identity", "devmesh-ca")
    (sds,) = stream.on_request(_request(SECRET, names))
    nack = _request(SECRET, names, ack=sds)
    nack.version_info = ""
    nack.error_detail.code, nack.error_detail.message = 13, "bad secret"
    assert stream.on_request(nack) == []
    assert stream.on_request(_request(SECRET, names, ack=sds)) == []  # a watch change: no resend
    assert cache.status("front-0").nack is not None
    assert stream.on_request(_request(SECRET, (), ack=sds)) == []  # TLS off: watches nothing
    assert cache.status("front-0").nack is None and cache.is_synced("front-0")


def test_a_subscription_ended_even_with_a_stale_nonce_is_no_longer_owed() -> None:
    """A sidecar that stops using a type (secrets, when TLS is turned off) sends a request
    naming nothing; when it crosses a newer response, Envoy never answers that response
    (it watches nothing of the type): the type must stop counting against "synced"."""
    cache = SnapshotCache()
    cache.set_snapshots(_snapshots())
    stream, _ = _subscribed_and_acked(cache)
    names = ("devmesh-identity", "devmesh-ca")  # what TLS listeners and clusters watched
    (sds,) = stream.on_request(_request(SECRET, names))
    assert stream.on_request(_request(SECRET, names, ack=sds)) == []
    assert cache.is_synced("front-0")
    (_again,) = stream.on_request(_request(SECRET, names, ack=sds))  # in flight...
    assert not cache.is_synced("front-0")
    ended = _request(SECRET, (), ack=sds)  # ...crossed by the end, on the old nonce
    assert stream.on_request(ended) == []
    assert SECRET not in cache.status("front-0").sent
    assert cache.is_synced("front-0")
    assert stream.on_wake() == []  # nothing of a type it does not watch


SUBSCRIPTIONS = (
    (CLUSTER, ()),
    (ENDPOINT, ("back|v1", "back|v2")),
    (LISTENER, ()),
    (ROUTE, ("out|back",)),
)


class FakeEnvoy:
    """Subscribes as Envoy does and ACKs whatever it is sent, when told to."""

    def __init__(self, cache: SnapshotCache, node_id: str) -> None:
        self.node_id = node_id
        self.names = dict(SUBSCRIPTIONS)
        self.stream = SotwStream(cache, lambda: None)

    def subscribe_and_ack(self) -> None:
        for type_url, names in SUBSCRIPTIONS:
            self.ack(self.stream.on_request(_request(type_url, names, node_id=self.node_id)))

    def ack(self, responses: list[Any]) -> None:
        for r in responses:
            request = _request(r.type_url, self.names[r.type_url], ack=r, node_id=self.node_id)
            assert self.stream.on_request(request) == []

    def take_push(self) -> None:
        self.ack(self.stream.on_wake())


def test_wait_synced_waits_for_every_node_at_the_newest_snapshot() -> None:
    cache = SnapshotCache()
    first, shifted = _snapshots(), _snapshots("{v1: 50, v2: 50}")
    cache.set_snapshots(first)
    a, b = FakeEnvoy(cache, "front-a"), FakeEnvoy(cache, "front-b")
    a.subscribe_and_ack()
    b.subscribe_and_ack()
    assert cache.wait_synced(["front-a", "front-b"], timeout=0)

    cache.set_snapshots(shifted)
    result: list[bool] = []
    waiter = threading.Thread(
        target=lambda: result.append(cache.wait_synced(["front-a", "front-b"], timeout=5))
    )
    waiter.start()
    deadline = time.monotonic() + 2
    while not cache._waiters and time.monotonic() < deadline:  # the waiter is waiting
        time.sleep(0.005)

    a.take_push()  # a runs the shifted routes; b has not taken the push
    cache.set_snapshots(first)  # back: now b is synced again and a has fallen behind
    waiter.join(timeout=0.3)  # a wrong "synced" would come back within this
    assert result == [] and waiter.is_alive()  # each node was synced once, never all at once
    a.take_push()
    waiter.join(timeout=5)
    assert result == [True]


def test_wait_synced_times_out_on_a_node_that_never_acks() -> None:
    cache = SnapshotCache()
    cache.set_snapshots(_snapshots())
    a = FakeEnvoy(cache, "front-a")
    a.subscribe_and_ack()
    started = time.monotonic()
    assert not cache.wait_synced(["front-a", "front-never"], timeout=0.1)
    assert 0.1 <= time.monotonic() - started < 1
    assert cache._waiters == []


def test_the_cache_tells_its_listener_of_connections_and_rejections() -> None:
    from devmesh.adapters.xds_cache import Nack, NodeEvent

    heard: list[NodeEvent] = []
    cache = SnapshotCache(heard.append)
    stream = cache.open_stream("pod-sidecar", "shop/catalog/v1", lambda: None)
    cache.record_nack(
        stream, Nack("type.googleapis.com/envoy.config.listener.v3.Listener", "v2", "bad")
    )
    cache.close_stream(stream)
    assert [(e.node_id, e.kind) for e in heard] == [
        ("pod-sidecar", "connected"),
        ("pod-sidecar", "nack"),
        ("pod-sidecar", "disconnected"),
    ]
    assert heard[1].detail == "Listener: bad"


def _without_v2() -> dict[str, Snapshot]:
    text = MESH.replace("{v1: {}, v2: {}}", "{v1: {}}").replace("{v1: 75, v2: 25}", "v1")
    mesh = load(text)
    return new_snapshots(render(mesh, placeholder_endpoints(mesh)))


def _clusters(cache: SnapshotCache, group: str) -> set[str]:
    served = cache.served(group)
    assert served is not None
    return set(served.snapshot.clusters.names)


def test_a_dropped_cluster_is_served_until_every_envoy_has_taken_the_routes_without_it() -> None:
    # Envoy takes CDS before RDS: a cluster dropped in the same push as the route that sent
    # to it would be gone while the old route still runs (503, no body, flag NC).
    cache = SnapshotCache()
    cache.set_snapshots(_snapshots())
    a, b = FakeEnvoy(cache, "front-a"), FakeEnvoy(cache, "front-b")
    a.subscribe_and_ack()
    b.subscribe_and_ack()

    cache.set_snapshots(_without_v2())
    assert cache.bridging(FRONT)
    assert "back|v2" in _clusters(cache, FRONT)  # still served, with its endpoints
    served = cache.served(FRONT)
    assert served is not None and "back|v2" in served.snapshot.endpoints.names
    assert "back|v2" not in str(served.snapshot.routes.items)  # the routes left it already
    assert "back|v2" not in _clusters(cache, "t/back/v1")  # groups without it: no bridge

    a.take_push()
    assert cache.bridging(FRONT)  # b still runs the old routes
    b.take_push()
    assert not cache.bridging(FRONT)  # both took them: now it goes
    assert "back|v2" not in _clusters(cache, FRONT)
    (cds, eds) = a.stream.on_wake()  # the final push: CDS and EDS without it
    assert (cds.type_url, eds.type_url) == (CLUSTER, ENDPOINT)
    assert len(cds.resources) == len(_clusters(cache, FRONT))
    a.ack([cds, eds])
    b.take_push()
    assert cache.wait_synced(["front-a", "front-b"], timeout=0)


def test_a_bridge_ends_when_the_envoy_that_did_not_take_it_goes_away() -> None:
    cache = SnapshotCache()
    cache.set_snapshots(_snapshots())
    a, b = FakeEnvoy(cache, "front-a"), FakeEnvoy(cache, "front-b")
    a.subscribe_and_ack()
    b.subscribe_and_ack()
    cache.set_snapshots(_without_v2())
    a.take_push()
    assert cache.bridging(FRONT)
    b.stream.close()
    assert not cache.bridging(FRONT)
    assert "back|v2" not in _clusters(cache, FRONT)


def test_with_no_envoy_connected_a_dropped_cluster_goes_at_once() -> None:
    cache = SnapshotCache()
    cache.set_snapshots(_snapshots())
    cache.set_snapshots(_without_v2())
    assert not cache.bridging(FRONT)
    assert "back|v2" not in _clusters(cache, FRONT)


def test_the_same_final_snapshot_again_keeps_the_bridge_and_wakes_nobody() -> None:
    cache = SnapshotCache()
    cache.set_snapshots(_snapshots())
    a = FakeEnvoy(cache, "front-a")
    a.subscribe_and_ack()
    cache.set_snapshots(_without_v2())
    bridge = cache.served(FRONT)
    assert cache.set_snapshots(_without_v2()) == frozenset()  # a timer's pass: no change
    assert cache.served(FRONT) is bridge and cache.bridging(FRONT)
    cache.set_snapshots(_snapshots())  # v2 back before the bridge ended: served as given
    assert not cache.bridging(FRONT)
    assert "back|v2" in _clusters(cache, FRONT)


def test_grpc_records_of_handlers_cancelled_by_the_stop_are_left_out_and_others_kept() -> None:
    import asyncio
    import logging

    from devmesh.adapters.xds_server import _not_cancelled

    def record(error: BaseException | None) -> logging.LogRecord:
        info = (type(error), error, None) if error is not None else None
        return logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, "", 0, "x", (), info)

    assert not _not_cancelled(record(asyncio.CancelledError()))
    assert _not_cancelled(record(RuntimeError("a real fault")))
    assert _not_cancelled(record(None))
