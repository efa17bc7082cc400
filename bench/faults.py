"""Faults: what a running mesh loses when a piece of it dies or its file goes bad.

    .venv/bin/python bench/faults.py [faults] [--only app,gateway,...] [--rate 200]
    .venv/bin/python bench/faults.py baseline [--minutes 10] [--rate 200]

`faults`: the shop example (a copy in a temp dir, a project name of its own, `--ingress-port
0`) serves GET /catalog/x through the ingress at about `--rate` requests/s for the whole run
(a paced schedule over 8 threads, one keep-alive connection each, 5 s timeout, a slot
missed by over 0.5 s skipped; 127.0.0.1 only). Each fault in turn, once the mesh is ready
and the traffic is all 200 again:

  app        docker kill of catalog v1's app (v1 has one replica: 80 % of the traffic)
  sidecar    docker kill of that pod's Envoy sidecar
  pause      docker kill of that pod's namespace owner (pause)
  gateway    docker kill of the ingress gateway
  daemon     SIGKILL of the daemon (its pid from the state directory), then `devmesh up -d
             --wait` again, which adopts the running containers
  invalid    the mesh file saved with an error (`port: seven`), fixed again after --hold s
  deleted    the mesh file deleted, written back after --hold s
  app-x2     catalog v1 made `replicas: 2` (a save; the route retries 5xx and resets), then
             docker kill of the first replica's app
  service    docker stop of every container of catalog

Containers are found by devmesh's labels. Per fault: the failed requests (non-200, connection
errors, timeouts; by the time they ended) from the fault until the traffic is steady again;
the time from the fault to the first 200 on the affected path (served by the pod hit, or by
anything for the gateway, the daemon, the file and the service) and to steady 100 % (the
first 200 after the last failure; 0 with no failure). Steady: --steady s of only 200s at no
less than half the rate, within --max-recovery s or, after that, once the daemon says ready
(at most 90 s more); a fault not steady by then says so.

`baseline`: the same mesh and traffic for --minutes with no fault; failed requests (target 0).

Every wait is bounded; the mesh is removed at the end, on failure and on Ctrl-C (`devmesh
down`, then a sweep by its label). A benchmark, not a test: it prints a table and exits
non-zero only when it could not measure.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _common as c
from _common import BenchError, Outcome, progress

from devmesh import labels

PATH = "/catalog/x"
WORKERS = 8
TIMEOUT = 5.0  # per request
MAX_LAG = 0.5  # a slot missed by more is skipped: fast failures must not come in catch-up bursts
READY_WAIT = 90.0  # seconds for the mesh to be ready before a fault
FAULTS = ("app", "sidecar", "pause", "gateway", "daemon", "invalid", "deleted", "app-x2", "service")
TARGETS = {  # fault -> its target; "steady" is judged on the time to steady 100 %
    "sidecar": "steady ≤ 1 s",
    "pause": "steady ≤ 1 s",
    "gateway": "steady ≤ 1 s",
    "daemon": "0 failed",
    "invalid": "0 failed",
    "deleted": "0 failed",
    "app-x2": "0 failed",
    "none": "0 failed",  # the baseline
}


@dataclass
class Fault:
    name: str
    what: str  # what was done, in words
    at: float  # seconds from the start of the load
    end: float = 0.0  # steady again (or given up)
    steady: bool = False
    affected: Callable[[Outcome], bool] = lambda o: True
    notes: list[str] = field(default_factory=list)


class Run:
    """The mesh under load: its file, project, port, and the outcomes so far."""

    def __init__(self, work: Path, project: str, args: argparse.Namespace) -> None:
        self.file = work / "devmesh.yaml"
        self.text = c.example_text(8080)  # the port is --ingress-port's, not the file's
        self.file.write_text(self.text)
        self.project = project
        self.args = args
        self.port = 0
        self.outcomes: list[Outcome] = []
        self.stop = threading.Event()
        self.start = 0.0
        self.threads: list[threading.Thread] = []

    def now(self) -> float:
        return time.perf_counter() - self.start

    def up(self, port: int = 0) -> float:
        began = time.perf_counter()
        c.up(self.file, self.project, c.UP_TIMEOUT, "--ingress-port", str(port))
        took = time.perf_counter() - began
        url = str((c.mesh_state(self.project).get("gateway") or {}).get("url") or "")
        found = re.search(r":(\d+)/?$", url)
        if found is None:
            raise BenchError(f"{self.project}: no ingress URL in GET /v1/state ({url!r})")
        self.port = int(found.group(1))
        return took

    def load(self, seconds: float) -> None:
        """Start the paced load; it ends by itself after `seconds`, or at `stop`."""
        total = int(self.args.rate * seconds)
        self.start = time.perf_counter() + 0.2
        self.threads = c.paced_threads(
            self.port, PATH, WORKERS, total, self.args.rate, self.start, self.stop,
            self.outcomes, timeout=TIMEOUT, pods=True, max_lag=MAX_LAG,
        )  # fmt: skip
        for t in self.threads:
            t.start()

    def end_load(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(TIMEOUT + 5)
        self.outcomes.sort(key=lambda o: o.done)

    def steady_since(self, since: float, affected: Callable[[Outcome], bool]) -> bool:
        """A 200 on the affected path after `since`, then --steady s of only 200s."""
        now, window = self.now(), self.args.steady
        recent = []
        for o in reversed(self.outcomes):  # appended as they end: by `done`, give or take
            if o.done < since - TIMEOUT:  # one request's time
                break
            if o.done >= since:
                recent.append(o)
        if not any(o.status == 200 and affected(o) for o in recent):
            return False
        last = [o for o in recent if o.done >= now - window]
        enough = len(last) >= 0.5 * self.args.rate * window
        return enough and now - since >= window and all(o.status == 200 for o in last)

    def ready(self) -> str:
        """Until the daemon says ready (GET /v1/state) and the traffic is steady; '' or
        what was not."""
        deadline = time.monotonic() + READY_WAIT
        why = ""
        while time.monotonic() < deadline:
            try:
                state = c.mesh_state(self.project)
                why = "" if state.get("ready") else "state: not ready"
            except BenchError as exc:
                why = f"state: {str(exc).splitlines()[0]}"
            if not why and self.steady_since(self.now() - self.args.steady, lambda o: True):
                return ""
            why = why or "traffic not steady"
            time.sleep(0.5)
        return f"not ready after {READY_WAIT:.0f}s ({why})"

    def observe(self, fault: Fault) -> None:
        """Until steady again after `fault`: at most --max-recovery s of watching the traffic,
        then at most READY_WAIT s more for the daemon to say ready as well."""
        deadline = fault.at + self.args.max_recovery
        while self.now() < deadline and not fault.steady:
            fault.steady = self.steady_since(fault.at, fault.affected)
            time.sleep(0.1)
        problem = self.ready()  # checks the traffic too: steady later still counts
        if problem:
            fault.notes.append(problem)
        fault.steady = fault.steady or not problem
        fault.end = self.now()

    def container(self, role: str, **more: str) -> str:
        selector = [f"label={labels.MESH}={self.project}", f"label={labels.ROLE}={role}"]
        selector += [f"label={labels.PREFIX}{k}={v}" for k, v in more.items()]
        found = c.docker("ps", "-q", *(a for s in selector for a in ("--filter", s))).split()
        if len(found) != 1:
            raise BenchError(f"{self.project}: {len(found)} running {role} containers ({more})")
        return found[0]


# -- the faults ---------------------------------------------------------------------------------


def kill(run: Run, name: str, role: str, pod: str | None) -> Fault:
    target = run.container(role, **({"pod": pod} if pod else {}))
    at = run.now()
    c.docker("kill", target)
    fault = Fault(name, f"docker kill {role}" + (f" of {pod}" if pod else ""), at)
    if pod:
        fault.affected = lambda o: o.pod == pod
    return fault


def kill_daemon(run: Run) -> Fault:
    pid = c.state_dir(run.project).daemon_pid()  # from its lock and pid file
    if pid is None or not c.daemon_alive(pid, run.project):
        raise BenchError(f"{run.project}: no daemon to kill (pid {pid})")
    fault = Fault("daemon", f"SIGKILL daemon pid {pid}; `devmesh up -d --wait`", run.now())
    os.kill(pid, signal.SIGKILL)  # the daemon this bench's `up` started
    try:
        took = run.up(run.port)  # the same port: the adopted gateway keeps it
        fault.notes.append(f"`up -d --wait` adopted the mesh in {took:.1f}s")
    except BenchError as exc:
        fault.notes.append(f"`up` after the kill failed: {str(exc).splitlines()[0]}")
    return fault


def bad_file(run: Run, name: str) -> Fault:
    if name == "invalid":
        text, n = re.subn(r"(?m)^(    port: )7000$", r"\g<1>seven", run.text)
        if n != 1:
            raise BenchError("the example has no `port: 7000` line to break")
        fault = Fault(name, "saved with `port: seven`", run.now())
        run.file.write_text(text)
    else:
        fault = Fault(name, "mesh file deleted", run.now())
        run.file.unlink()
    time.sleep(run.args.hold)
    run.file.write_text(run.text)  # in place: one plain write
    fault.what += f", restored after {run.args.hold:g}s"
    return fault


def app_twice(run: Run) -> Fault:
    """catalog v1 at two replicas (a save, waited for), then the first one's app killed."""
    text, n = re.subn(r"(?m)^(      v1: )\{\}$", r"\g<1>{replicas: 2}", run.text)
    if n != 1:
        raise BenchError("the example has no `v1: {}` line under catalog")
    run.text = text
    run.file.write_text(text)
    pods = 0
    deadline = time.monotonic() + READY_WAIT
    while pods < 6 and time.monotonic() < deadline:
        time.sleep(0.5)
        pods = sum(1 for p in c.mesh_state(run.project)["pods"] if c.pod_ready(p))
    problem = run.ready()
    if pods < 6 or problem:
        raise BenchError(f"catalog v1 at two replicas: {pods} of 6 pods ready; {problem}")
    fault = kill(run, "app-x2", "app", f"{run.project}-catalog-v1-0")
    fault.what += " (v1 at replicas: 2)"
    return fault


