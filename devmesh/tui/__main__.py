"""`python -m devmesh.tui --socket PATH [--headless --seconds N]`: the TUI on a daemon's API
socket, as a process of its own (bench/tui_cpu.py measures it so). Users run `devmesh tui`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from devmesh.tui.app import make_app
from devmesh.tui.source import connect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devmesh.tui")
    parser.add_argument("--socket", required=True, type=Path, help="the daemon's api.sock")
    parser.add_argument("--headless", action="store_true", help="draw to no terminal")
    parser.add_argument("--seconds", type=float, default=None, help="quit after this long")
    parser.add_argument("--size", default="80x24", help="headless screen size, COLSxROWS")
    args = parser.parse_args(argv)
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    app = make_app(
        connect(args.socket, timeout=5),
        stop_when=None if deadline is None else (lambda: time.monotonic() >= deadline),
    )
    cols, _, rows = args.size.partition("x")
    app.run(headless=args.headless, size=(int(cols), int(rows)) if args.headless else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
