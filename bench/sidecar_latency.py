"""Row 4: the latency two sidecars add: through devmesh's sidecars, through the same two hops
of a minimal hand-written Envoy config, and with no proxy at all, each path measured by wrk
(paced, `nsenter` into the client pod's network namespace) in rotating rounds. The method is
written out once, in the row's details (bench/headline.py `row_latency`, bench/results.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
import yaml
from _common import BENCH_LABEL, BenchError, Images, cpu_seconds, docker, median, progress

from devmesh.core.addressing import INBOUND_PORT, service_addresses
from devmesh.plan.desired import SIDECAR_FLAGS

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FLAGS = list(SIDECAR_FLAGS)  # devmesh's sidecar flags, for every Envoy here
APP_PORT = 8000
HAND_OUT_PORT = 10080  # the hand-written outbound listener, on 127.0.0.1 in the client pod
RESULT = re.compile(r"^RESULT (.*)$", re.MULTILINE)
PACED = """
local pause_ms = {pause_ms}
function delay() return pause_ms end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def _hcm(prefix: str, route: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM + ".HttpConnectionManager",
            "stat_prefix": prefix,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": prefix,
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, **route}],
                    }
                ]
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
            ],
        },
    }


def _static(route: dict[str, Any], address: str, port: int, clusters: list[Any]) -> str:
    return json.dumps(
        {
            "static_resources": {
                "listeners": [
                    {
                        "name": "l",
                        "address": {"socket_address": {"address": address, "port_value": port}},
                        "filter_chains": [{"filters": [_hcm("l", route)]}],
                    }
                ],
                "clusters": clusters,
            }
        }
    )


