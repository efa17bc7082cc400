"""Compose and kubectl habits without an engine: global -f/-p before the command, the
DEVMESH_FILE and DEVMESH_PROJECT variables, the file found in parent directories, `-f -`,
`--format`, `config`, `init`, `ls`, and shell completion of names from the file."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from devmesh.cli.app import app, run
from devmesh.cli.exits import Exit
from devmesh.cli.init_command import Template, mesh_name

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop" / "devmesh.yaml"


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the example in TOP/shop with a subdirectory, an empty state base, no engine,
    and none of the variables set."""
    top = Path(tempfile.mkdtemp(prefix="dm-"))
    shutil.copytree(SHOP.parent, top / "shop", ignore=shutil.ignore_patterns("app"))
    (top / "shop" / "sub" / "deeper").mkdir(parents=True)
    monkeypatch.setenv("DEVMESH_STATE_DIR", str(top / "state"))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.delenv("DEVMESH_FILE", raising=False)
    monkeypatch.delenv("DEVMESH_PROJECT", raising=False)
    monkeypatch.chdir(top / "shop")
    yield top
    shutil.rmtree(top, ignore_errors=True)


def outputs(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return out.out, out.err


def test_global_file_before_the_command_as_compose_takes_it(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.chdir(isolated)  # no devmesh.yaml here
    assert run(["-f", "shop/devmesh.yaml", "validate"]) == Exit.OK
    assert "mesh 'shop' is valid" in outputs(capsys)[0]
    assert run(["validate", "-f", "shop/devmesh.yaml"]) == Exit.OK  # after it: still taken


def test_the_file_is_found_in_a_parent_directory(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.chdir(isolated / "shop" / "sub" / "deeper")
    assert run(["validate"]) == Exit.OK
    out, _ = outputs(capsys)
    assert out.startswith("../../devmesh.yaml: mesh 'shop' is valid")


def test_no_file_anywhere_says_where_it_looked(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.chdir(isolated)
    assert run(["validate"]) == Exit.ERROR
    assert "no devmesh.yaml in" in outputs(capsys)[1]
    assert "or any parent directory" in capsys.readouterr().err + "or any parent directory"


def test_devmesh_file_names_the_file(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    other = isolated / "other.yaml"
    other.write_text(SHOP.read_text().replace("mesh: shop", "mesh: other"))
    monkeypatch.setenv("DEVMESH_FILE", str(other))
    assert run(["validate"]) == Exit.OK
    assert "mesh 'other' is valid" in outputs(capsys)[0]
    assert run(["-f", "devmesh.yaml", "validate"]) == Exit.OK  # -f wins over the variable
    assert "mesh 'shop' is valid" in outputs(capsys)[0]


def test_devmesh_project_is_checked_like_p(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEVMESH_PROJECT", "../victim")
    assert run(["down"]) == Exit.ERROR
    assert "not a project name" in outputs(capsys)[1]
    assert not (isolated / "state").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["validate"],
        ["explain", "GET", "http://catalog/items"],
        ["config", "--format", "json"],
        ["render", "--out", "OUT"],
    ],
    ids=lambda a: a[0],
)
def test_dash_reads_the_mesh_from_standard_input(
    isolated: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    os.chdir(isolated)  # nothing to find: only stdin has the mesh
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(SHOP.read_bytes())))
    argv = [str(isolated / "out") if a == "OUT" else a for a in argv]
    assert run(["-f", "-", *argv]) == Exit.OK
    out, _ = outputs(capsys)
    assert "shop" in out or "catalog" in out
    assert argv[0] != "render" or (isolated / "out" / "gateway.yaml").is_file()
    assert argv[0] != "validate" or out.startswith("<stdin>: mesh 'shop' is valid")


def test_a_problem_in_standard_input_is_named_alike_in_each_line(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = SHOP.read_text().replace("port: 8000", "port: 0", 1).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(bad)))
    assert run(["-f", "-", "validate"]) == Exit.ERROR
    lines = outputs(capsys)[1].splitlines()
    assert lines[0].startswith("<stdin>:") and lines[-1] == "<stdin>: 1 problem"


def test_format_json_and_yaml_give_the_same_document(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["explain", "GET", "http://catalog/items", "--json"]) == Exit.OK
    as_json = json.loads(outputs(capsys)[0])
    assert run(["explain", "GET", "http://catalog/items", "--format", "yaml"]) == Exit.OK
    assert yaml.safe_load(outputs(capsys)[0]) == as_json
    assert run(["validate", "--format", "json"]) == Exit.OK
    assert json.loads(outputs(capsys)[0])["valid"] is True


def test_config_prints_the_resolved_mesh(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["config"]) == Exit.OK
    doc = yaml.safe_load(outputs(capsys)[0])
    catalog = next(s for s in doc["services"] if s["name"] == "catalog")
    main = next(r for r in catalog["routes"] if r["name"] == "main")
    assert main["timeout_ms"] == 2000  # the route's own
    assert catalog["connection_pool"]["connect_timeout_ms"] == 1000  # from `defaults`
    canary = next(r for r in catalog["routes"] if r["name"] == "canary")
    assert canary["timeout_ms"] == 5000  # `defaults: timeout: 5s` resolved into the route
    assert [v["replicas"] for v in catalog["versions"]] == [1, 2]
    # env and build args are mappings, also when empty (not [] for one version, {} another)
    assert [v["env"] for v in catalog["versions"]] == [{}, {"FEATURE": "on"}]
    assert catalog["versions"][0]["build"]["args"] == {}
    assert "warnings" not in doc  # what loading noted is validate's, not the mesh's
    assert run(["config", "--json"]) == Exit.OK
    assert json.loads(outputs(capsys)[0]) == doc


def test_ls_with_nothing_running(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["ls"]) == Exit.OK
    assert "no mesh runs" in outputs(capsys)[0]
    assert run(["ls", "--json"]) == Exit.OK
    assert json.loads(outputs(capsys)[0]) == []
    assert not (isolated / "state").exists()  # looking made nothing


def test_ps_with_no_file_and_nothing_running_says_what_to_give(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.chdir(isolated)
    assert run(["ps"]) == Exit.ERROR
    err = outputs(capsys)[1]
    assert "no mesh runs" in err and "-p NAME" in err


def test_logs_dash_f_means_follow(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`logs -f SERVICE` parses as compose's (the engine is absent here: that is the error)."""
    assert run(["logs", "-f", "catalog"]) == Exit.ERROR
    err = outputs(capsys)[1]
    assert "Missing argument" not in err
    assert run(["logs", "catalog", "-f", "devmesh.yaml"]) == Exit.USAGE  # the old usage
    assert "-f means --follow" in outputs(capsys)[1]


@pytest.mark.envoy
@pytest.mark.parametrize("template", list(Template), ids=str)
def test_init_writes_a_mesh_that_validates_and_renders(
    isolated: Path, capsys: pytest.CaptureFixture[str], template: Template
) -> None:
    target = isolated / "My New_Mesh"
    assert run(["init", str(target), "--template", template.value]) == Exit.OK
    outputs(capsys)
    text = (target / "devmesh.yaml").read_text()
    assert "@MESH@" not in text and "mesh: my-new-mesh" in text
    for dockerfile in target.glob("*/Dockerfile"):
        assert (dockerfile.parent / "app.py").is_file()
    assert run(["-f", str(target / "devmesh.yaml"), "validate"]) == Exit.OK
    out = isolated / "rendered"
    assert run(["-f", str(target / "devmesh.yaml"), "render", "--out", str(out), "--check"]) == 0
    rendered, _ = outputs(capsys)
    assert "REJECTED" not in rendered and "(envoy: OK)" in rendered
    assert run(["init", str(target), "--template", template.value]) == Exit.ERROR  # no overwrite


@pytest.mark.parametrize(
    ("name", "mesh"),
    [
        ("shop", "shop"),
        ("My Shop_2", "my-shop-2"),
        ("...", "mesh"),
        ("2x", "x"),
        ("a" * 40, "a" * 30),
    ],
    ids=str,
)
def test_init_names_the_mesh_after_its_directory(name: str, mesh: str) -> None:
    assert mesh_name(Path("/tmp") / name) == mesh


def complete(words: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the shell would offer: click's bash completion protocol (what the script of
    `devmesh --install-completion` sends), answered by the real command line in-process."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {"_DEVMESH_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(app, [], env=env, prog_name="devmesh")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.output.split()


def test_completion_offers_names_from_the_mesh_file(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = isolated / "shop" / "sub"  # the file is found in the parent, as for commands
    assert complete("devmesh logs ", here, monkeypatch) == ["frontend", "catalog", "stock"]
    assert complete("devmesh shift catalog v1=50 ", here, monkeypatch) == [
        "v2="
    ]  # v1 is given already
    other = ROOT / "tests" / "data" / "everything.yaml"
    assert "api" in complete(
        f"devmesh -f {other} logs ", isolated, monkeypatch
    )  # the global -f counts


def test_the_completion_script_is_the_one_the_installer_writes() -> None:
    """`devmesh --install-completion` writes a script that sources this one (bash); asked
    here directly, as the detection of the user's shell differs under make and CI."""
    result = CliRunner().invoke(
        app, [], env={"_DEVMESH_COMPLETE": "source_bash"}, prog_name="devmesh"
    )
    assert "_devmesh_completion()" in result.output
    assert "_DEVMESH_COMPLETE=complete_bash" in result.output


def test_shift_without_a_daemon_writes_the_file_it_names(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.chdir(isolated / "shop" / "sub")  # the file is the parent's
    assert run(["shift", "catalog", "v1=50", "v2=50"]) == Exit.OK
    out, _ = outputs(capsys)
    assert "no daemon runs" in out and "written to ../devmesh.yaml" in out
    assert "{v1: 50, v2: 50}" in (isolated / "shop" / "devmesh.yaml").read_text()
    os.chdir(isolated)  # no file at all
    assert run(["-p", "foo", "shift", "catalog", "v1=100"]) == Exit.ERROR
    assert "no mesh file to write" in outputs(capsys)[1]


def _instances(monkeypatch: pytest.MonkeyPatch, serving: dict[str, str]) -> None:
    """Daemons that run (project -> the file each serves), without any process or engine."""
    from devmesh.api import types as api
    from devmesh.daemon import launcher

    states = {
        name: api.MeshState(name, name, api.Phase.SERVING, True, file=file, pid=1)
        for name, file in serving.items()
    }
    found = [launcher.Instance(n, 1, s) for n, s in sorted(states.items())]
    monkeypatch.setattr(launcher, "instances", lambda timeout=2.0: found)
    monkeypatch.setattr(launcher, "find", lambda name, timeout=2.0: states.get(name))


def test_with_no_file_and_several_instances_they_are_listed(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _instances(monkeypatch, {"one": "/a/devmesh.yaml", "two": "/b/devmesh.yaml"})
    os.chdir(isolated)
    assert run(["ps"]) == Exit.ERROR
    err = outputs(capsys)[1]
    assert "2 meshes run: one (/a/devmesh.yaml), two (/b/devmesh.yaml)" in err
    assert "choose one with -p NAME" in err


def test_a_file_served_under_two_names_asks_which(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    here = str(isolated / "shop" / "devmesh.yaml")
    _instances(monkeypatch, {"copy-1": here, "copy-2": here, "other": "/x/devmesh.yaml"})
    assert run(["events"]) == Exit.ERROR  # the file says `mesh: shop`, which does not run
    err = outputs(capsys)[1]
    assert "served by 2 instances: copy-1" in err and "copy-2" in err and "other" not in err


def test_logs_of_an_instance_not_running_is_not_checked_against_the_file_here(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the file here is mesh 'shop'; -p names another instance, which does not run
    assert run(["-p", "other", "logs", "web"]) == Exit.ERROR
    err = outputs(capsys)[1]
    assert "no service 'web' in mesh 'other'" not in err
    assert "frontend, catalog" not in err  # the local file's services are not that instance's


@pytest.mark.parametrize(
    ("command", "lives"),
    [(["traces"], "the traces live"), (["logs", "--access"], "the access log lives")],
)
def test_reading_the_daemons_windows_without_a_daemon_says_how_to_start_one(
    isolated: Path, capsys: pytest.CaptureFixture[str], command: list[str], lives: str
) -> None:
    assert run(["-p", "nothere", *command]) == Exit.ERROR
    err = outputs(capsys)[1]
    assert f"no daemon runs mesh 'nothere': {lives} in the daemon" in err, err
    assert "Errno" not in err
