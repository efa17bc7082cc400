"""Modal screens: the help (every key), describe, typing a weight, confirming a change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

HELP_INTRO = (
    "devmesh TUI: live routes, stats and traffic shifting. Data comes from the daemon's API "
    "once a second; weights are applied live and written into the mesh file."
)
# Percentiles of several Envoys cannot be combined from their summaries: the TUI shows the
# highest (stats.Live), an upper bound of the true value. Said here and in the detail lines.
NUMBERS_NOTE = "P50, P99: Envoy's, last 5 s; from several callers the slowest's (an upper bound)."


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark,f1", "close", "Close", show=False),
    ]

    def __init__(self, keys: Sequence[tuple[str, str]]) -> None:
        super().__init__(id="help")
        self._keys = keys

    def compose(self) -> ComposeResult:
        width = max(len(k) for k, _ in self._keys) + 2
        lines = [HELP_INTRO, ""]
        lines += [f"{key.ljust(width)}{what}" for key, what in self._keys]
        lines += ["", NUMBERS_NOTE]
        lines += ["Mouse: click a row to select it, a footer key to press it. Esc, q or ? closes."]
        with Vertical(id="help-box"):
            yield Static("Keys", id="help-title")
            yield Static("\n".join(lines), id="help-text", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)


class WeightScreen(ModalScreen[int | None]):
    """Type a weight (0-100) for one version of a route; Enter applies, Esc cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", show=False)]

    def __init__(self, what: str, current: int) -> None:
        super().__init__(id="weight")
        self._what = what
        self._current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="weight-box"):
            yield Static(f"Weight for {self._what} (0-100; the other versions share the rest):")
            yield Input(
                value=str(self._current),
                type="integer",
                id="weight-input",
                select_on_focus=True,
            )
            yield Static("Enter applies · Esc cancels", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            value = int(event.value)
        except ValueError:
            self.notify("a whole number from 0 to 100", severity="error")
            return
        if not 0 <= value <= 100:
            self.notify("a whole number from 0 to 100", severity="error")
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y,enter", "answer(True)", "Yes", show=False),
        Binding("n,escape,q", "answer(False)", "No", show=False),
    ]

    def __init__(self, question: str) -> None:
        super().__init__(id="confirm")
        self._question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(self._question, markup=False)
            yield Static("y / Enter: yes · n / Esc: no", classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class DescribeScreen(ModalScreen[None]):
    """`d`: the selected thing in full, as text (k9s's describe). Nothing changes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,d", "close", "Close", show=False),
    ]

    def __init__(self, title: str, lines: Sequence[str]) -> None:
        super().__init__(id="describe")
        self._title = title
        self._lines = lines

    def compose(self) -> ComposeResult:
        with Vertical(id="describe-box"):
            yield Static(self._title, id="help-title", markup=False)
            yield Static("\n".join(self._lines), id="describe-text", markup=False)
            yield Static("Esc, q or d closes", classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)