def app_config(port: int) -> str:
    """The fast app: every request answered by Envoy itself."""
    body = {"direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}
    return _static(body, "0.0.0.0", port, [])


def _cluster(name: str, ip: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": ip, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }


def hand_outbound(server_ip: str) -> str:
    route = {"route": {"cluster": "server"}}
    return _static(route, "127.0.0.1", HAND_OUT_PORT, [_cluster("server", server_ip, INBOUND_PORT)])


def hand_inbound() -> str:
    route = {"route": {"cluster": "app"}}
    return _static(route, "0.0.0.0", INBOUND_PORT, [_cluster("app", "127.0.0.1", APP_PORT)])


def mesh_text(images: Images, plain: bool) -> str:
    """The two-service mesh. `plain`: its sidecars do the hand-written configs' work (no
    mTLS, no access logs, no tracing); else devmesh's defaults (all three on)."""

    def service(port: int) -> dict[str, Any]:
        return {
            "image": images.envoy,
            "port": port,
            "command": ["--config-yaml", app_config(port), *FLAGS],
            "health": {"path": "/healthz", "interval": "1s"},
        }

    doc: dict[str, Any] = {"mesh": "latency"}
    if plain:
        doc["tls"] = {"mode": "DISABLED"}
        doc["observability"] = {"access_log": False, "tracing": False}
    doc |= {
        "services": {
            "server": service(APP_PORT),
            "client": {**service(APP_PORT + 1), "calls": ["server"]},
        },
    }
    return yaml.safe_dump(doc, sort_keys=False, width=1 << 20)


# -- the hand-written pods ----------------------------------------------------------------------


@dataclass
class HandPods:
    client_pid: int  # the client pod owner's host PID (its network namespace)
    server_ip: str
    outbound: int  # host PIDs of the two Envoys
    inbound: int
    admins: dict[str, Path]  # role -> admin socket on the host


def _run(name: str, image: str, network: str, *args: str, admin: Path | None = None) -> str:
    mount = ["-v", f"{admin}:/admin"] if admin is not None else []
    return docker(
        "run",
        "-d",
        "--name",
        name,
        "--label",
        f"{BENCH_LABEL}={os.getpid()}",
        "--network",
        network,
        *mount,
        image,
        *args,
    ).strip()


def _with_admin(config: str) -> str:
    """The config with an admin API on a UNIX socket in /admin (bind-mounted from the host),
    read after the rounds for Envoy's own stats."""
    data = json.loads(config)
    data["admin"] = {"address": {"pipe": {"path": "/admin/admin.sock", "mode": 0o600}}}
    return json.dumps(data)


def hand_pods(
    images: Images,
    net: str,
    tag: str,
    inbound: str,
    outbound: Callable[[str], str],
    admin: Path,
) -> HandPods:
    """A server pod (pause, the app, an inbound Envoy with `inbound`) and a client pod (pause,
    an outbound Envoy with `outbound(server address)`) on network `net`."""
    _run(f"{tag}-server", images.pause, net)
    ip = docker(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", f"{tag}-server"
    ).strip()
    pod = f"container:{tag}-server"
    _run(f"{tag}-server-app", images.envoy, pod, "--config-yaml", app_config(APP_PORT), *FLAGS)
    admins = {"inbound": admin / f"{tag}-in", "outbound": admin / f"{tag}-out"}
    for where in admins.values():
        where.mkdir(parents=True)
    inbound = _with_admin(inbound)
    _run(
        f"{tag}-server-sidecar",
        images.envoy,
        pod,
        "--config-yaml",
        inbound,
        *FLAGS,
        admin=admins["inbound"],
    )
    _run(f"{tag}-client", images.pause, net)
    pod = f"container:{tag}-client"
    out = _with_admin(outbound(ip))
    _run(
        f"{tag}-client-sidecar",
        images.envoy,
        pod,
        "--config-yaml",
        out,
        *FLAGS,
        admin=admins["outbound"],
    )
    return HandPods(
        c.container_pid(f"{tag}-client"),
        ip,
        c.container_pid(f"{tag}-client-sidecar"),
        c.container_pid(f"{tag}-server-sidecar"),
        {role: where / "admin.sock" for role, where in admins.items()},
    )


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    netns_pid: int
    url: str
    envoys: dict[str, int]  # role -> host PID, whose CPU time is read around each round
    rounds: list[dict[str, float]] = field(default_factory=list)


def wrk(path: Target, script: Path, connections: int, seconds: float) -> dict[str, float]:
    cmd = ["nsenter", f"--net=/proc/{path.netns_pid}/ns/net", "--", "wrk", "-t1"]
    cmd += [f"-c{connections}", f"-d{seconds:g}s", "--timeout", "2s", "-s", str(script), path.url]
    before = {role: cpu_seconds(pid) for role, pid in path.envoys.items()}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk on {path.name} did not end") from None
    after = {role: cpu_seconds(pid) for role, pid in path.envoys.items()}
    match = RESULT.search(out.stdout)
    if out.returncode != 0 or match is None:
        raise BenchError(f"wrk on {path.name} failed: {out.stdout[-400:]} {out.stderr[-400:]}")
    n, dur, conn, read, write, status, timeout, p50, p90, p99, top = map(int, match[1].split())
    result = {
        "requests": n,
        "rate": n / (dur / 1e6),
        "errors": conn + read + write + status + timeout,
        "p50": p50 / 1000,  # ms
        "p90": p90 / 1000,
        "p99": p99 / 1000,
        "max": top / 1000,
    }
    for role in path.envoys:
        result[f"cpu_us_{role}"] = (after[role] - before[role]) * 1e6 / max(n, 1)
    return result


def wait_serving(path: Target, script: Path) -> None:
    deadline = time.monotonic() + 60
    last = ""
    while time.monotonic() < deadline:
        try:
            r = wrk(path, script, 1, 1)
            if r["requests"] > 0 and r["errors"] == 0:
                return
            last = f"{r['errors']:.0f} errors"
        except BenchError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise BenchError(f"{path.name} does not serve: {last}")


@dataclass
class LatencyResult:
    rate: float
    connections: int
    seconds: float
    paths: list[Target]

    def figure(self, name: str, key: str) -> float:
        path = next(p for p in self.paths if p.name == name)
        return median([r[key] for r in path.rounds])


def measure(
    images: Images,
    project: str,
    work: Path,
    rate: float,
    connections: int,
    seconds: float,
    rounds: int,
) -> LatencyResult:
    """Bring up the meshes and the hand-written pods, measure every path `rounds` times;
    everything removed after."""
    projects = {"devmesh": project, "devmesh, defaults": f"{project}d"}
    try:
        devmesh_paths = []
        for name, proj in projects.items():
            mesh_file = work / "latency" / proj / "devmesh.yaml"
            mesh_file.parent.mkdir(parents=True)
            mesh_file.write_text(mesh_text(images, plain=name == "devmesh"))
            progress(f"latency: devmesh up ({proj}: {name}) ...")
            c.up(mesh_file, proj)
            client = f"{proj}-client-default-0"
            server = f"{proj}-server-default-0"
            address = service_addresses(["server", "client"])["server"]
            devmesh_paths.append(
                Target(
                    name,
                    c.container_pid(client),
                    f"http://{address}:80/",
                    {
                        "outbound": c.container_pid(f"{client}-sidecar"),
                        "inbound": c.container_pid(f"{server}-sidecar"),
                    },
                )
            )
        progress("latency: hand-written pods ...")
        tag = f"hl{os.getpid()}"
        net = f"{tag}-latency"
        docker("network", "create", "--label", f"{BENCH_LABEL}={os.getpid()}", net)
        admin = work / "admin"
        hand = hand_pods(images, net, f"{tag}-hand", hand_inbound(), hand_outbound, admin)
        paths = [
            *devmesh_paths,
            Target(
                "hand-written",
                hand.client_pid,
                f"http://127.0.0.1:{HAND_OUT_PORT}/",
                {"outbound": hand.outbound, "inbound": hand.inbound},
            ),
            # Between the hand-written pods: a devmesh pod's app port is closed to other pods
            # (desired.guard_rules), and these run the same app on the same image.
            Target("no proxy", hand.client_pid, f"http://{hand.server_ip}:{APP_PORT}/", {}),
        ]
        with tempfile.NamedTemporaryFile("w", suffix=".lua", dir=work, delete=False) as fh:
            fh.write(PACED.replace("{pause_ms}", f"{connections / rate * 1000:.3f}"))
        script = Path(fh.name)
        for path in paths:
            wait_serving(path, script)
            wrk(path, script, connections, 2)  # warm-up: connections and pools open
        for r in range(rounds):
            order = paths[r % len(paths) :] + paths[: r % len(paths)]
            for path in order:
                result = wrk(path, script, connections, seconds)
                path.rounds.append(result)
                progress(
                    f"latency round {r + 1}/{rounds} {path.name}: p50 {result['p50']:.3f} "
                    f"p90 {result['p90']:.3f} p99 {result['p99']:.3f} ms, "
                    f"{result['rate']:.0f}/s, {result['errors']:.0f} errors"
                )
        return LatencyResult(rate, connections, seconds, paths)
    finally:
        with c.shielded():
            for proj in projects.values():
                c.down(proj)
            c.sweep_label(str(os.getpid()))
