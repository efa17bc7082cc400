"""Adaptive tracing (`sampling: auto`): trace every request while the mesh is quiet, and
fewer under load, so that about `TARGET` spans a second reach the daemon. Pure: the
daemon's sweep feeds it the collector's span count once a second, and pushes the share it
chooses to every Envoy as a runtime layer (RTDS: no listener changes, nothing drains).

Why: tracing every request cost the Envoys 65-80 us of CPU a request over two hops more
than tracing 1 % (bench/results/observability.md), while the daemon keeps only the last
1,000 traces: at 1,000 requests a second, one second of them. X-Ray's default rule (a
reservoir each second, then a fixed share) and Istio's 1 % make the same trade; this one
keeps a dev session's every request traced and bounds what a load test pays.

One share for the whole mesh, in steps (`STEPS`): Envoy samples by the request id, so
Envoys at the same share choose alike for one request, and a trace stays whole across hops.
The share is lowered when the spans that come exceed `TARGET` by half again, to the
largest step that keeps them under it; raised when they fall under `TARGET` / 2.5, to the
largest step that keeps them under `TARGET` again. After each change the spans Envoys still
buffered at the old share (up to 100 each, or 5 s: envoy/tracing.py) are let pass for
`HOLD` seconds before the next measurement; each measurement spans `WINDOW` seconds, so
auto follows a change of load in 6 to 12 s. But when the spans already come to more than a
whole window's worth at the lowering threshold, the window has said all it can: the share
is lowered then, after `EARLY` seconds at the least. A load test begun on a quiet mesh
(every request traced) pays for that for a second or two, not six to twelve: at ~5,000
requests a second through two Envoys, tracing every request cost each Envoy a fifth more
CPU a request than 1 % (bench/observability_cpu.py), and the daemon 10,000 spans a second.

`TARGET` was 200 spans a second. At ~900 requests a second through two Envoys (1,800 spans
a second at 100 %) that chose 10 %, and the spans cost more than the tracer itself:
bench/observability.py, tracing alone against off, p99 1.43 and saturation 0.87 at auto
(200), 1.10 and 0.95 at a fixed 0 %, 1.11 and 0.95 at 1 %. At 50 the same load gets 2 %
and a saturating one 0.2-0.5 %. A quiet dev mesh still has every request traced (under 75
spans a second: a dozen requests a second through three services). Under load the daemon's
1,000 traces reach back ~40 s instead of ~10; X-Ray's default rule is 1 a second and 5 %,
Istio's 1 %.

While the mesh is quiet at the full share, the window starts again at each look, so a load
begun on a quiet mesh is measured by its own seconds. Its first spans may include what
Envoys held for their 5 s timer: a moderate load whose Envoys' timers fall together can
read higher than it is and get a lower share than it needs, until the next window raises it
(HOLD and WINDOW later). Once the load has run a while, the window's mean is what counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

STEPS: Final = (100.0, 50.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1)
TARGET: Final = 50.0  # spans a second, the whole mesh
# Seconds of spans a decision is made on: longer than the Envoys' 5 s export timer
# (envoy/tracing.py), which is what sends at moderate rates. A shorter window sees some
# Envoys' exports and not others', and under a steady load the share flapped (a simulation
# with 12 Envoys at a steady 200 spans a second, the target then: 100 % <-> 50 % every
# 8-20 s).
WINDOW: Final = 6.0
HOLD: Final = 5.0  # seconds after a change whose spans are not measured
EARLY: Final = 1.0  # seconds: the shortest window that may lower the share
LOWER_ABOVE: Final = 1.5  # x TARGET
RAISE_BELOW: Final = 1 / 2.5  # x TARGET


@dataclass
class AdaptiveSampling:
    """The share of requests traced, from the spans received. `ceiling`: the most it may
    trace (the mesh file's 100 %)."""

    ceiling: float = 100.0
    percent: float = 100.0
    _since: float | None = None  # when the window began
    _count: int = 0  # spans received by then
    _hold_until: float = 0.0
    _last: tuple[float, int] | None = None  # the observation before this one

    def __post_init__(self) -> None:
        self.percent = self.ceiling

    def observe(self, now: float, received: int) -> float | None:
        """The spans received since the daemon started, at `now` (seconds, monotonic): the
        new share when it changes, else None."""
        last, self._last = self._last, (now, received)
        if self._since is None or received < self._count or now < self._hold_until:
            self._since, self._count = now, received  # a fresh start, or spans at the old share
            return None
        if last is not None and last[0] > self._since and self._quiet(self._since, last):
            # Quiet at the full share up to the last look: those seconds decide nothing, so
            # the window starts there. A load begun since is measured by its own seconds,
            # not by a mean over quiet ones (which chose 10 % for a load that needs 2 %,
            # and held that through HOLD and a whole window more).
            self._since, self._count = last
        elapsed = now - self._since
        spans = received - self._count
        told = spans > TARGET * LOWER_ABOVE * WINDOW  # whatever the rest of the window brings
        if elapsed < WINDOW and not (told and elapsed >= EARLY):
            return None
        rate = spans / elapsed
        self._since, self._count = now, received
        wanted = self.choose(rate)
        if wanted == self.percent:
            return None
        self.percent = wanted
        self._hold_until = now + HOLD
        return wanted

    def _quiet(self, since: float, upto: tuple[float, int]) -> bool:
        """Whether the window, from `since` to `upto` (a look's time and count), had too few
        spans to raise the share, with none to raise: nothing in it can change the share."""
        seconds, spans = upto[0] - since, upto[1] - self._count
        return self.percent >= self.ceiling and spans <= TARGET * RAISE_BELOW * seconds

    def choose(self, rate: float) -> float:
        """The share for `rate` spans a second seen at the current share."""
        if rate > TARGET * LOWER_ABOVE or (
            rate < TARGET * RAISE_BELOW and self.percent < self.ceiling
        ):
            every = rate * 100.0 / self.percent  # spans a second if every request were traced
            return self._fitting(every)
        return self.percent

    def _fitting(self, every: float) -> float:
        for step in STEPS:
            if step <= self.ceiling and every * step / 100.0 <= TARGET:
                return step
        return STEPS[-1]
