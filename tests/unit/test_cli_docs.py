"""The command line documents itself and the docs match it: every command's --help has an
example, every command has a page in docs/commands/ whose examples run (those that need no
Docker), and the README's commands table lists exactly the commands of `devmesh --help`.

Generic over the commands: a new command fails these tests until it has its example, page
and README row."""

from __future__ import annotations

import io
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import typer.main

from devmesh.cli.app import app, run
from devmesh.cli.exits import Exit

ROOT = Path(__file__).resolve().parents[2]
PAGES = ROOT / "docs" / "commands"
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
# Pages whose examples run here: the mesh file alone, no engine, no daemon.
RUNNABLE = {"validate", "render", "explain", "config", "schema", "init"}


def examples(name: str) -> list[str]:
    text = (PAGES / f"{name}.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_the_commands_are_found() -> None:
    assert {"validate", "up", "logs", "ls", "events", "config", "init"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_has_an_example(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run([name, "--help"]) == Exit.OK
    out = capsys.readouterr().out
    assert re.search(rf"Example: devmesh .*{name}", out), out


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_a_page_with_examples(name: str) -> None:
    page = PAGES / f"{name}.md"
    assert page.is_file(), f"docs/commands/{name}.md is missing"
    lines = examples(name)
    assert lines, f"{page} has no ```sh example"
    assert all(line.startswith("devmesh ") for line in lines)
    assert any(re.search(rf"\b{name}\b", line) for line in lines)
    assert f"({name}.md)" in (PAGES / "README.md").read_text()  # listed in the index


def test_the_readme_commands_table_matches_devmesh_help() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Commands\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `devmesh ([a-z-]+)", section, flags=re.M)
    assert sorted(rows) == COMMANDS
    assert len(rows) == len(set(rows))


@pytest.mark.envoy  # render --check runs the real Envoy
@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_the_examples_of_file_commands_run(
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each example line in a copy of the example mesh's directory, run in this process
    (a `devmesh` process costs a second or more to start on a loaded machine); `< FILE` and
    `> FILE` are honoured as a shell would, anything else a shell does is not used."""
    work = tmp_path / "shop"
    shutil.copytree(ROOT / "examples" / "shop", work, ignore=shutil.ignore_patterns("app"))
    monkeypatch.chdir(work)
    monkeypatch.delenv("DEVMESH_FILE", raising=False)
    monkeypatch.delenv("DEVMESH_PROJECT", raising=False)
    monkeypatch.setenv("DEVMESH_STATE_DIR", str(tmp_path / "state"))
    for line in examples(name):
        words = shlex.split(line)
        assert not set(words) & {"|", "&&", ";", ">>"}, f"{line}: not run by this test"
        if "<" in words:
            at = words.index("<")
            data = (work / words[at + 1]).read_bytes()
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
            del words[at : at + 2]
        into = None
        if ">" in words:
            at = words.index(">")
            into = work / words[at + 1]
            del words[at : at + 2]
        code = run(words[1:])
        out = capsys.readouterr()
        assert code == Exit.OK, f"{line}\n{out.out}\n{out.err}"
        assert "Traceback" not in out.err
        if into is not None:
            into.write_text(out.out)


def test_the_committed_schema_is_what_devmesh_schema_prints() -> None:
    """devmesh.schema.json (what editors point at) is regenerated with `make schema`."""
    import json

    from devmesh.core.schema import json_schema

    committed = json.loads((ROOT / "devmesh.schema.json").read_text())
    assert committed == json_schema(), "stale devmesh.schema.json: run `make schema`"
