"""The trace views: a service's recent traces (`TracesScreen`) and one trace as a waterfall
(`TraceScreen`), both read from the daemon's API in thread workers.

`t` in the main view opens the selected service's traces; Enter on one opens its
waterfall. The access-log pane opens `TraceScreen(client, trace_id)` for a selected line.
"""

from __future__ import annotations

import time
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from devmesh.api import types as api
from devmesh.api import waterfall
from devmesh.core.problems import MeshError
from devmesh.tui.source import TraceClient

CSS = """
TracesScreen, TraceScreen { layout: vertical; }
.trace-title { height: 1; background: $boost; text-style: bold; padding: 0 1; }
.trace-note { height: auto; padding: 0 1; color: $text-muted; }
#trace-list { height: 1fr; }
#waterfall-box { height: 1fr; }
#waterfall { padding: 0 1; width: auto; }
#span-detail { height: auto; max-height: 8; padding: 0 1; border-top: solid $accent; }
"""


class _Loaded(Message):
    def __init__(self, value: api.TracesResult | api.Trace | None, error: str = "") -> None:
        super().__init__()
        self.value = value
        self.error = error


def summary_row(t: api.TraceSummary) -> tuple[str, ...]:
    status = "-" if t.status is None else str(t.status)
    return (
        time.strftime("%H:%M:%S", time.localtime(t.start)),
        t.trace_id[:16],
        f"{t.duration_ms:.1f} ms",
        status + (" !" if t.error else ""),
        str(t.spans),
        t.root,
        " ".join(t.services),
    )


def waterfall_text(trace: api.Trace, width: int) -> Text:
    """The waterfall, failing spans in red."""
    lines = waterfall.text(trace, width)
    out = Text(lines[0] + "\n", style="bold")
    for row, line in zip(waterfall.rows(trace), lines[1:], strict=True):
        style = "red" if row.span.error else ""
        out.append(line + "\n", style=style)
    return out


def span_detail(span: api.Span) -> str:
    parts = [
        waterfall.describe(span).strip(),
        f"status {waterfall.status_text(span)}",
        f"{span.duration_ms:.1f} ms",
    ]
    if span.node:
        parts.append(span.node)
    if span.method or span.url:
        parts.append(f"{span.method} {span.url}".strip())
    if span.request_id:
        parts.append(f"request {span.request_id}")
    return " · ".join(parts)


class TracesScreen(Screen[None]):
    """The newest traces through one service (or all); Enter opens one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Back"),
        Binding("f", "toggle_failing", "Failing only"),
        Binding("g", "reload", "Refresh"),
    ]
    DEFAULT_CSS = CSS

    def __init__(self, client: TraceClient, service: str | None) -> None:
        super().__init__(id="traces")
        self._client = client
        self._service = service
        self._failing = False
        self._ids: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static(self._title(), classes="trace-title", id="traces-title", markup=False)
        table: DataTable[str] = DataTable(id="trace-list", cursor_type="row", zebra_stripes=True)
        table.add_columns("WHEN", "TRACE", "DURATION", "STATUS", "SPANS", "ROOT", "SERVICES")
        yield table
        yield Static("loading…", classes="trace-note", id="traces-note", markup=False)
        yield Footer()

    def _title(self) -> str:
        who = f"service {self._service}" if self._service else "every service"
        return f"traces through {who}" + (" · 5xx only" if self._failing else "")

    def on_mount(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="traces", exit_on_error=False)
    def _load(self) -> None:
        try:
            result = self._client.traces(self._service, None, "5xx" if self._failing else None)
        except MeshError as exc:
            self.post_message(_Loaded(None, str(exc)))
            return
        self.post_message(_Loaded(result))

    @on(_Loaded)
    def _loaded(self, message: _Loaded) -> None:
        note = self.query_one("#traces-note", Static)
        table = self.query_one("#trace-list", DataTable)
        table.clear()
        self._ids = []
        if not isinstance(message.value, api.TracesResult):
            note.update(message.error or "no answer")
            return
        for t in message.value.traces:
            table.add_row(*summary_row(t))
            self._ids.append(t.trace_id)
        kept = f"{message.value.kept} kept (at most {message.value.capacity})"
        if not self._ids:
            note.update(f"no traces yet; send some requests · {kept}")
        else:
            note.update(f"Enter: show one as a waterfall · {kept}")
        table.focus()

    @on(DataTable.RowSelected, "#trace-list")
    def _open(self, event: DataTable.RowSelected) -> None:
        if 0 <= event.cursor_row < len(self._ids):
            self.app.push_screen(TraceScreen(self._client, self._ids[event.cursor_row]))

    def action_toggle_failing(self) -> None:
        self._failing = not self._failing
        self.query_one("#traces-title", Static).update(self._title())
        self._load()

    def action_reload(self) -> None:
        self._load()

    def action_close(self) -> None:
        self.dismiss(None)


class TraceScreen(Screen[None]):
    """One trace as a waterfall: a row per span, under its parent, on the trace's time line;
    ↑ ↓ pick a span, whose details show below."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Back"),
        Binding("up,k", "move(-1)", "", show=False),
        Binding("down,j", "move(1)", "", show=False),
    ]
    DEFAULT_CSS = CSS

    def __init__(self, client: TraceClient, trace_id: str) -> None:
        super().__init__(id="trace")
        self._client = client
        self.trace_id = trace_id
        self.trace: api.Trace | None = None
        self._selected = 0

    def compose(self) -> ComposeResult:
        yield Static(f"trace {self.trace_id}", classes="trace-title", markup=False)
        with Vertical(id="waterfall-box"), VerticalScroll():
            yield Static("loading…", id="waterfall", markup=False)
        yield Static("", id="span-detail", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="trace", exit_on_error=False)
    def _load(self) -> None:
        try:
            trace = self._client.trace(self.trace_id)
        except MeshError as exc:
            self.post_message(_Loaded(None, str(exc)))
            return
        self.post_message(_Loaded(trace))

    @on(_Loaded)
    def _loaded(self, message: _Loaded) -> None:
        if not isinstance(message.value, api.Trace):
            self.query_one("#waterfall", Static).update(message.error or "no answer")
            return
        self.trace = message.value
        self._show()

    def _show(self) -> None:
        if self.trace is None:
            return
        width = max(60, self.size.width - 2)
        text = waterfall_text(self.trace, width)
        rows = waterfall.rows(self.trace)
        if rows:
            self._selected = max(0, min(self._selected, len(rows) - 1))
            text.stylize("reverse", *self._line_span(text, self._selected + 1))
            detail = span_detail(rows[self._selected].span)
        else:
            detail = ""
        self.query_one("#waterfall", Static).update(text)
        self.query_one("#span-detail", Static).update(detail)

    @staticmethod
    def _line_span(text: Text, line: int) -> tuple[int, int]:
        plain = text.plain
        start = 0
        for _ in range(line):
            start = plain.index("\n", start) + 1
        end = plain.find("\n", start)
        return start, end if end >= 0 else len(plain)

    def action_move(self, delta: int) -> None:
        self._selected += delta
        self._show()

    def action_close(self) -> None:
        self.dismiss(None)
