"""The `devmesh` command: the typer app, its commands registered in one place, and `main`,
which turns devmesh's errors into a message and an exit code (`devmesh.cli.exits`), never a
traceback."""

from __future__ import annotations

import os
import sys
from typing import Annotated, NoReturn

import typer
from typer.exceptions import TyperException

from devmesh import __version__
from devmesh.cli import file_commands, run_commands, trace_commands
from devmesh.cli.exits import Exit
from devmesh.core.problems import MeshError, MeshInvalid

app = typer.Typer(
    name="devmesh",
    help="A local service mesh on plain Docker: Envoy sidecars, live routing, no cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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


for command in (
    file_commands.validate,
    file_commands.render,
    file_commands.explain,
    file_commands.schema,
    run_commands.up,
    run_commands.tui,
    run_commands.down,
    run_commands.ps,
    run_commands.logs,
    run_commands.shift,
    trace_commands.traces,
):
    app.command()(command)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    run_commands.run
)


def main(argv: list[str] | None = None) -> NoReturn:
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """Run the command line; its exit code."""
    try:
        code = app(args=argv, prog_name="devmesh", standalone_mode=False)
    except MeshInvalid as exc:
        typer.echo(str(exc), err=True)
        return Exit.ERROR
    except MeshError as exc:
        typer.echo(f"devmesh: {exc}", err=True)
        return Exit.ERROR
    except typer.Exit as exc:
        return int(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("devmesh: interrupted", err=True)
        return Exit.INTERRUPTED
    except TyperException as exc:  # a usage error: typer's message, exit 2
        exc.show()  # type: ignore[attr-defined]  # every TyperException raised here can
        return int(getattr(exc, "exit_code", Exit.USAGE))
    except BrokenPipeError:  # `devmesh logs x | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.ERROR
    return int(code) if isinstance(code, int) else Exit.OK
