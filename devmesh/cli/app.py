"""The `devmesh` command: the typer app, its commands registered in one place, and `main`,
which turns devmesh's errors into a message and an exit code (`devmesh.cli.exits`), never a
traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from typer.exceptions import TyperException

from devmesh import __version__
from devmesh.cli import (
    ca_command,
    dev_command,
    engine_command,
    file_commands,
    init_command,
    run_commands,
    trace_commands,
)
from devmesh.cli.exits import Exit
from devmesh.cli.options import Globals, set_globals
from devmesh.core.names import check_project
from devmesh.core.problems import MeshError, MeshInvalid

app = typer.Typer(
    name="devmesh",
    help="A local service mesh on plain Docker: Envoy sidecars, live routing, no cluster.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"devmesh {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    file: Annotated[
        list[Path] | None,
        typer.Option(
            "-f",
            "--file",
            metavar="FILE",
            help="The mesh file, for every command (as `docker compose -f FILE ...`); '-': "
            "standard input. Default: $DEVMESH_FILE, else ./devmesh.yaml or the nearest one "
            "in a parent directory.",
            show_default=False,
        ),
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(
            "-p",
            "--project-name",
            "--project",
            metavar="NAME",
            help="The instance's name, for every command (default: $DEVMESH_PROJECT, else the "
            "file's `mesh:` name; with no file, the one mesh that runs).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """devmesh: validate, render and explain a mesh file; run it on Docker.

    Example: devmesh -f examples/shop/devmesh.yaml up -d --wait"""
    if project is not None:
        check_project(project)  # `-p ../x` is refused before any command runs
    set_globals(Globals(tuple(file or ()), project))


for command in (
    file_commands.validate,
    file_commands.render,
    file_commands.explain,
    file_commands.schema,
    run_commands.up,
    run_commands.tui,
    run_commands.down,
    run_commands.ps,
    run_commands.ls,
    run_commands.logs,
    run_commands.events,
    run_commands.shift,
    ca_command.ca,
    file_commands.config,
    init_command.init,
    trace_commands.traces,
    engine_command.engine,
):
    app.command()(command)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    run_commands.run
)
app.command()(dev_command.dev)


def _hint_logs_follow(argv: list[str]) -> None:
    """`devmesh logs SERVICE -f FILE` was the file before -f meant --follow (compose's)."""
    if "logs" in argv and "-f" in argv[argv.index("logs") :]:
        typer.echo(
            "devmesh: after `logs`, -f means --follow (as in docker compose); give the file "
            "before the command: devmesh -f FILE logs SERVICE, or --file FILE",
            err=True,
        )


def main(argv: list[str] | None = None) -> NoReturn:
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """Run the command line; its exit code."""
    set_globals(Globals())  # a second run in one process starts afresh
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
        _hint_logs_follow(argv if argv is not None else sys.argv[1:])
        return int(getattr(exc, "exit_code", Exit.USAGE))
    except BrokenPipeError:  # `devmesh logs x | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.ERROR
    return int(code) if isinstance(code, int) else Exit.OK
