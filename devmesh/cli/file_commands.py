"""Commands about the mesh file alone: validate, render, explain, schema. No daemon, no
engine (`render --check` runs the Envoy binary)."""

from __future__ import annotations

import json
import re
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from devmesh.cli.exits import Exit
from devmesh.cli.options import (
    Format,
    FormatOpt,
    JsonFlag,
    MeshFile,
    explicit_file,
    given_project,
    load_mesh,
    mesh_file,
    output_format,
)
from devmesh.core.problems import MeshError, MeshInvalid, Problem

if TYPE_CHECKING:
    from devmesh.api import types as api
    from devmesh.core.model import Mesh


def _err(text: str) -> None:
    typer.echo(text, err=True)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def _print(data: Any, fmt: Format) -> None:
    from devmesh.cli.views import dump_plain

    typer.echo(dump_plain(data, fmt))


def validate(file: MeshFile = None, as_json: JsonFlag = False, output: FormatOpt = None) -> None:
    """Check the mesh file; print every problem at once as FILE:LINE:COL: key: message.

    Example: devmesh validate    (or: devmesh -f examples/shop/devmesh.yaml validate)"""
    from devmesh.core.summary import summarize

    fmt = output_format(output, as_json)
    as_json = fmt is not Format.TABLE
    path = mesh_file(file, stdin=True)
    shown = "<stdin>" if str(path) == "-" else str(path)  # as the problems name it
    try:
        mesh = load_mesh(path)
    except MeshInvalid as exc:
        if as_json:
            _print({"valid": False, "problems": [_problem_json(p) for p in exc.problems]}, fmt)
        else:
            for problem in exc.problems:
                _err(str(problem))
            n = len(exc.problems)
            _err(f"{shown}: {n} problem{'s' if n != 1 else ''}")
        raise typer.Exit(Exit.ERROR) from None
    from devmesh.adapters.tlsfiles import ingress_problems

    files = ingress_problems(mesh)  # the user's certificate and key, read and checked
    if files:
        if as_json:
            _print({"valid": False, "problems": [_located_json(p) for p in files]}, fmt)
        else:
            for line in files:
                _err(line)
            _err(f"{shown}: {len(files)} problem{'s' if len(files) != 1 else ''}")
        raise typer.Exit(Exit.ERROR)
    summary = summarize(mesh)
    if as_json:
        warnings = {"warnings": [_problem_json(p) for p in mesh.warnings]}
        _print({"valid": True, **summary.as_json(), **warnings}, fmt)
    else:
        _warn(mesh)
        typer.echo(f"{shown}: {summary}")


def _warn(mesh: Mesh) -> None:
    """What loads but cannot be what was meant, one located line each, on stderr."""
    for problem in mesh.warnings:
        _err(f"{problem} (warning)")


def _problem_json(p: Problem) -> dict[str, Any]:
    return {"file": p.file, "line": p.line, "col": p.col, "path": p.path, "message": p.message}


_LOCATED = re.compile(
    r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<path>[\w.\[\]-]+): (?P<message>.*)$", re.S
)


def _located_json(text: str) -> dict[str, Any]:
    """A certificate file's problem (`FILE:LINE:COL: ingress.tls.cert: message`) in the
    same fields as the loader's problems; as a bare message when it names no place."""
    found = _LOCATED.match(text)
    if found is None:
        return {"file": None, "line": None, "col": None, "path": None, "message": text}
    return {
        "file": found["file"],
        "line": int(found["line"]),
        "col": int(found["col"]),
        "path": found["path"],
        "message": found["message"],
    }


