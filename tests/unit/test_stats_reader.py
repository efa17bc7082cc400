"""StatsReader asks every sidecar at once, within one budget (each sidecar's read is
replaced by a pause and a canned answer; the socket side is tests/integration's)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from devmesh.adapters.envoy_admin import StatsReader

BODY = json.dumps({"stats": [{"name": "cluster.api|v1.upstream_rq_total", "value": 7}]}).encode()


class SlowReader(StatsReader):
    def __init__(self, pause: dict[str, float], **kwargs: float) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.pause = pause
        self.busy = 0
        self.most = 0
        self._count = threading.Lock()

    def _read(self, path: Path) -> bytes:
        with self._count:
            self.busy += 1
            self.most = max(self.most, self.busy)
        try:
            time.sleep(self.pause.get(path.name, 0.0))
            if path.name == "broken":
                raise OSError("admin answered 503")
            return BODY
        finally:
            with self._count:
                self.busy -= 1


def sockets(names: list[str]) -> dict[str, Path]:
    return {n: Path("/nowhere") / n for n in names}


def test_sidecars_are_read_at_once_not_one_after_another() -> None:
    names = [f"s{i:02d}" for i in range(21)]
    reader = SlowReader(dict.fromkeys(names, 0.2))
    try:
        started = time.monotonic()
        read = reader.read_many(sockets(names))
        took = time.monotonic() - started
    finally:
        reader.close()
    assert read == {n: {"cluster.api|v1.upstream_rq_total": 7} for n in names}
    assert reader.most == 21
    assert took < 0.2 * 21 / 4, took  # one after another: 4.2 s


def test_the_pool_bounds_how_many_are_asked_at_once() -> None:
    names = [f"s{i}" for i in range(6)]
    reader = SlowReader(dict.fromkeys(names, 0.05), parallel=2)
    try:
        read = reader.read_many(sockets(names))
    finally:
        reader.close()
    assert all(isinstance(v, dict) for v in read.values())
    assert reader.most == 2


def test_a_sidecar_past_the_budget_is_unreadable_and_the_others_are_read() -> None:
    reader = SlowReader({"stuck": 1.0}, budget=0.3)
    try:
        started = time.monotonic()
        read = reader.read_many(sockets(["a", "stuck", "broken", "b"]))
        took = time.monotonic() - started
    finally:
        reader.close()
    assert took < 0.8, took
    assert read["a"] == read["b"] == {"cluster.api|v1.upstream_rq_total": 7}
    assert read["stuck"] == "unreadable: it did not answer within the read's time"
    assert read["broken"] == "unreadable: admin answered 503"
