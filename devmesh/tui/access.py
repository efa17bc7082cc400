"""The request log: the selected service's access-log entries (`AccessScreen`), newest last,
read from the daemon's API in a thread worker once a second.

`L` in the main view opens it for the selected service. Each line is one Envoy's view of one
request (which side logged it, who called whom over which route, status, time, Envoy's
response flags); the selected line's details show below with the flags in words. Enter on a
line that carries a trace id opens that trace (`traces.TraceScreen`).
"""

from __future__ import annotations

import time
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from devmesh.api import types as api
from devmesh.api.response_flags import explain_flags
from devmesh.core.problems import MeshError
from devmesh.tui.source import AccessClient
from devmesh.tui.traces import TraceScreen

CSS = """
AccessScreen { layout: vertical; }
.access-title { height: 1; background: $boost; text-style: bold; padding: 0 1; }
.access-note { height: auto; padding: 0 1; color: $text-muted; }
#access-list { height: 1fr; }
#access-detail { height: auto; max-height: 6; padding: 0 1; border-top: solid $accent; }
"""

SHOWN = 200  # entries the screen asks for (the daemon keeps 10,000)
REFRESH = 1.0  # seconds


class _Loaded(Message):
    def __init__(self, value: api.AccessResult | None, error: str = "") -> None:
        super().__init__()
        self.value = value
        self.error = error


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def entry_row(e: api.AccessEntry) -> tuple[str, ...]:
    source = "/".join(x for x in (e.source_service, e.source_version) if x) or "outside"
    dest = "/".join(x for x in (e.service, e.version) if x) or "?"
    request = "TCP" if e.tcp else f"{e.method} {e.path}"
    if e.mirrored_copy:
        request += " (mirrored copy)"
    return (
        time.strftime("%H:%M:%S", time.localtime(e.time)),
        e.reporter.value,
        source,
        dest,
        e.route or "-",
        request,
        "-" if e.status is None else str(e.status),
        _ms(e.duration_ms),
        ",".join(e.flags) or "-",
    )


def entry_detail(e: api.AccessEntry) -> str:
    """The selected line in full, flags in words."""
    parts = [
        f"{e.reporter.value} at {e.node}",
        f"{e.source_pod or e.source_service or 'outside'} -> {e.pod or e.service or '?'}",
    ]
    if e.mirrored_copy:
        parts.append(f"a mirrored copy ({e.authority}): its answer goes nowhere")
    if e.flags:
        parts.append(f"{','.join(e.flags)}: {explain_flags(e.flags)}")
    if e.detail:
        parts.append(e.detail)
    parts.append(f"upstream {_ms(e.upstream_ms)} ms")
    parts.append(f"in {e.bytes_received} B, out {e.bytes_sent} B")
    if e.request_id:
        parts.append(f"request {e.request_id}")
    parts.append(f"trace {e.trace_id} (Enter opens it)" if e.trace_id else "not traced")
    return " · ".join(parts)


class AccessScreen(Screen[None]):
    """The newest requests to or from one service; f: 5xx only; Enter: the line's trace."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Back"),
        Binding("f", "toggle_failing", "Failing only"),
        Binding("p", "toggle_pause", "Pause"),
    ]
    DEFAULT_CSS = CSS

    def __init__(self, client: AccessClient, service: str | None) -> None:
        super().__init__(id="access")
        self._client = client
        self._service = service
        self._failing = False
        self._paused = False
        self._entries: list[api.AccessEntry] = []

    def compose(self) -> ComposeResult:
        yield Static(self._title(), classes="access-title", id="access-title", markup=False)
        table: DataTable[str] = DataTable(id="access-list", cursor_type="row", zebra_stripes=True)
        table.add_columns("WHEN", "SIDE", "FROM", "TO", "ROUTE", "REQUEST", "STATUS", "MS", "FLAGS")
        yield table
        yield Static("", id="access-detail", markup=False)
        yield Static("loading…", classes="access-note", id="access-note", markup=False)
        yield Footer()

    def _title(self) -> str:
        who = f"service {self._service}" if self._service else "every service"
        title = f"requests to and from {who}" + (" · 5xx only" if self._failing else "")
        return title + (" · paused" if self._paused else "")

    def on_mount(self) -> None:
        self._load()
        self.set_interval(REFRESH, self._tick)

    def _tick(self) -> None:
        if not self._paused:
            self._load()

    @work(thread=True, exclusive=True, group="access", exit_on_error=False)
    def _load(self) -> None:
        req = api.AccessRequest(
            service=self._service, status="5xx" if self._failing else None, limit=SHOWN
        )
        try:
            result = self._client.access(req)
        except MeshError as exc:
            self.post_message(_Loaded(None, str(exc)))
            return
        self.post_message(_Loaded(result))

    @on(_Loaded)
    def _loaded(self, message: _Loaded) -> None:
        note = self.query_one("#access-note", Static)
        if message.value is None:
            note.update(message.error or "no answer")
            return
        entries = list(message.value.entries)
        if entries == self._entries:
            return  # nothing new: keep the cursor where it is
        table = self.query_one("#access-list", DataTable)
        at_end = table.cursor_row >= len(self._entries) - 1
        row = table.cursor_row
        table.clear()
        for e in entries:
            table.add_row(*entry_row(e))
        self._entries = entries
        if entries:
            table.move_cursor(row=len(entries) - 1 if at_end else min(row, len(entries) - 1))
        c = message.value.counters
        note.update(
            f"{len(entries)} shown · {c.kept} kept of {c.capacity} · {c.dropped} dropped · "
            "f: 5xx only · p: pause · Enter: the request's trace"
            if entries
            else "no requests yet; send some"
        )
        table.focus()
        self._show_detail(table.cursor_row)

    def _show_detail(self, row: int) -> None:
        detail = self.query_one("#access-detail", Static)
        detail.update(entry_detail(self._entries[row]) if 0 <= row < len(self._entries) else "")

    @on(DataTable.RowHighlighted, "#access-list")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail(event.cursor_row)

    @on(DataTable.RowSelected, "#access-list")
    def _open(self, event: DataTable.RowSelected) -> None:
        if 0 <= event.cursor_row < len(self._entries):
            trace = self._entries[event.cursor_row].trace_id
            if trace:
                self.app.push_screen(TraceScreen(self._client, trace))
            else:
                self.notify(
                    "this request was not traced (no trace id, or not sampled: "
                    "`sampling: auto` traces fewer requests under load)",
                    severity="warning",
                )

    def action_toggle_failing(self) -> None:
        self._failing = not self._failing
        self.query_one("#access-title", Static).update(self._title())
        self._load()

    def action_toggle_pause(self) -> None:
        self._paused = not self._paused
        self.query_one("#access-title", Static).update(self._title())

    def action_close(self) -> None:
        self.dismiss(None)
