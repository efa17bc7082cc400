"""The remote (tcp) transport beside the local-socket one, in one run: bring-up and save →
traffic on the example mesh.

    .venv/bin/python bench/transport.py [--saves 30]

- *local socket*: the shared local engine, the default transport (xDS over a UNIX socket
  bind-mounted into each pod).
- *tcp, remote engine*: the simulated remote engine that behaves like Docker Desktop
  (scripts/remote-engine.sh: dockerd in a container, reached over tcp://127.0.0.1:PORT through
  slirp4netns; its pods dial the daemon at host.docker.internal), DEVMESH_TRANSPORT=tcp.

For each: `devmesh up -d --wait` of examples/shop without its delay fault (5 pods; the app
image, busybox, sidecar, pause and guard images are on both engines beforehand, so no row
builds), timed; then bench/live.py's save measurement (each save flips catalog's route between
all-v1 and all-v2 with one in-place write; latency = from just before the write to the first
response served by the new version, GETs in a loop through the ingress on one keep-alive
connection; 0.3 s between saves); then down. The remote engine is started by this bench and
removed at its end (by its label and PIDs); traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _common as c
import live
from _common import BenchError, percentile, progress, table

from devmesh.adapters import images
from devmesh.plan.desired import GUARD_IMAGE

SCRIPT = c.ROOT / "scripts" / "remote-engine.sh"
TARGET_RATIO = 2.0  # remote save → traffic p50 at most 2× local
# What devmesh needs on a fresh engine, under the names it looks for (the probe image is
# the tcp transport's pod owner); copied from the local engine where it has them.
IMAGES = (
    "busybox:1.35",
    images.local_envoy_image(),
    images.LOCAL_PAUSE_IMAGE,
    images.PROBE_PAUSE_IMAGE,
    GUARD_IMAGE,
)


def outer_env() -> dict[str, str]:
    """The local engine's environment; this bench owns the remote engine it starts (should
    it die without stopping it, the next start removes it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DEVMESH_TRANSPORT")}
    return {**env, "REMOTE_ENGINE_OWNER": str(os.getpid())}


def start_remote(name: str) -> dict[str, str]:
    began = time.perf_counter()
    done = subprocess.run(
        [str(SCRIPT), "start", name],
        capture_output=True,
        text=True,
        env=outer_env(),
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"the remote engine did not start:\n{done.stderr}")
    env = {}
    for line in done.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    have = [
        image
        for image in (*IMAGES, c.APP_IMAGE)
        if subprocess.run(
            ["docker", "image", "inspect", image],
            capture_output=True,
            env=outer_env(),
            check=False,
        ).returncode
        == 0
    ]
    loaded = subprocess.run(
        [str(SCRIPT), "load", name, *have],
        capture_output=True,
        text=True,
        env=outer_env(),
        timeout=300,
        check=False,
    )
    if loaded.returncode != 0:
        raise BenchError(f"copying images into the remote engine failed:\n{loaded.stderr}")
    progress(
        f"remote engine {env['DOCKER_HOST']} up with {len(have)} images in "
        f"{time.perf_counter() - began:.1f} s"
    )
    return env


def measure(label: str, env: dict[str, str], work: Path, saves: int, projects: list[str]) -> Any:
    c.ENV.clear()
    c.ENV.update({**outer_env(), "DEVMESH_PULL": "never", **env})
    mesh = live.example_mesh(work, label, fault=False)  # named by its transport
    project = f"tr{uuid.uuid4().hex[:6]}"
    return live.measure_saves(mesh, project, saves, projects)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saves", type=int, default=30)
    args = parser.parse_args()
    c.raise_on_sigterm()
    if os.geteuid() != 0:
        print("bench/transport.py needs root (the remote engine)", file=sys.stderr)
        return 1
    name = f"bench{uuid.uuid4().hex[:6]}"
    load_before = os.getloadavg()
    results = []
    projects: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="devmesh-transport-") as tmp:
            work = Path(tmp)
            results.append(
                ("local socket", measure("local socket", {}, work, args.saves, projects))
            )
            remote = start_remote(name)
            results.append(
                (
                    "tcp, remote engine",
                    measure("tcp, remote engine", remote, work, args.saves, projects),
                )
            )
    except BenchError as exc:
        print(f"bench/transport.py: {exc}", file=sys.stderr)
        return 1
    finally:
        with c.shielded():
            subprocess.run([str(SCRIPT), "stop", name], env=outer_env(), timeout=120, check=False)
    rows = []
    p50s = []
    for label, r in results:
        lat = r.latencies()
        missed = len(r.saves) - len(lat)
        p50 = percentile(lat, 50) if lat else float("nan")
        p50s.append(p50)
        rows.append(
            [
                label,
                f"{r.up_s:.1f}",
                f"{p50:.0f}",
                f"{percentile(lat, 99):.0f}" if lat else "-",
                f"{max(lat):.0f}" if lat else "-",
                f"{missed} / {len(r.saves)}",
            ]
        )
    ratio = p50s[1] / p50s[0] if p50s[0] else float("nan")
    c.ENV.clear()
    c.ENV.update(outer_env())
    print(f"`{' '.join(['.venv/bin/python', 'bench/transport.py', *sys.argv[1:]])}`\n")
    print(c.machine())
    print(
        f"\nload average before: {load_before[0]:.2f} / after: {os.getloadavg()[0]:.2f} "
        "(1 min; 2 cores shared with other jobs)\n"
    )
    print(
        table(
            [
                "transport",
                "bring-up (up -d --wait) s",
                "save→traffic p50 ms",
                "p99 ms",
                "max ms",
                "missed saves",
            ],
            rows,
        )
    )
    met = "yes" if ratio <= TARGET_RATIO else "**no**"
    print(f"\nremote p50 / local p50 = {ratio:.2f} (target ≤ {TARGET_RATIO:.0f}): {met}")
    print(
        "\nWhere the time goes (bench/live.py's columns: *write → applied* until the daemon logs"
        " `save: applied`, the same code on both; *rest*: the push over the transport, Envoy,"
        " the request loop through the published port; *target met* is live.py's own 75/250 ms"
        " target, not this bench's):\n"
    )
    print(table(live.SAVE_COLUMNS, live.save_rows([r for _, r in results])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
