"""A service's app logs, read once or followed across pod replacements.

`follow` is what `POST /v1/logs/follow` serves (and what `devmesh logs --follow` runs by
itself when no daemon runs): a generator of `LogLine`s that

- starts with the last lines of pods that are not running (a crash loop's last words);
- follows every running app container, from `tail` lines back at the start, and a container
  found later (a replacement, a scale-up) from its first line, one restarted in place from
  where its stream ended;
- ends when no pod of the service has run for `IDLE_END` seconds (`down`, or the service
  left the mesh), or when `stop` is set;
- holds at most `QUEUE` lines between the streams and its reader (a slow reader slows the
  streams, not the daemon's memory), and when it is closed (the reader went away) closes the
  streams and lets its threads end.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from devmesh.api import types as api
from devmesh.core.load import names_gateway
from devmesh.plan.plan import Observed

IDLE_END = 3.0  # seconds a replacement gets to appear before following ends
LOOK_EVERY = 1.0  # seconds between two looks at the service's containers
QUEUE = 1000  # lines held between the streams and the reader


class LogEngine(Protocol):
    """What following needs of `adapters.engine.Engine`."""

    def observe(self, project: str) -> list[Observed]: ...

    def logs(
        self,
        name: str,
        follow: bool,
        tail: int | str = "all",
        since: float | None = None,
        timestamps: bool = False,
    ) -> Iterator[bytes]: ...

    def follow_logs(
        self, name: str, tail: int, since: float | None = None, timestamps: bool = False
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class Which:
    """Whose logs: a service's (None: every service's), its apps' or its proxies' (the
    sidecars, and for the whole mesh the gateway too). With `proxy`, the gateway's names
    (`gateway`, `ingress`) choose the gateway's Envoy, as they find it in access logs and
    traces (and a service of that name's sidecars beside it: `validate` warns of one)."""

    service: str | None = None
    proxy: bool = False
    timestamps: bool = False

    @property
    def gateway(self) -> bool:
        """The gateway's Envoy alone (`logs --proxy gateway`)."""
        return names_gateway(self.service, self.proxy)

    def takes(self, o: Observed) -> bool:
        if o.role == "gateway":
            return self.gateway or (self.proxy and self.service is None)
        if o.role != ("sidecar" if self.proxy else "app"):
            return False
        return self.service is None or o.service == self.service


def _which(which: Which | str | None) -> Which:
    return which if isinstance(which, Which) else Which(which)


def read(
    engine: LogEngine, project: str, which: Which | str | None, tail: int | None
) -> list[api.LogLine]:
    """The last `tail` lines (None: all) of each chosen container, pod by pod."""
    w = _which(which)
    chosen = sorted((o for o in engine.observe(project) if w.takes(o)), key=lambda o: o.name)
    lines: list[api.LogLine] = []
    for o in chosen:
        tail_of = "all" if tail is None else tail
        for chunk in engine.logs(o.id, follow=False, tail=tail_of, timestamps=w.timestamps):
            lines.extend(api.LogLine(o.pod, text, o.role) for text in _split(chunk))
    return lines


def pods_of(engine: LogEngine, project: str, which: Which | str | None) -> list[str]:
    """The pods (and the gateway) whose chosen containers the engine has, running or not."""
    w = _which(which)
    return sorted({o.pod for o in engine.observe(project) if w.takes(o)})


MAX_LINE = 64 * 1024  # bytes of one log line held before it is shown anyway


@dataclass
class _Item:
    line: api.LogLine | None = None
    ended: str = ""  # a container id whose stream ended


def follow(
    engine: LogEngine,
    project: str,
    which: Which | str | None,
    tail: int | None,
    stop: threading.Event,
    idle_end: float = IDLE_END,
    look_every: float = LOOK_EVERY,
) -> Generator[api.LogLine, None, None]:
    """The chosen log lines as they come (see `follow_ticking`)."""
    lines = follow_ticking(engine, project, which, tail, stop, idle_end, look_every)
    try:
        for line in lines:
            if line is not None:
                yield line
    finally:
        lines.close()


def follow_ticking(
    engine: LogEngine,
    project: str,
    which: Which | str | None,
    tail: int | None,
    stop: threading.Event,
    idle_end: float = IDLE_END,
    look_every: float = LOOK_EVERY,
) -> Generator[api.LogLine | None, None, None]:
    """As `follow`, with a None first and whenever half a second passes without a line: the
    API server then sends its answer's head at once, and notices a client that went away
    from a quiet log (a thread blocked in `next()` cannot be told)."""
    yield None
    w = _which(which)
    closing = threading.Event()  # set when the generator ends, however it ends
    items: queue.Queue[_Item] = queue.Queue(maxsize=QUEUE)
    following: dict[str, Any] = {}  # container id -> its open stream (None until opened)
    ended: dict[str, float] = {}  # container id -> when its stream ended (epoch seconds)
    threads: list[threading.Thread] = []
    lock = threading.Lock()

    def done() -> bool:
        return closing.is_set() or stop.is_set()

    def put(item: _Item) -> None:
        while not done():
            try:
                items.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def pump(cid: str, pod: str, role: str, since: float | None, lines: int | None) -> None:
        try:
            # closable from here: `closing` ends it at once
            stream: Iterable[bytes] = engine.follow_logs(
                cid, -1 if lines is None else lines, since, w.timestamps
            )
            with lock:
                if done():
                    _close(stream)
                    return
                following[cid] = stream
            partial = b""
            for chunk in stream:
                if done():
                    break
                *complete, partial = (partial + chunk).split(b"\n")
                if len(partial) > MAX_LINE:  # a log without newlines: shown in pieces
                    complete.append(partial)
                    partial = b""
                for raw in complete:
                    put(_Item(api.LogLine(pod, _decode(raw), role)))
            if partial and not done():
                put(_Item(api.LogLine(pod, _decode(partial), role)))
        except Exception:  # removed meanwhile, closed, or the engine went away: look again
            pass
        finally:
            ended[cid] = time.time()
            put(_Item(ended=cid))

    first = True
    idle_since: float | None = None
    next_look = 0.0
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_look:
                next_look = now + look_every
                apps = [o for o in engine.observe(project) if w.takes(o)]
                running = [o for o in apps if o.state == "running"]
                if first:
                    for o in sorted(apps, key=lambda o: o.name):
                        if o.state != "running":  # a crash loop's last words
                            for chunk in engine.logs(
                                o.id,
                                follow=False,
                                tail="all" if tail is None else tail,
                                timestamps=w.timestamps,
                            ):
                                for text in _split(chunk):
                                    yield api.LogLine(o.pod, text, o.role)
                            ended[o.id] = time.time()  # restarted in place: from here on
                for o in running:
                    with lock:
                        if o.id in following or time.time() - ended.get(o.id, 0.0) < 1.0:
                            continue  # followed, or its stream just ended: not in a tight loop
                        following[o.id] = None
                    since = ended.get(o.id)
                    thread = threading.Thread(
                        target=pump,
                        args=(o.id, o.pod, o.role, since, tail if first else None),
                        name=f"follow-{o.name}",
                        daemon=True,
                    )
                    threads.append(thread)
                    thread.start()
                threads = [t for t in threads if t.is_alive()]
                first = False
                with lock:
                    busy = bool(running or following)
                if busy:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since >= idle_end:  # a replacement gets this long to appear
                    return
            try:
                item = items.get(timeout=min(0.5, look_every))
            except queue.Empty:
                yield None
                continue
            if item.line is not None:
                yield item.line
            else:
                with lock:
                    following.pop(item.ended, None)
                next_look = min(next_look, time.monotonic() + 0.2)  # look for what replaces it
    finally:
        closing.set()
        with lock:
            streams = [s for s in following.values() if s is not None]
            following.clear()
        for stream in streams:
            _close(stream)


def _close(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):  # closed already, or the engine went away
            close()


def _decode(raw: bytes) -> str:
    return raw.decode(errors="replace").rstrip("\r")


def _split(chunk: bytes) -> list[str]:
    return [line.rstrip("\r") for line in chunk.decode(errors="replace").splitlines()]