def stop_service(run: Run) -> Fault:
    selector = ["--filter", f"label={labels.MESH}={run.project}"]
    ids = c.docker("ps", "-q", *selector, "--filter", f"label={labels.SERVICE}=catalog").split()
    at = run.now()
    c.run(["docker", "stop", "-t", "1", *ids], c.DOCKER_TIMEOUT)
    return Fault("service", f"docker stop of catalog's {len(ids)} containers", at)


def apply(run: Run, name: str) -> Fault:
    pod = f"{run.project}-catalog-v1-0"
    if name in ("app", "sidecar"):
        return kill(run, name, name, pod)
    if name == "pause":
        return kill(run, name, "pod", pod)
    if name == "gateway":
        return kill(run, name, "gateway", None)
    if name == "daemon":
        return kill_daemon(run)
    if name in ("invalid", "deleted"):
        return bad_file(run, name)
    if name == "app-x2":
        return app_twice(run)
    return stop_service(run)


# -- the report ---------------------------------------------------------------------------------


def kinds(outs: list[Outcome]) -> str:
    counted = Counter(f"HTTP {o.status}" if o.status is not None else o.error for o in outs)
    return "; ".join(f"{n} × {k[:80]}" for k, n in counted.most_common(3))


def report(run: Run, faults: list[Fault], notes: list[str]) -> str:
    rows, out_notes = [], list(notes)
    seen: set[int] = set()
    for f in faults:
        inside = [o for o in run.outcomes if f.at <= o.done < f.end]
        seen.update(id(o) for o in inside)
        failed = [o for o in inside if o.status != 200]
        # the first 200 on the path sent after the first request that failed after the fault
        # (`docker kill` returns before the container is gone: requests just after it pass)
        since = min((o.sent for o in failed if o.sent >= f.at), default=f.at)
        first = next(
            (
                o.done - f.at
                for o in inside
                if o.sent >= since and o.status == 200 and f.affected(o)
            ),
            None,
        )
        steady = 0.0
        if failed:
            last = max(o.done for o in failed)
            after = [o.done for o in inside if o.status == 200 and o.done > last]
            steady = after[0] - f.at if after and f.steady else float("nan")
        steady_cell = f"{steady:.2f}" if f.steady else f"not steady in {f.end - f.at:.0f}"
        target = TARGETS.get(f.name, "—")
        met = "—"
        if target == "0 failed":
            met = "yes" if not failed else "**no**"
        elif target.startswith("steady"):
            met = "yes" if f.steady and steady <= 1.0 else "**no**"
        rows.append(
            [
                f.name,
                f.what,
                str(len(failed)),
                "-" if first is None or f.name == "none" else f"{first:.2f}",
                "-" if f.name == "none" else steady_cell,
                target,
                met,
            ]
        )
        if failed and f.name == "none":
            out_notes += [
                f"failed, s from the start: {w}"
                for w in c.failure_windows(sorted(failed, key=lambda o: o.sent))
            ]
        elif failed:
            out_notes.append(f"{f.name}: {kinds(failed)}")
        out_notes += [f"{f.name}: {n}" for n in f.notes]
    between = [o for o in run.outcomes if id(o) not in seen and o.status != 200]
    if between:
        out_notes.append(f"{len(between)} failed outside the fault windows: {kinds(between)}")
    sent = len(run.outcomes)
    rate = sent / run.outcomes[-1].done if run.outcomes else 0.0
    head = ["fault", "what", "failed", "first 200 on the path (s)", "steady 100 % (s)"]
    return "\n".join(
        [
            f"# devmesh faults: the shop example under GET {PATH} at ~{run.args.rate:g}/s",
            "",
            f"{c.now_iso()} on {c.machine()}; {c.source_version()}. {sent} requests at "
            f"{rate:.0f}/s, load average at the end {os.getloadavg()[0]:.2f}.",
            "",
            c.table([*head, "target", "met"], rows),
            "",
            *(f"- {n}" for n in out_notes),
        ]
    )


