"""The TUI: one screen of services and pods, routes with their weights and live numbers, the
selected pod's app log and the mesh's events.

Attributes down, messages up: a poller thread reads the daemon and posts `Refreshed`; the app
hands each widget its rows; the widgets post nothing but Textual's own highlight messages.
Actions (shift, fault, restart) run in thread workers and post `ActionDone`. Everything
the app shows comes as `devmesh.api.types` values; time comes from a `Clock`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.events import Key, Resize
from textual.message import Message
from textual.widgets import Footer, Input, Log, Static

from devmesh.api import types as api
from devmesh.core.problems import MeshError
from devmesh.tui.access import AccessScreen
from devmesh.tui.clock import Clock, Timer
from devmesh.tui.model import (
    POD_COLUMNS,
    ROUTE_COLUMNS,
    PendingShifts,
    Row,
    ShiftKey,
    appended,
    banner,
    bring_up_progress,
    describe_lines,
    event_line,
    filter_rows,
    find_route,
    find_service,
    header_text,
    pod_rows,
    route_detail,
    route_rows,
    set_weight,
    step_weight,
    weights_to_send,
)
from devmesh.tui.poller import Frame, Poller
from devmesh.tui.screens import ConfirmScreen, DescribeScreen, HelpScreen, WeightScreen
from devmesh.tui.source import MeshClient
from devmesh.tui.stats import Rates
from devmesh.tui.traces import TracesScreen
from devmesh.tui.widgets import Line, RowTable, lines_text

POD_WIDTHS = {"name": 14, "state": 12, "version": 8, "xds": 4, "rps": 5, "ok": 5, "p99": 5}
POD_WIDTHS |= {"trend": 10, "config": 8, "address": 22}
ROUTE_WIDTHS = {"route": 14, "weight": 6, "seen": 5, "rps": 5, "ok": 5, "p50": 5, "p99": 5}
ROUTE_WIDTHS |= {"trend": 10, "policy": 30, "match": 28}

# Columns that narrow when the screen does, and those left out (in order) when that is not
# enough: no row is ever wider than its table.
POD_FLEX = ("address",)
POD_DROP = ("config", "address", "trend", "xds")
ROUTE_FLEX = ("policy", "match")
ROUTE_DROP = ("trend", "seen", "p50", "match")

DELAY_FAULT = api.DelaySpec(fixed_ms=300, percent=50)
ABORT_FAULT = api.AbortSpec(percent=50, status=503)
WIDE = 150  # columns from which the log and events sit beside the tables
TALL = 40  # rows from which the bottom pane grows


class Refreshed(Message):
    """A frame waits in the poller's mailbox."""


class ActionDone(Message):
    def __init__(self, text: str, ok: bool, key: ShiftKey | None = None) -> None:
        super().__init__()
        self.text = text
        self.ok = ok
        self.key = key


# Every key of the app: (Textual key names, as shown in the help, action, footer label or ""
# for none, what it does). The bindings and the help screen both come from this list.
KEYMAP: tuple[tuple[str, str, str, str, str], ...] = (
    ("question_mark,f1", "?  F1", "help", "Help", "this help"),
    ("plus,equals_sign", "+  =", "step(5)", "+5", "selected version: weight +5 (from the others)"),
    ("minus", "-", "step(-5)", "-5", "selected version: weight -5 (to the others)"),
    ("right_square_bracket", "]", "step(10)", "", "selected version: weight +10"),
    ("left_square_bracket", "[", "step(-10)", "", "selected version: weight -10"),
    ("w", "w  Enter", "type_weight", "", "type the selected version's weight (0-100)"),
    ("d", "d", "describe", "Describe", "describe the selected service, pod or route in full"),
    ("slash", "/", "filter", "Filter", "filter the services by name (Esc clears)"),
    (
        "f",
        "f",
        "toggle_fault('delay')",
        "Delay",
        "delay fault on the selected route (300 ms for 50% of requests; live, not written "
        "to the file); asks first; f again clears it",
    ),
    (
        "a",
        "a",
        "toggle_fault('abort')",
        "",  # the footer keeps to 80 columns: q Quit must show; the help lists it
        "abort fault on the selected route (HTTP 503 for 50% of requests; live, not written "
        "to the file); asks first; a again clears it",
    ),
    (
        "r",
        "r",
        "restart",
        "Restart",
        "restart the selected pod's app (on a service row: every pod of the service); asks first",
    ),
    ("l", "l", "show_pane('log')", "", "show the selected pod's app log (following)"),
    (
        "t",
        "t",
        "traces",
        "",
        "the selected service's recent traces (f: 5xx only); Enter shows one as a waterfall",
    ),
    (
        "L",
        "L",
        "access_log",
        "",
        "the selected service's requests, as every Envoy logged them (flags in words; "
        "f: 5xx only); Enter opens a request's trace",
    ),
    (
        "e",
        "e",
        "show_pane('events')",
        "",
        "show the mesh's events: saves, pushes and NACKs, restarts, health",
    ),
    ("q,ctrl+c", "q  Ctrl+C", "quit", "Quit", "quit (a TUI of `up -d` leaves the mesh running)"),
)
# Keys the tables handle themselves, listed in the help screen with the app's own.
TABLE_KEYS = (
    ("↑ ↓ PgUp PgDn", "move in the focused table (or click a row)"),
    ("Tab / Shift+Tab", "switch between the pods table and the routes table"),
    ("Enter", "on a service or pod: go to its routes; on a version: type its weight"),
)


