"""The `devmesh` command. Each command parses arguments, makes one call, renders the result;
project errors become a message and exit code 1, never a traceback."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from devmesh import __version__
from devmesh.core.problems import MeshError, MeshInvalid

app = typer.Typer(
    name="devmesh",
    help="A local service mesh on plain Docker: Envoy sidecars, live routing, no cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

MeshFile = Annotated[
    Path,
    typer.Option("-f", "--file", help="The mesh file.", show_default=True),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
DEFAULT_FILE = Path("devmesh.yaml")


def _err(text: str) -> None:
    typer.echo(text, err=True)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"devmesh {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """devmesh: validate, render and explain a mesh file; run it on Docker."""


@app.command()
def validate(file: MeshFile = DEFAULT_FILE, as_json: JsonFlag = False) -> None:
    """Check the mesh file; print every problem at once as FILE:LINE:COL: key: message."""
    from devmesh.core.load import load_path
    from devmesh.core.summary import summarize

    try:
        mesh = load_path(str(file))
    except MeshInvalid as exc:
        if as_json:
            _print_json({"valid": False, "problems": [_problem_json(p) for p in exc.problems]})
        else:
            for problem in exc.problems:
                _err(str(problem))
            n = len(exc.problems)
            _err(f"{file}: {n} problem{'s' if n != 1 else ''}")
        raise typer.Exit(1) from None
    summary = summarize(mesh)
    if as_json:
        _print_json({"valid": True, **summary.as_json()})
    else:
        typer.echo(f"{file}: {summary}")


def _problem_json(p: Any) -> dict[str, Any]:
    return {"file": p.file, "line": p.line, "col": p.col, "path": p.path, "message": p.message}


@app.command()
def render(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the config files.")],
    file: MeshFile = DEFAULT_FILE,
    check: Annotated[
        bool, typer.Option("--check", help="Also run `envoy --mode validate` on each file.")
    ] = False,
) -> None:
    """Write one complete static Envoy config per sidecar and for the ingress gateway."""
    from devmesh.core.load import load_path
    from devmesh.envoy.render import render_mesh

    mesh = load_path(str(file))
    rendered = render_mesh(mesh)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MeshError(f"{out}: cannot create the directory: {exc.strerror}") from None
    failed = 0
    for item in rendered:
        path = out / item.filename
        text = yaml.safe_dump(item.bootstrap, sort_keys=False, default_flow_style=False)
        _write_atomic(path, text)
        line = f"wrote {path}"
        if check:
            from devmesh.adapters.envoy_binary import validate as envoy_validate

            verdict = envoy_validate(path)
            if verdict.ok:
                line += "  (envoy: OK)"
            else:
                failed += 1
                line += f"  (envoy REJECTED)\n{verdict.detail}"
        typer.echo(line, err=bool(check and "REJECTED" in line))
    if failed:
        _err(f"{failed} of {len(rendered)} configs rejected by Envoy")
        raise typer.Exit(1)


def _write_atomic(path: Path, text: str) -> None:
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as fh:
            fh.write(text)
        Path(fh.name).replace(path)
    except OSError as exc:
        raise MeshError(f"{path}: cannot write: {exc.strerror}") from None


@app.command()
def explain(
    method: Annotated[str, typer.Argument(help="HTTP method, e.g. GET.")],
    url: Annotated[
        str,
        typer.Argument(
            help="http://SERVICE/path for a call between services, or "
            "http://127.0.0.1:PORT/path (or /path) for a request through the ingress."
        ),
    ],
    header: Annotated[
        list[str] | None,
        typer.Option("-H", "--header", help="A request header, 'name: value'. Repeatable."),
    ] = None,
    file: MeshFile = DEFAULT_FILE,
    as_json: JsonFlag = False,
) -> None:
    """Show which route matches a request, where it goes and what applies (and why not others)."""
    from devmesh.core.explain import explain as run_explain
    from devmesh.core.explain import explanation_json, format_explanation, parse_header
    from devmesh.core.load import load_path

    mesh = load_path(str(file))
    headers = [parse_header(h) for h in header or ()]
    result = run_explain(mesh, method, url, headers)
    if as_json:
        _print_json(explanation_json(result))
    else:
        typer.echo(format_explanation(result))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the mesh file (for yaml-language-server and editors)."""
    from devmesh.core.schema import json_schema

    _print_json(json_schema())


def main() -> None:
    try:
        app()
    except MeshError as exc:
        _err(f"devmesh: {exc}" if not isinstance(exc, MeshInvalid) else str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        _err("devmesh: interrupted")
        sys.exit(130)
