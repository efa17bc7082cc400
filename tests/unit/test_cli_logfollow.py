"""Following a service's app logs (devmesh.daemon.logfollow) against a scripted engine: a
crash loop's last words first, replacements from their first line, the end when no pod
runs, and streams closed and threads gone when the reader leaves."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

from devmesh.api import types as api
from devmesh.daemon import logfollow
from devmesh.plan.plan import Observed


class Stream:
    """A followed log: chunks put by the test, until closed or ended."""

    def __init__(self, lines: list[bytes]) -> None:
        self.chunks: queue.Queue[bytes | None] = queue.Queue()
        for line in lines:
            self.chunks.put(line)
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self.chunks.get()) is not None:
            yield chunk

    def end(self) -> None:
        self.chunks.put(None)

    def close(self) -> None:
        self.closed = True
        self.chunks.put(None)


class Engine:
    def __init__(self) -> None:
        self.apps: list[Observed] = []
        self.written: dict[str, list[bytes]] = {}
        self.streams: dict[str, Stream] = {}
        self.tails: dict[str, int] = {}

    def app(self, pod: str, state: str = "running", lines: tuple[str, ...] = ()) -> None:
        self.apps = [a for a in self.apps if a.pod != pod]
        self.apps.append(Observed(f"{pod}-app", f"{pod}-app", "app", pod, "web", "v1", "h", state))
        self.written[f"{pod}-app"] = [f"{line}\n".encode() for line in lines]

    def observe(self, project: str) -> list[Observed]:
        return list(self.apps)

    def logs(
        self,
        name: str,
        follow: bool,
        tail: int | str = "all",
        since: float | None = None,
        timestamps: bool = False,
    ) -> Iterator[bytes]:
        lines = self.written[name]
        if timestamps:
            lines = [b"2026-12-03T10:00:00.000000000Z " + line for line in lines]
        yield b"".join(lines if tail == "all" else lines[-int(tail) :])

    def follow_logs(
        self, name: str, tail: int, since: float | None = None, timestamps: bool = False
    ) -> Any:
        self.tails[name] = tail
        lines = self.written[name] if since is None else []  # restarted in place: none new
        stream = Stream(lines if tail < 0 else lines[-tail:] if tail else [])
        self.streams[name] = stream
        return stream


def _follow(
    engine: Engine, tail: int | None, stop: threading.Event
) -> Generator[api.LogLine, None, None]:
    return logfollow.follow(engine, "m", "web", tail, stop, idle_end=0.3, look_every=0.05)


def _next(lines: Iterator[api.LogLine]) -> tuple[str, str]:
    line = next(lines)
    return line.pod, line.text


def test_a_crash_loops_last_words_come_first_then_running_pods_are_followed() -> None:
    engine = Engine()
    engine.app("m-web-v1-0", "exited", ("starting", "giving up"))
    engine.app("m-web-v1-1", "running", ("old", "a", "b"))
    lines = _follow(engine, 2, threading.Event())
    assert [_next(lines) for _ in range(4)] == [
        ("m-web-v1-0", "starting"),
        ("m-web-v1-0", "giving up"),
        ("m-web-v1-1", "a"),  # --tail 2 at the start
        ("m-web-v1-1", "b"),
    ]
    engine.streams["m-web-v1-1-app"].chunks.put(b"new li")  # a line in two chunks
    engine.streams["m-web-v1-1-app"].chunks.put(b"ne\n")
    assert _next(lines) == ("m-web-v1-1", "new line")
    lines.close()


def test_a_replacement_is_followed_from_its_first_line_and_following_ends_with_the_pods() -> None:
    engine = Engine()
    engine.app("m-web-v1-0", "running", ("one",))
    lines = _follow(engine, None, threading.Event())
    assert _next(lines) == ("m-web-v1-0", "one")
    engine.app("m-web-v1-9", "running", ("first", "second"))  # replaces v1-0
    engine.apps = [a for a in engine.apps if a.pod == "m-web-v1-9"]
    engine.streams["m-web-v1-0-app"].end()
    assert [_next(lines) for _ in range(2)] == [("m-web-v1-9", "first"), ("m-web-v1-9", "second")]
    assert engine.tails["m-web-v1-9-app"] == -1  # all of it: docker-py's "all"
    engine.apps = []  # `down`
    engine.streams["m-web-v1-9-app"].end()
    assert list(lines) == []  # ends by itself once no pod ran for idle_end


def _followers() -> list[str]:
    """The follow threads, by name: counting every thread would also count those another
    test left ending (a test HTTP server's request handler, say)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("follow-")]


def test_closing_the_generator_closes_the_streams_and_ends_the_threads() -> None:
    engine = Engine()
    for i in range(3):
        engine.app(f"m-web-v1-{i}", "running", (f"hello {i}",))
    lines = _follow(engine, None, threading.Event())
    assert sorted(_next(lines) for _ in range(3)) == [
        (f"m-web-v1-{i}", f"hello {i}") for i in range(3)
    ]
    assert len(_followers()) == 3
    lines.close()
    assert all(s.closed for s in engine.streams.values())
    deadline = time.monotonic() + 5
    while _followers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _followers() == []


def test_stop_ends_following() -> None:
    engine = Engine()
    engine.app("m-web-v1-0", "running", ("x",))
    stop = threading.Event()
    lines = _follow(engine, None, stop)
    assert _next(lines) == ("m-web-v1-0", "x")
    stop.set()
    assert list(lines) == []
    assert engine.streams["m-web-v1-0-app"].closed


def test_read_gives_each_pods_last_lines() -> None:
    engine = Engine()
    engine.app("m-web-v1-1", "running", ("a", "b", "c"))
    engine.app("m-web-v1-0", "exited", ("x", "y"))
    got = [(line.pod, line.text) for line in logfollow.read(engine, "m", "web", 1)]
    assert got == [("m-web-v1-0", "y"), ("m-web-v1-1", "c")]
    assert logfollow.pods_of(engine, "m", "web") == ["m-web-v1-0", "m-web-v1-1"]


def test_proxy_logs_are_the_sidecars_and_for_the_mesh_the_gateways() -> None:
    engine = Engine()
    engine.app("p-web-v1-0", lines=("app says",))
    for name, role, pod, service in (
        ("p-web-v1-0-sidecar", "sidecar", "p-web-v1-0", "web"),
        ("p-api-v1-0-sidecar", "sidecar", "p-api-v1-0", "api"),
        ("p-gateway", "gateway", "p-gateway", ""),
    ):
        engine.apps.append(Observed(name, name, role, pod, service, "v1", "h", "running"))
        engine.written[name] = [f"{role} of {pod}\n".encode()]

    def lines(which: logfollow.Which) -> list[tuple[str, str, str]]:
        return [(x.pod, x.source, x.text) for x in logfollow.read(engine, "p", which, None)]

    assert lines(logfollow.Which("web")) == [("p-web-v1-0", "app", "app says")]
    assert lines(logfollow.Which("web", proxy=True)) == [
        ("p-web-v1-0", "sidecar", "sidecar of p-web-v1-0")
    ]
    assert {(pod, source) for pod, source, _ in lines(logfollow.Which(None, proxy=True))} == {
        ("p-api-v1-0", "sidecar"),
        ("p-web-v1-0", "sidecar"),
        ("p-gateway", "gateway"),
    }
    # the gateway's names choose its Envoy, as in access logs and traces
    for name in ("gateway", "ingress"):
        assert lines(logfollow.Which(name, proxy=True)) == [
            ("p-gateway", "gateway", "gateway of p-gateway")
        ]
        assert lines(logfollow.Which(name)) == []  # it runs no app
    stamped = lines(logfollow.Which("web", timestamps=True))
    assert stamped == [("p-web-v1-0", "app", "2026-12-03T10:00:00.000000000Z app says")]
    assert logfollow.pods_of(engine, "p", logfollow.Which(None, proxy=True)) == [
        "p-api-v1-0",
        "p-gateway",
        "p-web-v1-0",
    ]