class MeshApp(App[None]):
    TITLE = "devmesh"
    ENABLE_COMMAND_PALETTE = False  # its footer hint took the room of the app's own keys
    CSS = """
    Screen { layout: vertical; }
    #title { height: 1; background: $boost; text-style: bold; padding: 0 1; }
    #banner { height: auto; max-height: 8; padding: 0 1; display: none; }
    #banner.shown { display: block; }
    #body { height: 1fr; layout: vertical; }
    #tables { height: 1fr; }
    /* No scrollbars: a thumb is drawn with the sparklines' block characters (it read as
       stray blocks in the rows and the event lines); the cursor shows where a table is. */
    #pods, #routes { height: 1fr; scrollbar-size-horizontal: 0; scrollbar-size-vertical: 0; }
    .detail { height: 1; padding: 0 1; color: $text-muted; }
    Screen.-tall .detail { height: 2; }
    #bottom { height: 6; }
    #bottom-title { height: 1; padding: 0 1; background: $boost; }
    #log, #events { height: 1fr; scrollbar-size-horizontal: 0; scrollbar-size-vertical: 0; }
    #filter { height: 1; border: none; padding: 0 1; display: none; }
    #filter.shown { display: block; }
    #log.hidden, #events.hidden { display: none; }
    Screen.-tall #bottom { height: 1fr; max-height: 20; }
    Screen.-wide #body { layout: horizontal; }
    Screen.-wide #tables { width: 2fr; }
    Screen.-wide #bottom { width: 1fr; height: 1fr; max-height: 100%;
                           border-left: vkey $panel; }
    Screen.-wide #log.hidden, Screen.-wide #events.hidden { display: block; }
    HelpScreen, WeightScreen, ConfirmScreen, DescribeScreen { align: center middle; }
    #help-box, #describe-box { width: 90%; max-width: 100; height: auto; max-height: 90%;
                border: round $accent; padding: 0 1; background: $surface; }
    #help-title { text-style: bold; }
    #weight-box, #confirm-box { width: 70; max-width: 95%; height: auto;
                border: round $accent; padding: 0 1; background: $surface; }
    .hint { color: $text-muted; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(keys, action, label, show=bool(label)) for keys, _, action, label, _ in KEYMAP
    ]
    KEYS: ClassVar[list[tuple[str, str]]] = [(shown, what) for _, shown, _, _, what in KEYMAP]

    def __init__(
        self,
        client: MeshClient,
        *,
        owns_mesh: bool = False,
        interval: float = 1.0,
        poll: bool = True,
        stop_when: Callable[[], bool] | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.clock: Clock = clock or _TextualClock(self)
        self.owns_mesh = owns_mesh
        self.poller = Poller(client, interval)
        self._poll = poll
        self._stop_when = stop_when
        self.state: api.MeshState | None = None
        self.routes: api.Routes | None = None
        self.rates: Rates | None = None
        self.unavailable: str | None = None
        self._banner: tuple[tuple[str, str], ...] = ()
        self.service: str | None = None  # whose routes show
        self.pane = "events"
        self._log_lines: tuple[str, ...] = ()
        self._log_pod: str | None = None
        self.filter = ""  # `/`: services whose name holds this
        self._recent: list[api.Event] = []  # the daemon's last events (bring-up progress)
        # Weights asked for but not yet seen in /v1/routes.
        self.shifts = PendingShifts()
        self._shift_timer: Timer | None = None

    # -- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Line(header_text(None, self.owns_mesh), id="title")
        yield Static(id="banner", markup=False)
        with Horizontal(id="body"):
            with Vertical(id="tables"):
                yield Input(placeholder="filter services (Esc clears)", id="filter")
                yield RowTable(
                    [(k, label, POD_WIDTHS[k]) for k, label in POD_COLUMNS],
                    id="pods",
                    flex=POD_FLEX,
                    drop=POD_DROP,
                )
                yield Line(id="pod-detail", classes="detail")
                yield RowTable(
                    [(k, label, ROUTE_WIDTHS[k]) for k, label in ROUTE_COLUMNS],
                    id="routes",
                    flex=ROUTE_FLEX,
                    drop=ROUTE_DROP,
                )
                yield Line(id="route-detail", classes="detail")
            with Vertical(id="bottom"):
                yield Line(id="bottom-title")
                yield Log(id="log", max_lines=1000, classes="hidden")
                yield Log(id="events", max_lines=1000)
        yield Footer()

    def on_mount(self) -> None:
        self._pods.focus()
        self._layout_for(self.size.width, self.size.height)
        self._title_bottom()
        if self._poll:
            self._poll_daemon()

    def on_unmount(self) -> None:
        self.poller.stop()

    def on_resize(self, event: Resize) -> None:
        self._layout_for(event.size.width, event.size.height)

    def _layout_for(self, width: int, height: int) -> None:
        if self.query("#title"):
            self._header()
        self.screen.set_class(width >= WIDE, "-wide")
        self.screen.set_class(height >= TALL or width >= WIDE, "-tall")
        self._title_bottom()
        self._wire_log()  # a wide screen shows the app log: it is read from now on

    @property
    def _pods(self) -> RowTable:
        return self.query_one("#pods", RowTable)

    @property
    def _routes(self) -> RowTable:
        return self.query_one("#routes", RowTable)

    # -- data in -----------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="poll", exit_on_error=False)
    def _poll_daemon(self) -> None:
        """Blocking reads of the daemon, in a thread; the UI hears of them by message only."""
        from textual.worker import get_current_worker

        worker = get_current_worker()
        stop_when = self._stop_when or (lambda: False)

        def notify() -> None:
            self.post_message(Refreshed())

        self.poller.run(notify, lambda: worker.is_cancelled or stop_when())
        if stop_when() and not worker.is_cancelled:
            self.call_from_thread(self.exit)  # the mesh stops (a signal to `devmesh up`)

    @on(Refreshed)
    def _on_refreshed(self) -> None:
        frame = self.poller.mailbox.take()
        if frame is not None:
            self.apply_frame(frame)

    def apply_frame(self, frame: Frame) -> None:
        """Show one frame: header, banner, tables (cells in place), logs."""
        self.unavailable = frame.unavailable
        if frame.state is not None:
            self.state = frame.state
        if frame.routes is not None:
            self.routes = frame.routes
            self.shifts.settle_with(self.routes, self.clock.now())
        if frame.rates is not None:
            self.rates = frame.rates
        if frame.events:
            self._recent = [*self._recent, *frame.events][-50:]
        self._header()
        lines = banner(self.state, self.unavailable).lines
        if lines != self._banner:  # rarely: a Static's update lays the screen out again
            self._banner = lines
            bar = self.query_one("#banner", Static)
            bar.set_class(bool(lines), "shown")
            bar.update(lines_text(lines, self.no_color))
        if self.state is not None:
            self._show_pods()
            if self.service is None:
                self._follow_pods_cursor()
        self._show_routes()
        events = self.query_one("#events", Log)
        if frame.events:
            events.write_lines([event_line(e) for e in frame.events])
        if frame.log is not None:
            self._show_log(*frame.log)
        self._details()

    def _header(self) -> None:
        progress = bring_up_progress(self.state, self._recent) if self.owns_mesh else ""
        text = header_text(self.state, self.owns_mesh, self.size.width, progress)
        self.query_one("#title", Line).text = text

    def _show_pods(self) -> None:
        if self.state is not None:
            self._pods.show(filter_rows(pod_rows(self.state, self.routes, self.rates), self.filter))

    def _show_routes(self) -> None:
        self._routes.show(route_rows(self.routes, self.service, self.rates, self.shifts.asked))

    def _show_log(self, pod: str, lines: tuple[str, ...]) -> None:
        log = self.query_one("#log", Log)
        if pod != self._log_pod:
            return  # read for a pod no longer selected
        new = appended(self._log_lines, lines)
        if new is None:
            log.clear()
            new = list(lines)
        if new:
            log.write_lines(new)
        self._log_lines = lines

    def _details(self) -> None:
        """The highlighted rows in words: one line (cut short) on small screens, wrapped on
        tall ones."""
        wrap = self.screen.has_class("-tall")
        for table, detail in ((self._pods, "#pod-detail"), (self._routes, "#route-detail")):
            row = table.current()
            text = Text(row.detail if row else "", no_wrap=not wrap, overflow="ellipsis")
            self.query_one(detail, Line).text = text

    # -- selection ---------------------------------------------------------------------------

    @on(RowTable.Highlighted, "#pods")
    def _pods_moved(self) -> None:
        self._follow_pods_cursor()
        self._details()

    @on(RowTable.Highlighted, "#routes")
    def _routes_moved(self) -> None:
        self._details()

    @on(RowTable.Selected, "#pods")
    def _pods_entered(self) -> None:
        self._routes.focus()

    @on(RowTable.Selected, "#routes")
    def _routes_entered(self) -> None:
        row = self._routes.current()
        if row is not None and row.kind == "version":
            self.action_type_weight()

    def _follow_pods_cursor(self) -> None:
        row = self._pods.current()
        if row is None:
            return
        if row.service != self.service and row.kind != "gateway":
            self.service = row.service
            self._show_routes()
        pod = row.pod if row.kind in ("pod", "gateway") else self._first_pod(row.service)
        if pod != self._log_pod:
            self._log_pod = pod
            self._log_lines = ()
            self.query_one("#log", Log).clear()
            self._title_bottom()
            self._wire_log()

    def _first_pod(self, service: str | None) -> str | None:
        pods = self.state.pods if self.state is not None else ()
        return next((p.pod for p in pods if p.service == service), None)

    def _wire_log(self) -> None:
        """The poller reads the app log only while it is on screen."""
        visible = self.pane == "log" or self.screen.has_class("-wide")
        want = self._log_pod if visible else None
        if want != self.poller.log_pod:
            self.poller.log_pod = want
            if want is not None:
                self.poller.poke()

    def _title_bottom(self) -> None:
        if not self.query("#bottom-title"):
            return
        wide = self.screen.has_class("-wide")
        pod = self._log_pod or "no pod selected"
        if wide:
            text = f"app log: {pod}   (above) · events (below)"
        elif self.pane == "log":
            text = f"app log: {pod} (following) · e: events"
        else:
            text = "events · l: the selected pod's app log"
        self.query_one("#bottom-title", Line).text = text

    def action_show_pane(self, pane: str) -> None:
        if self.pane == pane and not self.screen.has_class("-wide"):
            pane = "events" if pane == "log" else "log"  # the same key again flips back
        self.pane = pane
        self.query_one("#log", Log).set_class(pane != "log", "hidden")
        self.query_one("#events", Log).set_class(pane != "events", "hidden")
        self._title_bottom()
        self._wire_log()

    # -- actions -----------------------------------------------------------------------------

    def action_help(self) -> None:
        self.push_screen(HelpScreen([*self.KEYS, *TABLE_KEYS]))

    def action_access_log(self) -> None:  # the screen is tui/access.py's
        row = self._pods.current()
        self.push_screen(AccessScreen(self.client, row.service if row is not None else None))

    def action_traces(self) -> None:  # the screens are tui/traces.py's
        row = self._pods.current()
        self.push_screen(TracesScreen(self.client, row.service if row is not None else None))

    def action_describe(self) -> None:
        """k9s's `d`: the selected row in full; nothing changes."""
        focused = self.focused if isinstance(self.focused, RowTable) else self._pods
        row = focused.current()
        if focused is self._routes and row is not None and row.kind in ("route", "version"):
            route = find_route(self.routes, row.service or "", row.route or "")
            lines = [route_detail(row.service or "", route)] if route else []
        else:
            lines = describe_lines(row, self.state, self.routes)
        title = (row.pod or row.service or "") if row is not None else ""
        self.push_screen(DescribeScreen(f"Describe {title}", lines or ["nothing selected"]))

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        self.call_after_refresh(box.focus)  # once shown: a hidden widget takes no focus

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter = event.value
        self._show_pods()
        self._follow_pods_cursor()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self._pods.focus()

    def on_key(self, event: Key) -> None:
        if event.key != "escape" or self.screen is not self.screen_stack[0]:
            return  # a dialog's Esc is the dialog's
        box = self.query_one("#filter", Input)
        if box.has_focus or self.filter:
            box.value = ""
            box.remove_class("shown")
            self._pods.focus()
            event.stop()

    def _target(self) -> tuple[Row, api.ServiceRoutes, api.RouteInfo] | None:
        """The route the keys act on: the routes table's highlighted row (a route or one of
        its versions), with its service's and route's documents."""
        row = self._routes.current()
        if row is None or row.kind not in ("route", "version") or row.route is None:
            if row is not None and row.kind == "ingress":
                self.notify(
                    "ingress routes go to one service: select one of its routes", severity="warning"
                )
            else:
                self.notify("select a route or a version in the routes table", severity="warning")
            return None
        svc = find_service(self.routes, row.service)
        route = find_route(self.routes, row.service, row.route) if row.service else None
        if svc is None or route is None:
            return None
        return row, svc, route

    def _selected_weights(
        self,
    ) -> tuple[api.ServiceRoutes, api.RouteInfo, str, dict[str, int]] | None:
        """The selected route's service, route, version to change and current weights."""
        target = self._target()
        if target is None:
            return None
        row, svc, route = target
        versions = list(svc.versions)
        if len(versions) < 2:
            self.notify(f"{svc.name} has one version: nothing to shift", severity="warning")
            return None
        asked = self.shifts.asked.get((svc.name, route.name))
        current = asked or {v: route.to.get(v, 0) for v in versions}
        version = row.version or versions[-1]  # on a route row: its last version, the canary
        return svc, route, version, current

    def action_step(self, delta: int) -> None:
        selected = self._selected_weights()
        if selected is None:
            return
        svc, route, version, current = selected
        self._ask(svc, route, step_weight(current, list(svc.versions), version, delta))

    def action_type_weight(self) -> None:
        selected = self._selected_weights()
        if selected is None:
            return
        svc, route, version, current = selected

        def chosen(value: int | None) -> None:
            if value is not None:
                weights = set_weight(current, list(svc.versions), version, value)
                self._ask(svc, route, weights)

        what = f"{svc.name}/{route.name} → {version}"
        self.push_screen(WeightScreen(what, current.get(version, 0)), chosen)

    def _ask(self, svc: api.ServiceRoutes, route: api.RouteInfo, weights: dict[str, int]) -> None:
        """Show the new weights at once; send them when the keys stop for a moment."""
        self.shifts.ask((svc.name, route.name), weights, self.clock.now())
        self._show_routes()
        self._details()
        self._schedule_shifts()

    def _schedule_shifts(self) -> None:
        if self._shift_timer is not None:
            self._shift_timer.stop()
            self._shift_timer = None
        delay = self.shifts.due_in(self.clock.now())
        if delay is not None:
            self._shift_timer = self.clock.later(delay, self._send_due)

    def _send_due(self) -> None:
        self._shift_timer = None
        for key, weights in self.shifts.take_due(self.clock.now()):
            route = find_route(self.routes, *key)
            self._shift(key, weights_to_send(weights, route.to if route else {}))
        self._schedule_shifts()  # a press in between: wait for quiet again

    @work(thread=True, group="actions", exit_on_error=False)
    def _shift(self, key: ShiftKey, weights: dict[str, int]) -> None:
        try:
            result = self.client.shift(key[0], weights, key[1])
            split = ", ".join(f"{v} {w}" for v, w in result.weights.items())
            text = f"{key[0]}/{result.route}: {split} (applied, written to the file)"
            self.post_message(ActionDone(text, True, key))
        except MeshError as exc:
            self.post_message(ActionDone(f"shift {key[0]}/{key[1]} refused: {exc}", False, key))
        self.poller.poke(routes=True)

    def action_toggle_fault(self, kind: str) -> None:
        target = self._target()
        if target is None:
            return
        _, svc, route = target
        if svc.protocol == "tcp":
            self.notify(f"{svc.name} is a tcp service: faults are HTTP", severity="warning")
            return
        # Only a fault set here is toggled; the file's own comes back when it is cleared.
        mine = route.fault if route.fault_override and route.fault is not None else None
        delay = mine.delay if mine else None
        abort = mine.abort if mine and mine.abort and mine.abort.status is not None else None
        if kind == "delay":
            delay = None if delay else DELAY_FAULT
            adding = delay is not None
        else:
            abort = None if abort else ABORT_FAULT
            adding = abort is not None
        if not adding:  # clearing a fault set here: undoes, no need to ask
            self._fault(svc.name, route.name, delay, abort)
            return
        what = (
            "a delay of 300 ms for 50% of requests"
            if kind == "delay"
            else "HTTP 503 for 50% of requests"
        )
        key = "f" if kind == "delay" else "a"
        question = (
            f"Inject {what} on {svc.name}/{route.name}? Live traffic is affected at once "
            f"(not written to the file). {key} again clears it."
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self._fault(svc.name, route.name, delay, abort)

        self.push_screen(ConfirmScreen(question), answered)

    @work(thread=True, group="actions", exit_on_error=False)
    def _fault(
        self,
        service: str,
        route: str,
        delay: api.DelaySpec | None,
        abort: api.AbortSpec | None,
    ) -> None:
        try:
            self.client.fault(service, route, delay=delay, abort=abort)
            parts = [p for p in ("delay" if delay else "", "abort" if abort else "") if p]
            what = " and ".join(parts) if parts else "cleared (the file's own, if any, applies)"
            undo = [k for k, on in (("f", delay), ("a", abort)) if on]
            if undo:
                what += f"; {' / '.join(undo)} on this route again clears it"
            self.post_message(ActionDone(f"fault on {service}/{route}: {what}", True))
        except MeshError as exc:
            self.post_message(ActionDone(f"fault on {service}/{route} refused: {exc}", False))
        self.poller.poke(routes=True)

    def action_restart(self) -> None:
        row = self._pods.current()
        if row is None or row.kind not in ("pod", "service"):
            self.notify("select a pod or a service in the pods table", severity="warning")
            return
        if row.kind == "pod":
            question, service, pod = f"Restart the app of pod {row.pod}?", None, row.pod
        else:
            question = f"Restart the apps of every pod of {row.service}?"
            service, pod = row.service, None

        def answered(yes: bool | None) -> None:
            if yes:
                self._restart(service, pod)

        self.push_screen(ConfirmScreen(question), answered)

    @work(thread=True, group="actions", exit_on_error=False)
    def _restart(self, service: str | None, pod: str | None) -> None:
        try:
            result = self.client.restart(service=service, pod=pod)
            names = ", ".join(result.restarted)
            self.post_message(ActionDone(f"restarted {names}", True))
        except MeshError as exc:
            self.post_message(ActionDone(f"restart refused: {exc}", False))
        self.poller.poke()

    @on(ActionDone)
    def _action_done(self, message: ActionDone) -> None:
        if not message.ok and message.key is not None:
            self.shifts.forget(message.key)
            self._show_routes()
        self.notify(message.text, severity="information" if message.ok else "error", timeout=6)
        if not message.ok:
            # A change that was made comes back as the daemon's own event (shown once, from
            # the feed); one that was refused has no event, so it is written here.
            self.query_one("#events", Log).write_line(
                time.strftime("%H:%M:%S ") + "✗ " + message.text
            )


def make_app(
    client: MeshClient,
    *,
    owns_mesh: bool = False,
    interval: float = 1.0,
    poll: bool = True,
    stop_when: Callable[[], bool] | None = None,
    clock: Clock | None = None,
) -> MeshApp:
    """The TUI over `client` (a `DaemonClient`, or in tests a recorded one). `owns_mesh`:
    quitting stops the mesh (a foreground `devmesh up`); `poll=False` leaves the reads to the
    caller (snapshot tests feed frames themselves); `stop_when` is checked after every read;
    `clock`: what the app waits with (default: the monotonic clock and Textual's timers)."""
    return MeshApp(
        client,
        owns_mesh=owns_mesh,
        interval=interval,
        poll=poll,
        stop_when=stop_when,
        clock=clock,
    )


class _TextualClock:
    """The real clock: time.monotonic, and timers on the app's event loop."""

    def __init__(self, app: App[None]) -> None:
        self._app = app

    def now(self) -> float:
        return time.monotonic()

    def later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self._app.set_timer(delay, callback)
