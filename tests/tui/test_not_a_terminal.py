"""`devmesh tui > file` (or in a pipe): a clear error and a non-zero exit at once; no escape
codes in the file, no waiting. The other streams are a real terminal (a pty) here."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

DEVMESH = [sys.executable, "-m", "devmesh"]


@pytest.mark.parametrize(("redirected", "name"), [("stdout", "standard output")])
def test_tui_without_a_terminal_says_so_and_exits(tmp_path: Path, redirected, name) -> None:
    leader, follower = os.openpty()
    out = tmp_path / "out"
    err = tmp_path / "err"
    try:
        with out.open("wb") as out_file, err.open("wb") as err_file:
            streams: dict[str, Any] = {"stdin": follower, "stdout": follower, "stderr": follower}
            streams[redirected] = subprocess.DEVNULL if redirected == "stdin" else out_file
            if redirected != "stderr":
                streams["stderr"] = err_file  # where the message goes, to read it
            result = subprocess.run(
                [*DEVMESH, "-p", "nosuchmesh", "tui"],
                timeout=60,
                cwd=tmp_path,
                env={**os.environ, "TERM": "xterm-256color"},
                check=False,
                **streams,
            )
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode != 0
    written = out.read_bytes() + err.read_bytes()
    assert b"\x1b[" not in written  # no escape codes into a file
    said = out.read_bytes() if redirected == "stderr" else err.read_bytes()
    assert f"{name} is not one".encode() in said


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        super().isatty()  # ValueError once closed, as a real stream's
        return self.tty


@pytest.mark.parametrize(
    ("stdin", "stdout", "stderr", "name"),
    [
        (False, True, True, "standard input"),
        (True, False, True, "standard output"),
        (True, True, False, "standard error"),
    ],
)
def test_each_stream_must_be_a_terminal(stdin, stdout, stderr, name) -> None:
    from devmesh.tui import NotATerminal, check_terminal, is_terminal

    streams = (_Stream(stdin), _Stream(stdout), _Stream(stderr))
    with pytest.raises(NotATerminal, match=f"{name} is not one"):
        check_terminal(*streams)
    check_terminal(_Stream(True), _Stream(True), _Stream(True))  # all three: no error
    closed = _Stream(True)
    closed.close()
    with pytest.raises(NotATerminal):
        check_terminal(closed, _Stream(True), _Stream(True))
    assert isinstance(is_terminal(), bool)