def render(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the config files.")],
    file: MeshFile = None,
    check: Annotated[
        bool, typer.Option("--check", help="Also run `envoy --mode validate` on each file.")
    ] = False,
) -> None:
    """Write one complete static Envoy config per sidecar and for the ingress gateway.

    Example: devmesh render --out out/shop --check"""
    import yaml

    from devmesh.envoy.render import render_mesh

    rendered = render_mesh(load_mesh(mesh_file(file, stdin=True)))
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
    file: MeshFile = None,
    as_json: JsonFlag = False,
    output: FormatOpt = None,
) -> None:
    """Show which route matches a request, where it goes and what applies (and why not others).

    Example: devmesh explain GET http://catalog/items -H 'x-canary: 1'"""
    from devmesh.core.explain import explain as run_explain
    from devmesh.core.explain import explanation_json, format_explanation, parse_header

    fmt = output_format(output, as_json)
    mesh = load_mesh(mesh_file(file, stdin=True))
    headers = [parse_header(h) for h in header or ()]
    result = run_explain(mesh, method, url, headers)
    if fmt is not Format.TABLE:
        _print(explanation_json(result), fmt)
    else:
        _warn(mesh)
        typer.echo(format_explanation(result))


def schema() -> None:
    """Print the JSON Schema of the mesh file (for yaml-language-server and editors).

    Example: devmesh schema > devmesh.schema.json"""
    from devmesh.core.schema import json_schema

    _print_json(json_schema())


class ConfigFormat(StrEnum):
    YAML = "yaml"
    JSON = "json"


def config(
    file: MeshFile = None,
    project: Annotated[
        str | None,
        typer.Option(
            "-p",
            "--project-name",
            "--project",
            help="A running instance: its mesh as served (its port, live faults).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonFlag = False,
    output: Annotated[
        ConfigFormat, typer.Option("--format", help="yaml or json.", case_sensitive=False)
    ] = ConfigFormat.YAML,
) -> None:
    """Print the mesh as devmesh reads it, every default resolved.

    Mesh `defaults` -> service -> route resolved, every version and route named, durations
    in milliseconds. With -p NAME (and no -f): the running instance's mesh as it serves it,
    with its own ingress port and the faults set live through the API or the TUI.

    Example: devmesh config --format json"""
    from devmesh.core.resolved import resolved

    explicit = explicit_file(file)
    served = None if explicit is not None else _served(project)
    named = explicit if served is None else Path(served[0].file)
    mesh = load_mesh(mesh_file([named] if named is not None else None, stdin=True))
    if served is not None:
        mesh = _as_served(mesh, *served)
    fmt = Format.JSON if as_json or output is ConfigFormat.JSON else Format.YAML
    _print(resolved(mesh), fmt)


def _served(project: str | None) -> tuple[api.MeshState, api.Routes] | None:
    """With -p (or $DEVMESH_PROJECT): the running instance's state and routes."""
    name = given_project(project)
    if name is None:
        return None
    from devmesh.daemon import launcher

    state = launcher.find(name)
    if state is None or not state.file:
        raise MeshError(f"no daemon runs mesh '{name}'; give its file with -f FILE")
    return state, launcher.client(name).routes()


def _as_served(mesh: Mesh, state: api.MeshState, routes: api.Routes) -> Mesh:
    """The file's mesh as the instance serves it: its own ingress port (`--ingress-port`)
    and the faults set through the API (`/v1/fault`, the TUI)."""
    from urllib.parse import urlsplit

    from devmesh.core.model import Abort, Delay, Fault
    from devmesh.plan.effective import effective

    port = None
    if state.gateway is not None and state.gateway.url:
        port = urlsplit(state.gateway.url).port
    overrides: dict[tuple[str, str], Fault | None] = {}
    for service in routes.services:
        for route in service.routes:
            if not route.fault_override:
                continue
            spec = route.fault
            delay = spec.delay if spec else None
            abort = spec.abort if spec else None
            fault = Fault(
                Delay(delay.fixed_ms, delay.percent) if delay else None,
                Abort(abort.percent, abort.status, abort.grpc_status) if abort else None,
            )
            overrides[(service.name, route.name)] = fault if (delay or abort) else None
    return effective(mesh, overrides, port)
