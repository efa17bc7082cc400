"""`devmesh tui > file` (or in a pipe): a clear error and a non-zero exit at once; no escape
codes in the file, no waiting. The other streams are a real terminal (a pty) here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

DEVMESH = [sys.executable, "-m", "devmesh"]


@pytest.mark.parametrize(
    ("redirected", "name"),
    [("stdout", "standard output"), ("stdin", "standard input"), ("stderr", "standard error")],
)
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
