"""Bad arguments get a message and an exit code (1: bad input, 2: typer's usage errors),
never a traceback, and nothing is started, written or removed before they are checked."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devmesh.cli.app import run
from devmesh.cli.exits import Exit
from devmesh.cli.options import parse_tail, parse_weights
from devmesh.core.problems import MeshError

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop" / "devmesh.yaml"


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the example (shift may write it), an empty state base, no engine."""
    top = Path(tempfile.mkdtemp(prefix="dm-"))
    shutil.copytree(SHOP.parent, top / "shop", ignore=shutil.ignore_patterns("app"))
    monkeypatch.setenv("DEVMESH_STATE_DIR", str(top / "state"))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.chdir(top / "shop")
    yield top
    shutil.rmtree(top, ignore_errors=True)


CASES = [
    ("shift-superscript", ["shift", "catalog", "v1=²", "v2=0"], Exit.ERROR, "VERSION=WEIGHT"),
    ("shift-no-equals", ["shift", "catalog", "v1"], Exit.ERROR, "VERSION=WEIGHT"),
    ("shift-no-version", ["shift", "catalog", "=50"], Exit.ERROR, "VERSION=WEIGHT"),
    ("shift-negative", ["shift", "catalog", "v1=-5", "v2=105"], Exit.ERROR, "VERSION=WEIGHT"),
    ("shift-over-100", ["shift", "catalog", "v1=101", "v2=0"], Exit.ERROR, "0-100"),
    ("shift-huge", ["shift", "catalog", "v1=" + "9" * 40], Exit.ERROR, "0-100"),
    ("shift-twice", ["shift", "catalog", "v1=50", "v1=50"], Exit.ERROR, "twice"),
    ("shift-float", ["shift", "catalog", "v1=50.5", "v2=49.5"], Exit.ERROR, "VERSION=WEIGHT"),
    ("port-too-big", ["up", "--ingress-port", "70000"], Exit.USAGE, "65535"),
    ("port-negative", ["up", "--ingress-port=-1"], Exit.USAGE, "--ingress-port"),
    ("port-word", ["up", "--ingress-port", "http"], Exit.USAGE, "--ingress-port"),
    ("port-superscript", ["up", "--ingress-port", "²"], Exit.USAGE, "--ingress-port"),
    ("timeout-negative", ["up", "--timeout=-5"], Exit.USAGE, "--timeout"),
    (
        "ports-same",
        ["up", "-d", "--ingress-port", "19600", "--metrics-port", "19600"],
        Exit.ERROR,
        "port 19600 for both the ingress and /metrics (--ingress-port, --metrics-port)",
    ),
    ("metrics-on-the-ingress", ["up", "-d", "--metrics-port", "8080"], Exit.ERROR, "ingress.port"),
    ("timeout-nan", ["up", "-d", "--timeout", "nan"], Exit.USAGE, "--timeout"),
    ("timeout-inf", ["up", "-d", "--timeout", "inf"], Exit.ERROR, "timeout"),
    ("run-timeout-huge", ["run", "--timeout", "1e999", "--", "true"], Exit.ERROR, "timeout"),
    ("tail-superscript", ["logs", "catalog", "--tail", "²"], Exit.ERROR, "--tail"),
    ("tail-negative", ["logs", "catalog", "--tail=-3"], Exit.ERROR, "--tail"),
    ("tail-huge", ["logs", "catalog", "--tail", "9" * 30], Exit.ERROR, "--tail"),
    ("logs-unknown-service", ["logs", "catalgo"], Exit.ERROR, "did you mean 'catalog'"),
    ("project-path", ["down", "-p", "../victim"], Exit.ERROR, "not a project name"),
    ("project-dot", ["ps", "-p", "."], Exit.ERROR, "not a project name"),
    ("project-empty", ["ps", "-p", ""], Exit.ERROR, "empty"),
    ("project-dash", ["up", "-d", "--project=-dash"], Exit.ERROR, "not a project name"),
    ("project-space", ["shift", "-p", "Bad Name", "catalog", "v1=100"], Exit.ERROR, "project"),
    ("project-long", ["up", "-d", "-p", "a" * 64], Exit.ERROR, "64 characters"),
    ("run-project", ["run", "-p", "x/y", "--", "true"], Exit.ERROR, "not a project name"),
    ("run-no-command", ["run"], Exit.ERROR, "needs a command"),
    ("tui-project", ["tui", "-p", "../x"], Exit.ERROR, "not a project name"),
    ("file-missing", ["validate", "-f", "nonexistent.yaml"], Exit.ERROR, "no such file"),
    ("file-directory", ["validate", "-f", "."], Exit.ERROR, "directory"),
    ("file-empty", ["validate", "-f", "/dev/null"], Exit.ERROR, ""),
    ("explain-bad-header", ["explain", "GET", "/", "-H", "nocolon"], Exit.ERROR, ""),
    ("explain-bad-url", ["explain", "GET", "http://[::1/x"], Exit.ERROR, ""),
    ("render-unwritable", ["render", "--out", "/proc/devmesh/x"], Exit.ERROR, "cannot"),
    ("tail-word", ["logs", "catalog", "--tail", "abc"], Exit.ERROR, "--tail"),
    ("global-project-path", ["-p", "../x", "ps"], Exit.ERROR, "not a project name"),
    ("global-project-path-down", ["--project-name", "../x", "down"], Exit.ERROR, "project"),
    ("global-project-then-other", ["-p", "a", "ps", "-p", "b"], Exit.ERROR, "twice"),
    ("file-twice", ["-f", "a.yaml", "-f", "b.yaml", "validate"], Exit.ERROR, "one mesh file"),
    ("file-before-and-after", ["-f", "a.yaml", "ps", "-f", "b.yaml"], Exit.ERROR, "one -f"),
    ("stdin-for-ps", ["-f", "-", "ps"], Exit.ERROR, "standard input"),
    ("stdin-for-up", ["-f", "-", "up", "-d"], Exit.ERROR, "standard input"),
    ("json-and-yaml", ["validate", "--json", "--format", "yaml"], Exit.ERROR, "contradict"),
    ("format-unknown", ["ps", "--format", "xml"], Exit.USAGE, "--format"),
    ("init-from-compose", ["init", "new", "--from", "compose.yaml"], Exit.ERROR, "not built yet"),
    ("init-bad-name", ["init", "new", "--name", "../x"], Exit.ERROR, "not a mesh name"),
    ("init-over-a-mesh", ["init", "."], Exit.ERROR, "not overwriting"),
    ("no-such-command", ["nosuch"], Exit.USAGE, "No such command"),
    ("no-such-option", ["ps", "--nosuch"], Exit.USAGE, "No such option"),
]


