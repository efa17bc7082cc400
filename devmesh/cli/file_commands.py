"""Commands about the mesh file alone: validate, render, explain, schema. No daemon, no
engine (`render --check` runs the Envoy binary)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from devmesh.cli.exits import Exit
from devmesh.cli.options import DEFAULT_FILE, JsonFlag, MeshFile
from devmesh.core.problems import MeshError, MeshInvalid, Problem


def _err(text: str) -> None:
    typer.echo(text, err=True)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


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
        raise typer.Exit(Exit.ERROR) from None
    from devmesh.adapters.tlsfiles import ingress_problems

    files = ingress_problems(mesh)  # the user's certificate and key, read and checked
    if files:
        if as_json:
            _print_json({"valid": False, "problems": [{"message": p} for p in files]})
        else:
            for line in files:
                _err(line)
            _err(f"{file}: {len(files)} problem{'s' if len(files) != 1 else ''}")
        raise typer.Exit(Exit.ERROR)
    summary = summarize(mesh)
    if as_json:
        _print_json({"valid": True, **summary.as_json()})
    else:
        typer.echo(f"{file}: {summary}")


def _problem_json(p: Problem) -> dict[str, Any]:
    return {"file": p.file, "line": p.line, "col": p.col, "path": p.path, "message": p.message}


def render(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the config files.")],
    file: MeshFile = DEFAULT_FILE,
    check: Annotated[
        bool, typer.Option("--check", help="Also run `envoy --mode validate` on each file.")
    ] = False,
) -> None:
    """Write one complete static Envoy config per sidecar and for the ingress gateway."""
    import yaml

    from devmesh.core.load import load_path
    from devmesh.envoy.render import render_mesh

    rendered = render_mesh(load_path(str(file)))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MeshError(f"{out}: cannot create the directory: {exc.strerror}") from None
    failed = 0
    for item in rendered:
        path = out / item.filename
        _write_atomic(
            path, yaml.safe_dump(item.bootstrap, sort_keys=False, default_flow_style=False)
        )
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
        raise typer.Exit(Exit.ERROR)


def _write_atomic(path: Path, text: str) -> None:
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as fh:
            fh.write(text)
        Path(fh.name).replace(path)  # a reader never sees half a config
    except OSError as exc:
        raise MeshError(f"{path}: cannot write: {exc.strerror}") from None


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


def schema() -> None:
    """Print the JSON Schema of the mesh file (for yaml-language-server and editors)."""
    from devmesh.core.schema import json_schema

    _print_json(json_schema())
