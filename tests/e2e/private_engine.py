"""A private Docker engine for tests that stop, kill and restart the engine under a mesh.

The shared engine is never touched: this starts a second `dockerd` with its own data root,
exec root, socket, containerd, and address pool, copies the local images devmesh needs into
it (`docker save | docker load`: there is no registry), and removes all of it afterwards.

    def test_x(private_engine: PrivateEngine) -> None:
        env = private_engine.env()              # DOCKER_HOST=unix://.../docker.sock
        private_engine.stop(signal.SIGKILL)     # the engine is gone (by its PID)
        answered = private_engine.start()       # monotonic time it answered again

Needs root (dockerd, mounts, iptables) and a `dockerd` binary; skips with the reason when
either is missing. Use it with `pytest_plugins = ["tests.e2e.private_engine"]`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import requests.exceptions

from devmesh import labels
from devmesh.adapters import images

DOCKERD_PATHS = ("/usr/sbin/dockerd", "/usr/bin/dockerd")
# Candidate pools for the private engine's networks: outside the main engine's default pools
# (172.17-31.0.0/16, 192.168.0.0/16); the first that nothing on the machine uses is taken.
POOL_CANDIDATES = tuple(f"10.{n}.0.0/16" for n in range(213, 233))
START_TIMEOUT = 30.0  # seconds for dockerd to answer (measured: well under one)
STOP_TIMEOUT = 20.0  # seconds for a SIGTERMed dockerd to stop its containers and exit
_PR_SET_PDEATHSIG = 1


def find_dockerd() -> str | None:
    for path in DOCKERD_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("dockerd")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM dockerd if the test process dies without teardown,
    so a crashed pytest leaves no engine running (dockerd then stops its containers)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): it has exited, only not yet been reaped.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return False


def _pid_exists(pid: int) -> bool:
    """kill(pid, 0) succeeds: alive, or a zombie not yet reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, timeout: float, reaped: bool = False) -> bool:
    """Until `pid` has exited (`reaped`: until it is gone from the process table too)."""
    check = _pid_exists if reaped else _pid_alive
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not check(pid):
            return True
        time.sleep(0.05)
    return not check(pid)


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Subnets in use: the main engine's networks, the host's addresses and routes, and
    what other rules in DOCKER-USER already name (another private engine's pool)."""
    used: list[ipaddress.IPv4Network] = []
    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
        main = docker.from_env(timeout=10)
        for net in main.networks.list():
            for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
                with contextlib.suppress(ValueError, KeyError):
                    used.append(ipaddress.ip_network(cfg["Subnet"], strict=False))  # type: ignore[arg-type]
    words: list[str] = []
    for cmd in (["ip", "-4", "-o", "addr"], ["ip", "-4", "route"], ["iptables", "-S"]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            words += subprocess.run(
                cmd, capture_output=True, text=True, timeout=10, check=False
            ).stdout.split()
    for word in words:
        if "/" in word or word.count(".") == 3:
            with contextlib.suppress(ValueError):
                net = ipaddress.ip_network(word, strict=False)
                if isinstance(net, ipaddress.IPv4Network) and not net.is_loopback:
                    used.append(net)
    return used


def pick_pool() -> str:
    used = _used_networks()
    for candidate in POOL_CANDIDATES:
        net = ipaddress.ip_network(candidate)
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return candidate
    pytest.skip(f"no free address pool for a private engine among {POOL_CANDIDATES}")


def images_to_copy() -> list[str]:
    """What devmesh needs offline: the examples' base image, and the sidecar and pod-owner
    images under the names devmesh looks for (adapters/images.py), where the main engine has
    them; a missing one devmesh builds itself on the private engine."""
    return [
        "busybox:1.35",
        images.default_envoy_image(),
        images.local_envoy_image(),
        images.DEFAULT_PAUSE_IMAGE,
        images.LOCAL_PAUSE_IMAGE,
    ]


class PrivateEngine:
    """One private dockerd: started, killed and restarted by PID, always with the same roots."""

    def __init__(self, root: Path, dockerd: str, pool: str) -> None:
        self.root = root
        self.dockerd = dockerd
        self.pool = pool
        self.data_root = root / "data"
        self.exec_root = root / "exec"
        self.socket = root / "docker.sock"
        self.pidfile = root / "docker.pid"
        self.log = root / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.rule: list[str] | None = None  # the DOCKER-USER rule inserted, to delete exactly
        self.starts: list[float] = []  # wall-clock times it answered (for timelines)
        self.reap_waits: list[float] = []  # seconds until a dead containerd left the table

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for anything that should use this engine (the devmesh CLI)."""
        return {**os.environ, "DOCKER_HOST": self.host, "DEVMESH_PULL": "never", **extra}

    def client(self, timeout: int = 10) -> docker.DockerClient:
        # API 1.41: the engine's own (20.10); saying it skips the version round trip.
        return docker.DockerClient(base_url=self.host, version="auto", timeout=timeout)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    # -- lifecycle ----------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            self.dockerd,
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "-H", self.host,
            "--pidfile", str(self.pidfile),
            "--bridge=none",  # no default bridge: devmesh makes its own network
            "--iptables=false",  # leave the main engine's rules alone
            "--ip-masq=false",  # nothing from its containers leaves the machine
            "--default-address-pool", f"base={self.pool},size=24",
            # Should dockerd find a system containerd and use it after all, its containers
            # stay apart from the main engine's (another namespace).
            "--containerd-namespace", f"devmesh-e2e-{os.getpid()}",
            "--containerd-plugins-namespace", f"devmesh-e2e-{os.getpid()}-plugins",
            # No --containerd: dockerd supervises a containerd of its own under the exec
            # root; it dies with dockerd (SIGKILL included) while the shims, and so the
            # containers, live on until the next dockerd kills them (no live-restore).
        ]  # fmt: skip

    def answers(self, timeout: int = 2) -> bool:
        """Does it answer `docker info` (GET /info)?"""
        try:
            client = self.client(timeout=timeout)
        except docker.errors.DockerException:
            return False
        try:
            client.info()
            return True
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
            return False
        finally:
            client.close()

    def start(self) -> float:
        """Start dockerd with the same roots; the monotonic time it first answered."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"the private dockerd (pid {self.process.pid}) still runs")
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.exec_root.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # the tests start it from the main thread only
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.answers():
                answered = time.monotonic()
                self.starts.append(time.time())
                return answered
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-3000:]
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"the private dockerd did not answer within {START_TIMEOUT}s:\n{tail}")

    def _containerd_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.exec_root / "containerd" / "containerd.pid").read_text().strip())
        return None

    def stop(self, sig: signal.Signals = signal.SIGKILL, timeout: float = STOP_TIMEOUT) -> None:
        """Stop dockerd by its PID with `sig` (SIGKILL: a crash; SIGTERM: a clean stop, which
        also stops its containers) and wait until it and its own containerd are gone."""
        if self.process is None:
            return
        containerd = self._containerd_pid()
        if containerd is not None and not self._owned(containerd):
            containerd = None  # not ours (a stale file): never wait on or kill it
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        # Its containerd gets SIGKILL when dockerd dies (dockerd sets that up); wait for it,
        # and end it by its PID if it outlives its parent. Wait until it is reaped too: the
        # next dockerd takes a PID that still answers kill(0) (a zombie) for a running
        # containerd, and then waits for a socket that never comes ("timeout waiting for
        # containerd to start").
        if containerd is not None:
            # Owned was checked before the kill: a zombie's cmdline is empty.
            if not _wait_gone(containerd, 5):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(containerd, signal.SIGKILL)
            waited = time.monotonic()
            if not _wait_gone(containerd, 15, reaped=True):
                raise RuntimeError(f"the private engine's containerd ({containerd}) lingers")
            self.reap_waits.append(time.monotonic() - waited)

    def restart(self, sig: signal.Signals = signal.SIGKILL) -> float:
        """Kill (or stop) dockerd and start it again; the monotonic time it answered."""
        self.stop(sig)
        return self.start()

    def _owned(self, pid: int) -> bool:
        """Is `pid` a process of this engine (its command line names our exec root)?"""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self.exec_root).encode() in cmdline

    def _leftover_pids(self) -> list[int]:
        """Processes still naming our exec root (containerd shims after a failed teardown)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._owned(int(entry.name)):
                found.append(int(entry.name))
        return found

    # -- images, networking, cleanup ----------------------------------------------------------

    def copy_images(self, names: list[str]) -> list[str]:
        """`docker save | docker load` from the main engine for each name it has."""
        main_env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
        docker_cli = shutil.which("docker") or "docker"
        present = [
            name
            for name in dict.fromkeys(names)
            if subprocess.run(
                [docker_cli, "image", "inspect", name],
                capture_output=True,
                env=main_env,
                timeout=30,
                check=False,
            ).returncode
            == 0
        ]
        if not present:
            return []
        save = subprocess.Popen(
            [docker_cli, "save", *present], stdout=subprocess.PIPE, env=main_env
        )
        try:
            load = subprocess.run(
                [docker_cli, "-H", self.host, "load"],
                stdin=save.stdout,
                capture_output=True,
                timeout=300,
                check=False,
            )
        finally:
            if save.stdout is not None:
                save.stdout.close()
            try:
                save.wait(60)
            except subprocess.TimeoutExpired:
                save.kill()
                save.wait()
        if save.returncode != 0 or load.returncode != 0:
            raise RuntimeError(
                f"copying {present} into the private engine failed: {load.stderr.decode()}"
            )
        return present

    def allow_forwarding(self, comment: str) -> None:
        """Containers on one of our bridges reach each other only with a narrow accept rule
        when the main engine left FORWARD's policy at DROP and bridged packets go through
        iptables (br_netfilter): source and destination both in our pool, nothing else."""
        if shutil.which("iptables") is None:
            return
        try:
            nf = Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip()
        except OSError:
            nf = "0"
        rules = subprocess.run(
            ["iptables", "-S", "FORWARD"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        if nf != "1" or "-P FORWARD DROP" not in rules:
            return
        chain = "DOCKER-USER" if "-j DOCKER-USER" in rules else "FORWARD"
        spec = ["-s", self.pool, "-d", self.pool, "-m", "comment", "--comment", comment]
        subprocess.run(["iptables", "-I", chain, *spec, "-j", "ACCEPT"], check=True, timeout=10)
        self.rule = [chain, *spec, "-j", "ACCEPT"]

    def remove_rule(self) -> None:
        if self.rule is not None:
            subprocess.run(["iptables", "-D", *self.rule], check=False, timeout=10)
            self.rule = None

    def remove_managed(self) -> None:
        """Every container and network devmesh made on this engine, by label."""
        client = self.client(timeout=30)
        try:
            managed = {"label": [f"{labels.MANAGED}=1"]}
            # Joined containers first: an engine may refuse to remove a namespace owner that
            # others still join.
            found = client.containers.list(all=True, filters=managed)
            found.sort(key=lambda c: c.labels.get(labels.ROLE) == "pod")
            for container in found:
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
            for network in client.networks.list(filters=managed):
                with contextlib.suppress(docker.errors.NotFound):
                    network.remove()
        finally:
            client.close()

    def unmount_all(self) -> None:
        """What dockerd left mounted under our root (its data root bind, overlays, netns)."""
        points = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].replace("\\040", " ")
                if point == str(self.root) or point.startswith(f"{self.root}/"):
                    points.append(point)
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", point], capture_output=True, check=False, timeout=30)
            if any(
                line.split()[4] == point
                for line in Path("/proc/self/mountinfo").read_text().splitlines()
            ):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    def close(self) -> None:
        """Remove everything: containers and networks by label, dockerd (SIGTERM by PID),
        leftover processes of ours by PID, mounts, the roots, the iptables rule."""
        try:
            with contextlib.suppress(Exception):
                if self.starts and (self.process is None or self.process.poll() is not None):
                    self.start()  # a test left it down: bring it back to clean up by label
            with contextlib.suppress(Exception):
                self.remove_managed()
            self.stop(signal.SIGTERM)
            for pid in self._leftover_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
            self.unmount_all()
            shutil.rmtree(self.root, ignore_errors=True)
        finally:
            self.remove_rule()

    def info(self) -> dict[str, object]:
        """Where it lives, for reports."""
        return {
            "pid": self.pid,
            "socket": str(self.socket),
            "pool": self.pool,
            "rule": self.rule,
            "log": str(self.log),
        }

    def __repr__(self) -> str:
        return f"PrivateEngine({json.dumps(self.info())})"


@pytest.fixture(scope="session")
def private_engine() -> Iterator[PrivateEngine]:
    """A private dockerd with the local images devmesh needs; removed with all it made."""
    if os.geteuid() != 0:
        pytest.skip("a private Docker engine needs root")
    dockerd = find_dockerd()
    if dockerd is None:
        pytest.skip(f"no dockerd binary (looked in {', '.join(DOCKERD_PATHS)} and on PATH)")
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI to copy images with (docker save | docker load)")
    pool = pick_pool()
    # Short and under /tmp: the socket's path must stay under 108 bytes, and the data root
    # must be on a filesystem overlay2 can use (not an overlay itself).
    root = Path(tempfile.mkdtemp(prefix="dm-engine-", dir="/tmp"))
    engine = PrivateEngine(root, dockerd, pool)
    try:
        try:
            engine.start()
        except RuntimeError as exc:
            pytest.skip(f"the private dockerd does not start here: {exc}")
        copied = engine.copy_images(images_to_copy())
        if "busybox:1.35" not in copied:
            pytest.skip("the main engine has no busybox:1.35 to copy (scripts/make-base-image.sh)")
        engine.allow_forwarding(f"devmesh-e2e-{uuid.uuid4().hex[:8]}")
        yield engine
    finally:
        engine.close()