@pytest.mark.parametrize(
    ("argv", "code", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_bad_argument_is_a_message_and_an_exit_code(
    isolated: Path, argv: list[str], code: Exit, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (isolated / "shop" / "devmesh.yaml").read_text()
    assert run(argv) == code
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    assert says in out.err
    assert (isolated / "shop" / "devmesh.yaml").read_text() == before  # nothing written
    assert not (isolated / "state").exists()  # nothing started


@pytest.mark.parametrize(
    ("items", "weights"),
    [
        (["v1=70", "v2=30"], {"v1": 70, "v2": 30}),
        ([" v1 = 100 "], {"v1": 100}),
        (["v1=0", "v2=100"], {"v1": 0, "v2": 100}),
    ],
    ids=["two", "spaces", "zero"],
)
def test_weights_parse(items: list[str], weights: dict[str, int]) -> None:
    assert parse_weights(items) == weights


@pytest.mark.parametrize(
    ("text", "lines"), [("all", None), ("ALL", None), ("10", 10), ("0", 0)], ids=str
)
def test_tail_parses(text: str, lines: int | None) -> None:
    assert parse_tail(text) == lines


@pytest.mark.parametrize("text", ["²", "-1", "1.5", "", "ten", "٣"], ids=repr)
def test_tail_refuses_what_is_not_a_count(text: str) -> None:
    with pytest.raises(MeshError, match="--tail"):
        parse_tail(text)