# -- main ---------------------------------------------------------------------------------------


def faults(run: Run, names: list[str], notes: list[str]) -> list[Fault]:
    """Each fault in turn; the first that cannot be applied ends the sequence (said)."""
    done: list[Fault] = []
    for i, name in enumerate(names):
        try:
            problem = run.ready()
            if problem:
                raise BenchError(problem)
            progress(f"fault: {name} ...")
            fault = apply(run, name)
        except BenchError as exc:
            notes.append(f"stopped before '{name}': {exc}; not measured: {', '.join(names[i:])}")
            progress(notes[-1])
            break
        run.observe(fault)
        progress(
            f"{name}: " + ("steady" if fault.steady else "NOT steady")
            + f" after {fault.end - fault.at:.1f}s"
        )  # fmt: skip
        done.append(fault)
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("mode", nargs="?", choices=["faults", "baseline"], default="faults")
    p.add_argument("--only", default=",".join(FAULTS), help="faults to apply, in this order")
    p.add_argument("--rate", type=float, default=200, help="requests/s (default 200)")
    p.add_argument("--minutes", type=float, default=10, help="baseline: minutes (default 10)")
    p.add_argument("--steady", type=float, default=3, help="seconds of only 200s (3)")
    p.add_argument("--max-recovery", type=float, default=30, help="per fault, seconds (30)")
    p.add_argument("--hold", type=float, default=3, help="bad file kept for seconds (3)")
    p.add_argument("--out", type=Path, help="also write the report as Markdown to FILE")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(FAULTS)
    if unknown or not 1 <= args.rate <= 1000 or args.minutes <= 0:
        p.error(f"faults: {', '.join(FAULTS)}; 1 ≤ --rate ≤ 1000; --minutes > 0")
    c.raise_on_sigterm()
    project = f"flt{os.getpid()}"[:15]
    notes = [f"other devmesh daemons at the start: {len(c.other_daemons())}"]
    try:
        with tempfile.TemporaryDirectory(prefix="devmesh-faults-") as tmp:
            run = Run(Path(tmp), project, args)
            try:
                progress(f"up: the shop example as {project} ...")
                run.up()
                if args.mode == "baseline":
                    seconds = args.minutes * 60
                    progress(f"baseline: {seconds:.0f}s at {args.rate:g}/s, no fault ...")
                    run.load(seconds)
                    for t in run.threads:
                        t.join(max(0.0, run.start + seconds + TIMEOUT + 5 - time.perf_counter()))
                    run.end_load()
                    done = [Fault("none", f"{args.minutes:g} min, no fault", 0, float("inf"))]
                    done[0].steady = True
                else:
                    budget = len(names) * (READY_WAIT + args.max_recovery + 120)
                    run.load(budget)  # stopped once the faults are done; bounded anyway
                    done = faults(run, names, notes)
                    run.end_load()
            finally:
                run.stop.set()
                with c.shielded():
                    c.down(project)
    except BenchError as exc:
        progress(f"faults: could not measure: {exc}")
        return 1
    except (KeyboardInterrupt, c.Terminated):
        progress("interrupted; everything started was removed")
        return 130
    text = report(run, done, notes)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
