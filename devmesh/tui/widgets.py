"""Widgets: a table of `Row`s drawn line by line, and text lines with named styles.

Why not DataTable: it re-renders every cell of every visible row, through Rich's full
pipeline, whenever any one cell changes (each update bumps a counter in every cell's cache
key), and it renders the columns scrolled off screen too. With live numbers in most rows
every second that is most of the TUI's CPU. `RowTable` draws each row as one cached `Strip`
of a few segments and redraws only the rows whose cells (or cursor state) changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.events import Click
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

from devmesh.tui.model import Cell, Row

STYLES = {
    "ok": "green",
    "warn": "yellow",
    "bad": "bold red",
    "dim": "dim",
    "accent": "bold",
    "": "",
}
# NO_COLOR: Textual greys every colour by its luminance (red turns dark grey on a dark
# background), so what colour stressed is stressed by emphasis instead.
MONO_STYLES = {**STYLES, "ok": "", "warn": "bold", "bad": "bold reverse"}


@lru_cache(maxsize=64)
def _style(name: str, mono: bool = False) -> Style:
    spec = (MONO_STYLES if mono else STYLES).get(name, "")
    return Style.parse(spec) if spec else Style()


def lines_text(cells: Sequence[Cell], mono: bool = False) -> Text:
    out = Text()
    for i, cell in enumerate(cells):
        if i:
            out.append("\n")
        out.append_text(Text(cell[0], style=_style(cell[1], mono)))
    return out


FLEX_MIN = 8  # cells a flexible column keeps before columns are dropped


def fit(text: str, width: int) -> str:
    """`text` padded or cut (with an ellipsis) to exactly `width` cells."""
    if cell_len(text) <= width:
        return set_cell_size(text, width)
    return set_cell_size(text, max(0, width - 1)) + "…"


class RowTable(ScrollView, can_focus=True):
    """Rows under a fixed header line; a row cursor moved with the keys or the mouse."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "rowtable--header",
        "rowtable--cursor",
        "rowtable--cursor-blurred",
    }
    DEFAULT_CSS = """
    RowTable { background: $surface; }
    RowTable > .rowtable--header { text-style: bold; background: $panel; color: $text; }
    RowTable > .rowtable--cursor { background: $accent; color: $text; text-style: bold; }
    RowTable > .rowtable--cursor-blurred { background: $boost; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "move(-1000000)", "First", show=False),
        Binding("end", "move(1000000)", "Last", show=False),
        Binding("enter", "select", "Select", show=False),
    ]

    cursor = reactive(0, init=False)

    class Highlighted(Message):
        def __init__(self, table: RowTable, row: Row | None) -> None:
            super().__init__()
            self.table = table
            self.row = row

        @property
        def control(self) -> RowTable:
            return self.table

    class Selected(Highlighted):
        pass

    def __init__(
        self,
        columns: Sequence[tuple[str, str, int]],
        *,
        id: str | None = None,
        flex: Sequence[str] = (),
        drop: Sequence[str] = (),
    ) -> None:
        """`flex`: columns that narrow (to FLEX_MIN, text cut with "…") when the table is
        narrower than its columns; `drop`: columns left out, in this order, when that is not
        enough. Every row then fits the table: nothing runs into the next pane."""
        super().__init__(id=id)
        self._columns = list(columns)
        self._flex = tuple(flex)
        self._drop = tuple(drop)
        self._shown: list[Row] = []
        self._by_key: dict[str, Row] = {}
        self._strips: dict[tuple[str, tuple[Cell, ...], str], Strip] = {}
        self._layout: list[tuple[int, int]] = []  # (column index, width) of what is drawn
        self._width = 0
        self._fit(0)
        self._styles: dict[str, Style] | None = None  # set for one render_lines call

    def _fit(self, available: int) -> None:
        """Column widths for `available` cells (0: as declared)."""
        widths = {key: width for key, _, width in self._columns}
        hidden: set[str] = set()

        def total() -> int:
            return 1 + sum(w + 2 for k, w in widths.items() if k not in hidden)

        while available and total() > available:  # narrow the flexible ones evenly
            wide = [k for k in self._flex if widths[k] > FLEX_MIN]
            if not wide:
                break
            widest = max(wide, key=lambda k: widths[k])
            widths[widest] -= 1
        for key in self._drop:
            if not available or total() <= available:
                break
            hidden.add(key)
        if available:  # what is left over goes to the last flex column shown
            spare = available - total()
            grow = [k for k in self._flex if k not in hidden]
            if spare > 0 and grow:
                widths[grow[-1]] += spare
        self._layout = [
            (i, widths[key]) for i, (key, _, _) in enumerate(self._columns) if key not in hidden
        ]
        self._width = total()

    @property
    def drawn_columns(self) -> list[str]:
        """The columns on screen now (tests check that nothing is cut)."""
        return [self._columns[i][0] for i, _ in self._layout]

    @property
    def content_width(self) -> int:
        return self._width

    @property
    def shown(self) -> list[Row]:
        return self._shown

    def current(self) -> Row | None:
        return self._shown[self.cursor] if 0 <= self.cursor < len(self._shown) else None

    def row(self, key: str) -> Row | None:
        return self._by_key.get(key)

    def cell_text(self, key: str, column: str) -> str:
        """What a cell shows (tests read the screen through this)."""
        row = self._by_key.get(key)
        if row is None:
            return ""
        index = [c for c, _, _ in self._columns].index(column)
        return row.cells[index][0]

    def show(self, rows: Sequence[Row]) -> None:
        """New rows: the cursor stays on its row (by key) if it is still there; only lines
        whose row changed are drawn again."""
        before = self.current()
        old = self._shown
        self._shown = list(rows)
        self._by_key = {r.key: r for r in rows}
        keys = [r.key for r in rows]
        cursor = self.cursor
        if before is not None and before.key in keys:
            cursor = keys.index(before.key)
        cursor = max(0, min(cursor, len(rows) - 1))
        self.virtual_size = Size(self._width, len(rows) + 1)
        if len(self._strips) > 4 * len(rows) + 64:
            self._strips.clear()  # drop what rows that are gone or changed left behind
        if cursor != self.cursor:
            self.cursor = cursor  # the watcher refreshes and says so
        elif [r.key for r in old] != keys:
            self.refresh()
            self.post_message(self.Highlighted(self, self.current()))
        else:
            for i, (a, b) in enumerate(zip(old, rows, strict=True)):
                if a.cells != b.cells:
                    self._refresh_row(i)

    def select_key(self, key: str) -> bool:
        keys = [r.key for r in self._shown]
        if key not in keys:
            return False
        self.cursor = keys.index(key)
        return True

    # -- drawing -----------------------------------------------------------------------------

    def _refresh_row(self, index: int) -> None:
        y = index + 1 - self.scroll_offset.y
        if 1 <= y < self.size.height:
            self.refresh_line(y)

    def render_lines(self, crop: Region) -> list[Strip]:
        """Textual works a widget's style out from its ancestors on every ask (0.1 ms each):
        asked once here for all the lines drawn in one go, not two or three times a line
        (a third of the TUI's drawing time with 60 live rows)."""
        self._styles = {
            "": self.rich_style,
            **{name: self.get_component_rich_style(name) for name in self.COMPONENT_CLASSES},
        }
        try:
            return super().render_lines(crop)
        finally:
            self._styles = None

    def _style_of(self, component: str = "") -> Style:
        if self._styles is not None:
            return self._styles[component]
        return self.get_component_rich_style(component) if component else self.rich_style

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self._style_of()
        if y == 0:
            strip = self._header()
        else:
            index = scroll_y + y - 1
            if index >= len(self._shown):
                return Strip.blank(width, base)
            strip = self._row_strip(index)
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    def _header(self) -> Strip:
        style = self._style_of("rowtable--header")
        text = " " + "".join(f"{fit(self._columns[i][1], width)}  " for i, width in self._layout)
        return Strip([Segment(fit(text, max(self._width, self.size.width)), style)])

    def _row_strip(self, index: int) -> Strip:
        row = self._shown[index]
        state = ""
        if index == self.cursor:
            state = "cursor" if self.has_focus else "blurred"
        key = (row.key, row.cells, state)
        strip = self._strips.get(key)
        if strip is None:
            base = self._style_of()
            if state == "cursor":
                base = base + self._style_of("rowtable--cursor")
            elif state == "blurred":
                base = base + self._style_of("rowtable--cursor-blurred")
            segments = [Segment(" ", base)]
            for i, width in self._layout:
                text, style = row.cells[i]
                segments.append(Segment(fit(text, width), base + _style(style, self.app.no_color)))
                segments.append(Segment("  ", base))
            pad = max(self._width, self.size.width) - self._width
            if pad:
                segments.append(Segment(" " * pad, base))
            strip = Strip(segments)
            self._strips[key] = strip
        return strip

    # -- cursor ------------------------------------------------------------------------------

    def watch_cursor(self, old: int, new: int) -> None:
        self._refresh_row(old)
        self._refresh_row(new)
        top = self.scroll_offset.y
        visible = max(1, self.size.height - 1)
        if new < top:
            self.scroll_to(y=new, animate=False)
        elif new >= top + visible:
            self.scroll_to(y=new - visible + 1, animate=False)
        self.post_message(self.Highlighted(self, self.current()))

    def action_move(self, delta: int) -> None:
        if self._shown:
            self.cursor = max(0, min(len(self._shown) - 1, self.cursor + delta))

    def action_page(self, direction: int) -> None:
        self.action_move(direction * max(1, self.size.height - 2))

    def action_select(self) -> None:
        self.post_message(self.Selected(self, self.current()))

    def on_click(self, event: Click) -> None:
        index = self.scroll_offset.y + event.y - 1
        if event.y >= 1 and 0 <= index < len(self._shown):
            if index == self.cursor and event.chain >= 2:
                self.action_select()
            self.cursor = index

    def on_focus(self) -> None:
        self._refresh_row(self.cursor)

    def on_blur(self) -> None:
        self._refresh_row(self.cursor)

    def on_resize(self) -> None:
        self._fit(self.scrollable_content_region.width)
        self.virtual_size = Size(self._width, len(self._shown) + 1)
        self._strips.clear()
        self.refresh()


class Line(Widget):
    """Text of a fixed height. Setting `text` repaints this widget only: Static.update()
    asks for a layout pass of the whole screen, and these lines change every second."""

    DEFAULT_CSS = "Line { height: 1; }"
    text: reactive[Text | str] = reactive[Text | str]("", layout=False)

    def __init__(self, text: Text | str = "", *, id: str | None = None, classes: str = "") -> None:
        super().__init__(id=id, classes=classes)
        self.set_reactive(Line.text, text)

    def render(self) -> Text:
        text = self.text
        return text if isinstance(text, Text) else Text(text)
