"""`devmesh traces`: the daemon's recent traces, filtered, and one trace as a waterfall."""

from __future__ import annotations

import shutil
import time
from typing import Annotated

import typer

from devmesh.api import types as api
from devmesh.api import waterfall
from devmesh.cli import views
from devmesh.cli.options import JsonFlag, MeshFile, ProjectOpt
from devmesh.core.durations import DurationError, parse_duration
from devmesh.core.problems import MeshError


def traces(
    trace_id: Annotated[
        str | None,
        typer.Argument(help="Show this trace as a waterfall (its id, or a unique start)."),
    ] = None,
    service: Annotated[
        str | None, typer.Option("--service", help="Only traces through this service.")
    ] = None,
    slower: Annotated[
        str | None, typer.Option("--slower", help="Only traces longer than this (100ms, 1s).")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", help="Only traces with a span of this status: 5xx, 404 ..."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many (1-1000).")] = 20,
    file: MeshFile = None,
    project: ProjectOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """The mesh's recent traces (newest first), or one trace as a waterfall.

    Example: devmesh traces --service catalog --status 5xx"""
    from devmesh.cli.run_commands import _target  # the instance, as every command finds it
    from devmesh.daemon import launcher

    name = _target(file, project).project
    if launcher.find(name) is None:
        raise MeshError(
            f"no daemon runs mesh '{name}': the traces live in the daemon "
            "(start it with `devmesh up`)"
        )
    client = launcher.client(name)
    if trace_id is not None:
        trace = client.trace(trace_id)
        if as_json:
            typer.echo(views.as_json(trace))
        else:
            width = shutil.get_terminal_size((120, 24)).columns
            typer.echo("\n".join(waterfall.text(trace, width)))
        return
    slower_ms = None
    if slower is not None:
        try:
            slower_ms = float(parse_duration(slower))
        except DurationError as exc:
            raise MeshError(f"--slower: {exc}") from None
    if not 1 <= limit <= 1000:
        raise MeshError(f"--limit takes 1 to 1000, not {limit}")
    # an unknown service: the daemon answers with its file's services and "did you mean"
    result = client.traces(service, slower_ms, status, limit)
    typer.echo(views.as_json(result) if as_json else "\n".join(table(result)))


def table(result: api.TracesResult) -> list[str]:
    rows = [("TRACE", "WHEN", "DURATION", "STATUS", "SPANS", "ROOT", "SERVICES")]
    for t in result.traces:
        rows.append(
            (
                t.trace_id,
                time.strftime("%H:%M:%S", time.localtime(t.start)),
                f"{t.duration_ms:.1f} ms",
                ("-" if t.status is None else str(t.status)) + (" !" if t.error else ""),
                str(t.spans),
                t.root,
                " ".join(t.services),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"{len(result.traces)} shown; {result.kept} kept (at most {result.capacity})")
    return lines
