"""TUI CPU benchmark: what watching a 20-service mesh costs the daemon and the TUI.

    .venv/bin/python bench/tui_cpu.py [--services 20] [--seconds 30] [--size 80x24] [--tmux]

1. A generated mesh of N HTTP services (one version, one pod each: N sidecars plus the
   gateway), built from the example app, comes up with `devmesh up -d --wait`.
2. Light traffic runs through the ingress for the whole benchmark (GETs to each service in
   turn, about 20 requests/s, 127.0.0.1 only) so that the stats the TUI reads are not empty.
3. Baseline: the daemon alone for `--seconds`.
4. Attached: the TUI as a process of its own (`python -m devmesh.tui --headless`, reading the
   API about once a second, as it does in a terminal) for `--seconds`, after a warm-up (its
   start-up: imports and the first screen, reported on its own). With `--tmux` it draws to
   a real terminal instead: a detached tmux session of that size (the TUI's own process is
   measured; tmux's server, the terminal's side, is shown on its own line).

CPU time is utime + stime from /proc/PID/stat (the daemon's, and the TUI's while it runs),
divided by wall time: percent of one core. The daemon's and TUI's together are the figure the
budget (3 % of one core) is about; the daemon's increase over its baseline is what attaching
costs it. Everything the benchmark starts is removed at the end, also on failure and Ctrl-C:
`devmesh down`, then a sweep by the mesh label. A benchmark, not a test: it prints a table and
exits non-zero only when it could not measure.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common as c
from _common import BenchError, cpu_seconds, progress

BUDGET = 3.0  # percent of one core, daemon and TUI together
WARMUP = 5.0  # seconds of the TUI's start-up left out of the steady figure


def mesh_text(n: int, port: int) -> str:
    names = [f"s{i:02d}" for i in range(1, n + 1)]
    lines = c.mesh_head(f"tuicpu{n}", port, [(s, f"/{s}/", s) for s in names])
    for name in names:
        lines += [
            f"  {name}:",
            f"    build: {c.APP_CONTEXT}",
            f"    image: {c.APP_IMAGE}",
            "    port: 8000",
        ]
    return "\n".join(lines) + "\n"


def traffic(port: int, n: int, stop: threading.Event, rate: float = 20.0) -> None:
    """GETs to each service in turn through the ingress, at most `rate` a second."""
    i = 0
    deadline = time.monotonic() + 3600
    while not stop.is_set() and time.monotonic() < deadline:
        i = i % n + 1
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", f"/s{i:02d}/x")
            conn.getresponse().read()
            conn.close()
        except (OSError, http.client.HTTPException):
            pass
        stop.wait(1 / rate)


class Tui:
    """The TUI process under measurement."""

    pid: int

    def terminal_cpu(self) -> float:
        return 0.0

    def check_still_running(self) -> None: ...

    def wait_for_exit(self, timeout: float) -> None: ...

    def stop(self) -> None: ...

    def screen(self) -> str:
        return ""


class HeadlessTui(Tui):
    """Textual's headless driver: everything but the writes to a terminal."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(
            [*command, "--headless"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.pid = self.proc.pid

    def _stderr(self) -> str:
        return self.proc.stderr.read().decode()[-2000:] if self.proc.stderr else ""

    def check_still_running(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"the TUI exited early: {self._stderr()}")

    def wait_for_exit(self, timeout: float) -> None:
        code = self.proc.wait(timeout=timeout)
        if code != 0:
            raise BenchError(f"the TUI exited {code}: {self._stderr()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # the process this benchmark started
            self.proc.wait(10)


class TmuxTui(Tui):
    """The TUI in a real terminal: a tmux server of its own (its own socket), one pane."""

    def __init__(self, command: list[str], size: str, project: str) -> None:
        cols, _, rows = size.partition("x")
        self.socket = f"devmesh-bench-{project}"
        self._tmux(
            "new-session", "-d", "-s", "tui", "-x", cols, "-y", rows, "exec " + shlex.join(command),
            ";", "set-option", "-t", "tui", "remain-on-exit", "on",
        )  # fmt: skip
        self.pid = int(self._tmux("display-message", "-p", "-t", "tui", "#{pane_pid}"))
        self.server = int(self._tmux("display-message", "-p", "#{pid}"))

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        if done.returncode != 0:
            raise BenchError(f"tmux {' '.join(args[:1])}: {done.stderr.strip()}")
        return done.stdout.strip()

    def _dead(self) -> str | None:
        """The pane's exit status once the TUI has exited, else None."""
        out = self._tmux(
            "display-message", "-p", "-t", "tui",
            "#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal}",
        )  # fmt: skip
        dead, status, signal = [*out.split(":"), "", ""][:3]
        if dead != "1" or not (status or signal):
            return None  # running; or its terminal closed and tmux has not reaped it yet
        return status or f"on signal {signal}"

    def terminal_cpu(self) -> float:
        return cpu_seconds(self.server)

    def check_still_running(self) -> None:
        if self._dead() is not None:
            raise BenchError(f"the TUI exited early:\n{self.screen()}")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "tui")

    def wait_for_exit(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (status := self._dead()) is None:
            if time.monotonic() > deadline:
                raise BenchError("the TUI did not quit by itself")
            time.sleep(0.5)
        if status != "0":
            raise BenchError(f"the TUI exited {status}:\n{self.screen()}")

    def stop(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--size", default="80x24", help="the TUI's screen, COLSxROWS")
    parser.add_argument("--tmux", action="store_true", help="draw to a real terminal (tmux)")
    args = parser.parse_args()
    if args.tmux and shutil.which("tmux") is None:
        print("tui_cpu: --tmux needs tmux (apt-get install tmux)", file=sys.stderr)
        return 2
    project = f"tcpu{os.getpid()}"[:15]
    port = c.free_port()
    stop = threading.Event()
    tui: Tui | None = None
    with tempfile.TemporaryDirectory(prefix="devmesh-tui-cpu-") as tmp:
        file = Path(tmp) / "devmesh.yaml"
        file.write_text(mesh_text(args.services, port))
        try:
            progress(f"bringing up {args.services} services as '{project}' ...")
            c.up(file, project)
            state = c.state_dir(project)
            daemon_pid = state.daemon_pid()
            if daemon_pid is None:
                raise BenchError("the daemon is not running after `up`")
            threading.Thread(target=traffic, args=(port, args.services, stop), daemon=True).start()
            time.sleep(3)  # the first reads and health checks settle
            progress(f"baseline: the daemon alone for {args.seconds:.0f} s ...")
            baseline = c.cpu_pct(daemon_pid, args.seconds)
            where = "tmux" if args.tmux else "headless"
            progress(f"attached: the TUI ({where}, {args.size}) for {args.seconds:.0f} s ...")
            started = time.monotonic()
            command = [
                sys.executable, "-m", "devmesh.tui", "--socket", str(state.api_socket),
                "--size", args.size, "--seconds", str(WARMUP + args.seconds + 5),
            ]  # fmt: skip
            tui = TmuxTui(command, args.size, project) if args.tmux else HeadlessTui(command)
            time.sleep(WARMUP)
            startup = cpu_seconds(tui.pid)
            d0, t0, s0 = cpu_seconds(daemon_pid), cpu_seconds(tui.pid), tui.terminal_cpu()
            w0 = time.monotonic()
            time.sleep(args.seconds)
            d1, t1, s1 = cpu_seconds(daemon_pid), cpu_seconds(tui.pid), tui.terminal_cpu()
            wall = time.monotonic() - w0
            tui.check_still_running()
            screen = tui.screen()
            tui.wait_for_exit(timeout=30)
            progress(f"the TUI quit by itself after {time.monotonic() - started:.0f} s")
        finally:
            stop.set()
            with c.shielded():
                if tui is not None:
                    tui.stop()
                c.down(project)
    daemon = 100 * (d1 - d0) / wall
    tui_pct = 100 * (t1 - t0) / wall
    total = daemon + tui_pct
    rows = [
        ["daemon alone (baseline)", f"{baseline:.2f}"],
        ["daemon, TUI attached", f"{daemon:.2f}"],
        ["TUI", f"{tui_pct:.2f}"],
        ["daemon + TUI", f"{total:.2f}"],
        ["attaching costs the daemon", f"{daemon - baseline:+.2f}"],
    ]
    if args.tmux:
        rows.append(["tmux server (the terminal; not ours)", f"{100 * (s1 - s0) / wall:.2f}"])
    print(f"# devmesh TUI CPU: {args.services} services ({args.services} sidecars + gateway)")
    print(
        f"{platform.node()} · {os.cpu_count()} cores · Python {platform.python_version()} · "
        f"Docker {c.engine_version()} · {args.seconds:.0f} s per phase · TUI {args.size} {where} "
        "· ~20 req/s through the ingress"
    )
    print()
    print(c.table(["process", "% of one core"], rows))
    print()
    print(f"TUI start-up (imports, first screen; not in the figures above): {startup:.2f} s CPU")
    if screen:
        print("\nThe screen at the end of the measurement (tmux capture-pane):\n")
        print("\n".join("    " + line for line in screen.splitlines()))
    verdict = "within" if total <= BUDGET else "OVER"
    print(f"budget: daemon + TUI <= {BUDGET:.0f} % of one core: {verdict} ({total:.2f} %)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"tui_cpu: {exc}", file=sys.stderr)
        sys.exit(1)
