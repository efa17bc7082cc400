"""Helpers shared by the headline benchmark's rows (bench/headline.py and the row modules).

bench/bringup.py and bench/live.py keep their own helpers; the rows import those where they
fit (commands, cleanup, tables) and add here only what they lack: the row results that
`headline.py table` assembles, a quiet-machine wait, process memory and CPU from /proc,
image-only mesh files, the images every row needs, and cleanup by the bench's own label.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bringup import (
    APP_CONTEXT,
    DOCKER_TIMEOUT,
    MIB,
    BenchError,
    Memory,
    docker,
    progress,
    run,
    smaps_rollup,
)

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"  # one JSON per row command; `headline.py table` reads them
RESULTS_MD = BENCH / "results.md"
PYTHON = ".venv/bin/python"
# On every container, network and image the headline rows make themselves (compose peer,
# hand-written Envoys, the app image); the value is the making process's PID.
BENCH_LABEL = "dev.devmesh.bench"
os.environ["DEVMESH_PULL"] = "never"  # devmesh functions called in-process see it too


# -- row results --------------------------------------------------------------------------------


@dataclass
class Line:
    """One line of the headline table."""

    key: str  # "1a": sorts the table
    measure: str
    devmesh: str
    peer: str = "—"
    ratio: str = "—"
    target: str = "—"
    met: bool | None = None  # None: no target


@dataclass
class RowResult:
    row: str  # the subcommand: bringup, saves, ...
    command: str  # how to run it alone
    lines: list[Line] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # Markdown, below the table
    notes: list[str] = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0
    conditions: dict[str, Any] = field(default_factory=dict)

    def save(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.row}.json"
        path.write_text(json.dumps(asdict(self), indent=1, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> RowResult:
        data = json.loads(path.read_text())
        data["lines"] = [Line(**line) for line in data["lines"]]
        return cls(**data)


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def conditions() -> dict[str, Any]:
    """What else ran: the load average and other devmesh daemons (they share the cores)."""
    return {
        "load1": round(os.getloadavg()[0], 2),
        "other_daemons": len(other_daemons()),
        "cores": os.cpu_count(),
        "host": platform.node(),
    }


def ratio(ours: float, theirs: float, digits: int = 2) -> str:
    return f"{ours / theirs:.{digits}f}" if theirs > 0 else "—"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank (as bench/live.py: with 50 values, p99 is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# -- a quiet machine ----------------------------------------------------------------------------


def other_daemons(own: Iterable[int] = ()) -> list[str]:
    """Command lines of devmesh daemons not started by this process (`pgrep -af` by hand:
    pgrep would also match this benchmark's own command line)."""
    mine = set(own)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"devmesh.daemon" in argv:
            found.append(" ".join(a.decode(errors="replace") for a in argv if a))
    return found


def wait_quiet(max_wait: float, every: float = 30.0, max_load: float = 1.5) -> str:
    """Until no other devmesh daemon runs and the 1-minute load is below `max_load`,
    checking every `every` seconds for at most `max_wait`; says how it ended."""
    began = time.monotonic()
    while True:
        daemons, load = other_daemons(), os.getloadavg()[0]
        if not daemons and load < max_load:
            return f"quiet after {time.monotonic() - began:.0f}s (load {load:.2f})"
        waited = time.monotonic() - began
        if waited + every > max_wait:
            return (
                f"not quiet after {waited:.0f}s: load {load:.2f}, {len(daemons)} other devmesh "
                "daemon(s); measured anyway"
            )
        progress(f"waiting for a quiet machine: load {load:.2f}, {len(daemons)} other daemon(s)")
        time.sleep(every)


def machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle so far (/proc/stat, all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def settle(max_wait: float = 60.0, below: float = 0.2, window: float = 2.0) -> float:
    """Until the machine's CPUs are less than `below` busy over `window` s (the engine and
    the kernel finish tearing down what the previous row removed); the last busy share."""
    began = time.monotonic()
    cores = os.cpu_count() or 1
    while True:
        before = machine_busy()
        time.sleep(window)
        busy = (machine_busy() - before) / window / cores
        if busy < below or time.monotonic() - began > max_wait:
            return busy


# -- processes ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` so far (/proc/PID/stat, in clock ticks)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the command may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parents() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            out[int(entry.name)] = int(text[text.rindex(")") + 2 :].split()[1])
    return out


def process_tree(root: int, ppids: dict[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def pss_mib(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += smaps_rollup(pid).pss
        except (OSError, KeyError):
            continue  # gone meanwhile (busybox nc forks per connection)
    return total


def container_pids(ids: Sequence[str]) -> dict[str, tuple[str, int]]:
    """Container id -> (name, host PID of its first process); running ones only."""
    if not ids:
        return {}
    out: dict[str, tuple[str, int]] = {}
    for c in json.loads(docker("inspect", *ids)):
        pid = int(c["State"]["Pid"])
        if pid > 0:
            out[str(c["Id"])] = (str(c["Name"]).lstrip("/"), pid)
    return out


def admin_stats(sockets: dict[str, Path], regex: str) -> dict[str, dict[str, float] | str]:
    """Numeric stats matching `regex` from each Envoy's admin socket; a string where one
    could not be read."""
    from devmesh.adapters.envoy_admin import StatsReader

    reader = StatsReader(regex)
    try:
        return reader.read_many(sockets)
    finally:
        reader.close()


def memory_stats(values: Sequence[Memory]) -> dict[str, float]:
    return {
        "n": len(values),
        "rss": median([m.rss for m in values]),
        "pss": median([m.pss for m in values]),
        "private": median([m.private for m in values]),
        "private_max": max((m.private for m in values), default=float("nan")),
    }


def mib(value: float) -> str:
    return f"{value:.1f}"


# -- images and meshes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Images:
    envoy: str  # devmesh's sidecar image, by the name devmesh resolved
    pause: str
    app: str  # examples/shop/app, built by this process


def devmesh_images() -> tuple[str, str]:
    """The sidecar and pod-owner images devmesh itself would use (found, or built locally
    as devmesh does; never pulled: DEVMESH_PULL=never)."""
    import docker as docker_py  # devmesh's own dependency

    from devmesh.adapters import images

    client = docker_py.from_env(timeout=120)
    try:
        envoy = images.ensure_envoy_image(client, None, "never", progress)
        pause = images.ensure_pause_image(client, "never", progress)
    finally:
        client.close()
    return envoy.name, pause.name


def app_tag() -> str:
    return f"devmesh-bench-app:{os.getpid()}"


def build_app_image() -> Images:
    """The example's app image under a tag of this process's own, so every row's mesh names
    it with `image:` (no `build:`): devmesh and its peers start the very same image, and no
    row measures a build. Removed by `remove_app_image`."""
    envoy, pause = devmesh_images()
    # The app builds FROM busybox:1.35: the project's own setup makes it where it is missing
    # (`make engine` runs this too; it does nothing when the image is there).
    base = subprocess.run(
        [str(BENCH.parent / "scripts" / "make-base-image.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if base.returncode != 0:
        raise BenchError(f"scripts/make-base-image.sh failed: {base.stderr.strip()[-300:]}")
    tag = app_tag()
    result = subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "--label",
            f"{BENCH_LABEL}={os.getpid()}",
            "-t",
            tag,
            str(APP_CONTEXT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},  # no buildx here: the legacy builder
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"building {tag} failed: {result.stderr.strip()[-500:]}")
    return Images(envoy, pause, tag)


def remove_app_image() -> None:
    run(["docker", "image", "rm", "-f", app_tag()], DOCKER_TIMEOUT)


def chain_text(
    name: str,
    n: int,
    image: str,
    port: str = "@PORT@",
    calls: bool = True,
) -> str:
    """bench/bringup.py's chain of N services (s01 -> s02 -> ...; behind an ingress that
    routes to s01), with `image:` and no `build:`. Three digits from 100 services on."""
    width = max(2, len(str(n)))
    names = [f"s{i:0{width}d}" for i in range(1, n + 1)]
    lines = [
        f"mesh: {name}",
        "defaults:",
        "  timeout: 5s",
        "  health: {path: /healthz, interval: 1s}",
        "ingress:",
        f"  port: {port}",
        "  routes:",
        f"    - {{name: site, match: {{path_prefix: /}}, service: {names[0]}}}",
        "services:",
    ]
    for i, svc in enumerate(names):
        lines += [f"  {svc}:", f"    image: {image}", "    port: 8000"]
        if calls and i + 1 < n:
            lines += [f'    env: {{UPSTREAMS: "{names[i + 1]}"}}', f"    calls: [{names[i + 1]}]"]
    return "\n".join(lines) + "\n"


# -- cleanup by the bench's label ---------------------------------------------------------------


def sweep_label(value: str) -> str:
    """Remove containers and networks carrying BENCH_LABEL=value; say what was left."""
    left = []
    selector = f"label={BENCH_LABEL}={value}"
    ids = docker("ps", "-aq", "--filter", selector).split()
    if ids:
        left.append(f"{len(ids)} containers")
        run(["docker", "rm", "-f", "-v", *ids], DOCKER_TIMEOUT * 2)
    nets = docker("network", "ls", "-q", "--filter", selector).split()
    if nets:
        left.append(f"{len(nets)} networks")
        run(["docker", "network", "rm", *nets], DOCKER_TIMEOUT)
    return ", ".join(left)


def free_subnet() -> str:
    """A /24 in 172.16.0.0/16 that no Docker network uses: Docker's own pools start at
    172.17, so networks made meanwhile by others do not take it either."""
    used = set()
    for net in json.loads(docker("network", "inspect", *docker("network", "ls", "-q").split())):
        for cfg in (net.get("IPAM") or {}).get("Config") or []:
            used.add(str(cfg.get("Subnet", "")))
    start = os.getpid() % 200 + 20
    for k in range(200):
        subnet = f"172.16.{(start + k) % 250 + 1}.0/24"
        if subnet not in used and "172.16.0.0/16" not in used:
            return subnet
    raise BenchError("no free /24 in 172.16.0.0/16 for the peer's network")


def shim_pss(pids: Iterable[int], ppids: dict[int, int]) -> float:
    """Pss of the containerd shims that parent `pids` (one per container)."""
    shims = {ppids.get(pid, 0) for pid in pids} - {0, 1}
    return pss_mib(shims)


__all__ = ["MIB", "Memory"]
