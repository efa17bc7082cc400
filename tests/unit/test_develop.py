"""`develop: watch:` and `build:` BuildKit options: loading, and what a burst of changed
files asks of each service; BuildKit's plain progress cut down to compact lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from devmesh.adapters.buildkit import PlainProgress
from devmesh.adapters.images import needs_buildkit, repository
from devmesh.core.develop import PathKind, Work, work_for
from devmesh.core.load import load
from devmesh.core.model import Build, WatchRule
from devmesh.core.problems import MeshInvalid

BASE = """\
mesh: w
services:
  web:
    port: 8000
    build: {context: app, target: final, secrets: {token: tok.txt}}
    develop:
      watch:
        - {path: app/www, action: sync, target: /www, ignore: ["*.tmp", node_modules/]}
        - {path: app/conf, action: sync+restart, target: /etc/app}
        - {path: app/Dockerfile, action: rebuild}
        - {path: app/restart-me, action: restart}
  other:
    port: 8000
    image: busybox:1.35
"""


def _mesh(text: str = BASE, base: str = "/src") -> object:
    return load(text, "devmesh.yaml", base_dir=base)


def test_watch_rules_and_build_options_load_as_written() -> None:
    mesh = _mesh()
    web = mesh.service("web")  # type: ignore[attr-defined]
    assert web.watch == (
        WatchRule("app/www", "sync", "/www", ("*.tmp", "node_modules/")),
        WatchRule("app/conf", "sync+restart", "/etc/app"),
        WatchRule("app/Dockerfile", "rebuild"),
        WatchRule("app/restart-me", "restart"),
    )
    assert web.versions[0].build == Build("app", target="final", secrets=(("token", "tok.txt"),))


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{path: x, action: sync}", "action sync needs a `target` in the container"),
        ("{path: x, action: sync, target: rel}", "'rel' is not an absolute path"),
        ("{path: x, action: rebuild, target: /x}", "action rebuild takes no target"),
        ("{path: x, action: synk, target: /x}", "did you mean 'sync'"),
        ("{action: sync, target: /x}", "path"),
        ("{path: x, action: sync, target: /x, when: now}", "when"),
    ],
    ids=["sync-no-target", "relative-target", "rebuild-target", "typo", "no-path", "unknown"],
)
def test_bad_watch_rules_are_located_errors(rule: str, message: str) -> None:
    text = (
        "mesh: w\nservices:\n  web:\n    port: 80\n    build: .\n"
        f"    develop:\n      watch:\n        - {rule}\n"
    )
    with pytest.raises(MeshInvalid) as exc:
        _mesh(text)
    shown = str(exc.value)
    assert "devmesh.yaml:8:" in shown and message in shown, shown


def test_rebuild_needs_something_to_build() -> None:
    text = BASE.replace(
        "    image: busybox:1.35\n",
        "    image: busybox:1.35\n    develop: {watch: [{path: x, action: rebuild}]}\n",
    )
    with pytest.raises(MeshInvalid, match="rebuild needs a `build:`"):
        _mesh(text)


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        (
            {"/src/app/www/index.html": "file"},
            (Work("web", copy=(("/src/app/www/index.html", "/www/index.html"),)),),
        ),
        (
            {"/src/app/www/a/b.css": "file", "/src/app/www/gone.txt": "gone"},
            (
                Work(
                    "web",
                    copy=(("/src/app/www/a/b.css", "/www/a/b.css"),),
                    delete=("/www/gone.txt",),
                ),
            ),
        ),
        ({"/src/app/www/x.tmp": "file"}, ()),
        ({"/src/app/www/node_modules/m.js": "file"}, ()),
        ({"/src/app/www/.index.html.swp": "file"}, ()),
        ({"/src/app/www/.git/HEAD": "file"}, ()),
        ({"/src/app/www/newdir": "dir"}, ()),
        (
            {"/src/app/conf/app.ini": "file"},
            (Work("web", copy=(("/src/app/conf/app.ini", "/etc/app/app.ini"),), restart=True),),
        ),
        (
            {"/src/app/Dockerfile": "file", "/src/app/www/index.html": "file"},
            (Work("web", rebuild=True),),
        ),
        ({"/src/app/restart-me": "file"}, (Work("web", restart=True),)),
        ({"/src/app/www-other/index.html": "file"}, ()),
        ({"/elsewhere/file": "file"}, ()),
    ],
    ids=[
        "sync-one",
        "sync-nested-and-delete",
        "ignored-glob",
        "ignored-dir",
        "editor-swap",
        "vcs",
        "directory-only",
        "sync-restart",
        "rebuild-wins",
        "restart",
        "sibling-prefix",
        "outside",
    ],
)
def test_changes_ask_each_service_for_its_work(
    changed: dict[str, PathKind], expected: tuple[Work, ...]
) -> None:
    assert work_for(_mesh(), changed) == expected  # type: ignore[arg-type]


def _progress(lines: list[str], dockerfile: Path) -> tuple[list[str], str]:
    out: list[str] = []
    parser = PlainProgress(dockerfile, out.append)
    for line in lines:
        parser.feed(line)
    return out, parser.error()


def test_plain_progress_becomes_compact_steps(tmp_path: Path) -> None:
    out, _ = _progress(
        [
            "#1 [internal] load build definition from Dockerfile",
            "#1 DONE 0.0s",
            "#4 [base 1/3] FROM docker.io/library/busybox:1.35",
            "#5 [base 2/3] RUN --mount=type=cache,target=/c make",
            "#5 sha256:9131755f",
            "#5 0.342 compiler noise",
            "#5 CACHED",
            "#8 [2/2] COPY . /app",
            "#8 DONE 0.0s",
        ],
        tmp_path / "Dockerfile",
    )
    assert out == [
        "step 1/3 (base) FROM docker.io/library/busybox:1.35",
        "step 2/3 (base) RUN --mount=type=cache,target=/c make",
        "step 2/3 (base) cached",
        "step 2/2 COPY . /app",
    ]


def test_a_syntax_error_is_shown_with_its_line(tmp_path: Path) -> None:
    _, error = _progress(
        [
            "#2 DONE 0.0s",
            "failed to solve with frontend dockerfile.v0: failed to create LLB definition: "
            "dockerfile parse error line 3: unknown instruction: RUNN",
        ],
        tmp_path / "Dockerfile",
    )
    assert error == "Dockerfile:3: unknown instruction: RUNN"


def test_a_failing_step_is_shown_with_its_line(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM busybox:1.35\nRUN echo a\nRUN   exit 3\n")
    _, error = _progress(
        [
            "#6 [3/3] RUN exit 3",
            "#6 ERROR: executor failed running [/bin/sh -c exit 3]: exit code: 3",
            "executor failed running [/bin/sh -c exit 3]: exit code: 3",
        ],
        dockerfile,
    )
    assert error.startswith("Dockerfile:3: RUN exit 3: ")
    assert "exit code: 3" in error


@pytest.mark.parametrize(
    ("text", "needs"),
    [
        ("FROM x\nRUN --mount=type=cache,target=/c make\n", True),
        ("FROM x\nRUN --network=none --mount=type=secret,id=a cat /run/secrets/a\n", True),
        ("# syntax=docker/dockerfile:1\nFROM x\n", True),
        ("FROM x\nRUN echo --mount=not-a-flag\n", False),
        ("FROM x\nCOPY . /app\n", False),
    ],
    ids=["cache-mount", "second-flag", "syntax-line", "in-a-command", "plain"],
)
def test_dockerfiles_the_legacy_builder_refuses_are_recognised(
    tmp_path: Path, text: str, needs: bool
) -> None:
    (tmp_path / "Dockerfile").write_text(text)
    assert needs_buildkit(tmp_path / "Dockerfile") is needs


def test_projects_tag_in_their_own_namespace() -> None:
    assert repository("a", "web") != repository("b", "web")
    assert repository("a", "web") == "devmesh-a/web"


def test_edits_during_a_build_coalesce_into_one_next_build_and_a_failure_is_kept() -> None:
    import threading
    import time

    from devmesh.adapters.images import BuildKey, ImageError, ImageResolver

    mesh = _mesh()
    web = mesh.service("web")  # type: ignore[attr-defined]
    version = web.versions[0]
    release = threading.Event()
    release.set()
    built: list[BuildKey] = []
    fail = False

    def builder(client: object, project: str, key: BuildKey, progress: object) -> str:
        built.append(key)
        progress("step 1/2 RUN make")  # type: ignore[operator]
        assert release.wait(5)
        if fail:
            raise ImageError("build failed: Dockerfile:2: unknown instruction: RUNN")
        return f"sha256:{len(built)}"

    woke: list[float] = []
    images = ImageResolver(None, "p", lambda _: None, builder)
    images.on_built = lambda: woke.append(time.monotonic())
    images.build_now(mesh)  # the daemon's start: on the caller's thread
    assert images.app("/src", "web", version) == "sha256:1" and not woke

    release.clear()
    images.rebuild("/src", web)
    deadline = time.monotonic() + 5
    while not images.states() or images.states()[0].step != "step 1/2 RUN make":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for _ in range(5):  # saves while it builds
        images.rebuild("/src", web)
    assert images.app("/src", "web", version) == "sha256:1"  # the last good one meanwhile
    release.set()
    while not images.idle() or len(woke) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert len(built) == 3  # the start, the one under way, one for all five saves
    assert images.app("/src", "web", version) == "sha256:3"

    fail = True
    images.rebuild("/src", web)
    while len(woke) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(ImageError, match="Dockerfile:2: unknown instruction: RUNN"):
        images.app("/src", "web", version)
    (state,) = images.states()
    assert not state.running and state.error is not None and "Dockerfile:2" in state.error
    images.stop()


def test_the_versions_a_save_rebuilds_are_those_built_of_a_service_with_a_rebuild_rule() -> None:
    from devmesh.core.develop import rebuilt_versions

    text = BASE + (
        "  synced:\n    port: 8000\n    build: app\n"
        "    develop: {watch: [{path: app/www, action: sync, target: /www}]}\n"
        "  split:\n    port: 8000\n    build: app\n"
        "    develop: {watch: [{path: app, action: rebuild}]}\n"
        "    versions:\n      a: {}\n      local: {host: {port: 5000}}\n"
    )
    mesh = _mesh(text)
    assert rebuilt_versions(mesh) == {("web", "default"), ("split", "a")}  # type: ignore[arg-type]
