"""BuildKit builds through a docker CLI that has it, as a subprocess.

docker-py's `images.build` talks to the Engine API's legacy builder, which refuses
`RUN --mount=...` ("the --mount option requires BuildKit"). BuildKit needs the CLI's session
(secrets, the build context over gRPC), so devmesh runs a CLI that can: one with the buildx
plugin, or a 20.10-era CLI (Debian's `docker.io` at /usr/bin/docker) whose built-in BuildKit
client runs with DOCKER_BUILDKIT=1. A 23+ CLI without buildx cannot, and is skipped.

The CLI inherits this process's environment, so it talks to the engine docker-py talks to
(DOCKER_HOST, DOCKER_CONTEXT, DOCKER_CERT_PATH...). `--progress=plain` is parsed into compact
lines: a step as it starts, cached steps, and the error with its Dockerfile line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Progress = Callable[[str], None]
BUILD_TIMEOUT = 900.0  # seconds a build may take before it is stopped

_found: dict[str, str | None] = {}
_found_lock = threading.Lock()


class BuildFailed(Exception):
    """The build ran and failed; `message` is for people ("Dockerfile:3: unknown ...")."""


def _client_major(cli: str) -> int | None:
    try:
        out = subprocess.run(
            [cli, "version", "--format", "{{.Client.Version}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"(\d+)\.", out)
    return int(match.group(1)) if match else None


def _has_buildx(cli: str) -> bool:
    try:
        return (
            subprocess.run(
                [cli, "buildx", "version"], capture_output=True, timeout=20, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


def find_cli() -> str | None:
    """A docker CLI that builds with BuildKit, or None. DEVMESH_DOCKER_CLI names one;
    DEVMESH_BUILDER=api turns BuildKit off (the Engine API's builder only)."""
    if os.environ.get("DEVMESH_BUILDER", "auto") == "api":
        return None
    named = os.environ.get("DEVMESH_DOCKER_CLI")
    candidates = [named] if named else [shutil.which("docker"), "/usr/bin/docker"]
    key = "\0".join(c or "" for c in candidates)
    with _found_lock:
        if key in _found:
            return _found[key]
        chosen = None
        for cli in dict.fromkeys(c for c in candidates if c):
            if not os.access(cli, os.X_OK):
                continue
            major = _client_major(cli)
            if major is None:
                continue
            if _has_buildx(cli) or major < 23:  # before 23 the CLI carries its own client
                chosen = cli
                break
        _found[key] = chosen
        return chosen


@dataclass
class PlainProgress:
    """`--progress=plain` output in, compact lines out: `step 2/3 RUN make`, `step 2/3
    cached`, and at the end the error, located in the Dockerfile where it can be."""

    dockerfile: Path
    emit: Progress
    _steps: dict[str, str] = field(default_factory=dict)  # "#5" -> "[base 2/3] RUN ..."
    _errors: list[str] = field(default_factory=list)
    _failed_step: str | None = None
    _tail: list[str] = field(default_factory=list)

    _STEP = re.compile(r"^(#\d+) \[([^\]]+)\] (.*)$")
    _CACHED = re.compile(r"^(#\d+) CACHED$")
    _ERROR = re.compile(r"^(#\d+) ERROR: (.*)$")
    _PARSE = re.compile(r"dockerfile parse error (?:on )?line (\d+): (.*)$")

    def feed(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        self._tail = [*self._tail[-19:], line]
        if m := self._STEP.match(line):
            num, where, what = m.groups()
            if where == "internal" or num in self._steps:
                return
            self._steps[num] = f"[{where}] {what}"
            self.emit(f"step {_step_count(where)} {_short(what)}")
        elif m := self._CACHED.match(line):
            where = self._steps.get(m.group(1))
            if where:
                self.emit(f"step {_step_count(where[1 : where.index(']')])} cached")
        elif m := self._ERROR.match(line):
            self._failed_step = self._steps.get(m.group(1))
            self._errors.append(m.group(2))
        elif line.startswith(("failed to solve", "error:", "ERROR:")):
            self._errors.append(line)

    def error(self) -> str:
        """What failed, for people: `Dockerfile:3: unknown instruction: RUNN`."""
        text = self._errors[-1] if self._errors else (self._tail[-1] if self._tail else "")
        if m := self._PARSE.search(text):
            return f"{self.dockerfile.name}:{m.group(1)}: {m.group(2)}"
        if self._failed_step:
            instruction = self._failed_step.split("] ", 1)[-1]
            line = _line_of(self.dockerfile, instruction)
            where = f"{self.dockerfile.name}:{line}" if line else self.dockerfile.name
            return f"{where}: {_short(instruction)}: {_short(text, 300)}"
        return _short(text, 300) or "the build failed"


def _step_count(where: str) -> str:
    """`base 2/3` -> `2/3 (base)`; `2/3` -> `2/3`."""
    parts = where.split()
    if len(parts) == 2 and not parts[0].startswith("stage-"):  # BuildKit's unnamed stages
        return f"{parts[1]} ({parts[0]})"
    return parts[-1]


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _line_of(dockerfile: Path, instruction: str) -> int | None:
    """The 1-based line where `instruction` (as BuildKit shows it) starts, if found."""
    try:
        lines = dockerfile.read_text(errors="replace").splitlines()
    except OSError:
        return None
    wanted = " ".join(instruction.split())
    for i, text in enumerate(lines, 1):
        joined = " ".join(text.split())
        same = joined == wanted or wanted.startswith(joined.rstrip("\\ "))
        if joined and same and joined.split()[0].upper() == wanted.split()[0].upper():
            return i
    return None


def build(
    cli: str,
    context: Path,
    dockerfile: str | None,
    tags: Sequence[str],
    args: Mapping[str, str],
    labels: Mapping[str, str],
    target: str | None,
    secrets: Mapping[str, Path],
    progress: Progress,
) -> str:
    """Build with BuildKit; the image id, or BuildFailed with a located message."""
    file = context / (dockerfile or "Dockerfile")
    parser = PlainProgress(file, progress)
    with tempfile.TemporaryDirectory(prefix="devmesh-build-") as tmp:
        iidfile = Path(tmp) / "iid"
        cmd = [cli, "build", "--progress=plain", "--iidfile", str(iidfile), "-f", str(file)]
        for tag in tags:
            cmd += ["-t", tag]
        for key, value in sorted(args.items()):
            cmd += ["--build-arg", f"{key}={value}"]
        for key, value in sorted(labels.items()):
            cmd += ["--label", f"{key}={value}"]
        if target:
            cmd += ["--target", target]
        for sid, src in sorted(secrets.items()):
            cmd += ["--secret", f"id={sid},src={src}"]
        cmd.append(str(context))
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        try:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                env=env,
            )
        except OSError as exc:
            raise BuildFailed(f"cannot run {cli}: {exc.strerror}") from None
        timer = threading.Timer(BUILD_TIMEOUT, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                parser.feed(line)
            code = proc.wait()
        finally:
            timer.cancel()
        if code != 0:
            raise BuildFailed(parser.error())
        try:
            return iidfile.read_text().strip()
        except OSError:
            raise BuildFailed("the build wrote no image id") from None
