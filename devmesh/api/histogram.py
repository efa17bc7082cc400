"""Latency percentiles from Envoy's histogram buckets, merged across Envoys.

Envoy keeps each latency histogram (`upstream_rq_time`) in fixed buckets (0.5, 1, 5, 10, 25,
50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000
ms) and reports them cumulatively: each bucket counts every sample at most its upper bound,
since the Envoy started (`/stats?format=json&histogram_buckets=cumulative`).

- Over a window: the difference between two reads of the same histogram (`window`); a
  count that went down means the Envoy restarted, and the newer read counts alone.
- Across Envoys (every caller of a version, every replica): bucket counts add up (`merge`),
  which percentiles never do.
- A percentile (`quantile`): the method of Prometheus' `histogram_quantile`. Find the first
  bucket whose cumulative count reaches rank = q x total, then interpolate linearly within
  it, between its lower bound (the previous bucket's upper bound; 0 for the first) and its
  upper bound, assuming the samples in a bucket are spread evenly. So a percentile is
  exact to within its bucket: a p50 of 37 ms means "between 25 and 50 ms, about 37".

Envoy's JSON gives no count of samples past the last bound (an hour): none are expected,
and the last bucket's count is taken as the total. Plain Python, no I/O: the daemon, the
CLI and the TUI share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bucket:
    le: float  # upper bound, milliseconds
    count: int  # samples <= le (cumulative)


Buckets = tuple[Bucket, ...]  # ascending by `le`


def total(buckets: Sequence[Bucket]) -> int:
    return buckets[-1].count if buckets else 0


def quantile(q: float, buckets: Sequence[Bucket]) -> float | None:
    """The q-quantile (0 <= q <= 1) of a cumulative histogram; None when it is empty."""
    n = total(buckets)
    if n <= 0:
        return None
    rank = q * n
    previous_le, previous_count = 0.0, 0
    for b in buckets:
        if b.count >= rank and b.count > previous_count:
            lower = previous_le if previous_le < b.le else 0.0
            share = (rank - previous_count) / (b.count - previous_count)
            return lower + (b.le - lower) * max(0.0, share)
        previous_le, previous_count = b.le, b.count
    return buckets[-1].le


def _count_at(buckets: Sequence[Bucket], le: float) -> int:
    """A cumulative histogram's count at `le` (the count of the last bound <= le)."""
    count = 0
    for b in buckets:
        if b.le > le:
            break
        count = b.count
    return count


def merge(many: Iterable[Sequence[Bucket]]) -> Buckets:
    """The histogram of all samples of several: counts add up at every bound any has."""
    parts = [list(b) for b in many if b]
    if not parts:
        return ()
    bounds = sorted({b.le for part in parts for b in part})
    return tuple(Bucket(le, sum(_count_at(part, le) for part in parts)) for le in bounds)


def window(now: Sequence[Bucket], before: Sequence[Bucket] | None) -> Buckets:
    """The samples between two reads of one histogram (an Envoy's, or a merged row's)."""
    if not before:
        return tuple(now)
    then = {b.le: b.count for b in before}
    out = []
    for b in now:
        earlier = then.get(b.le, 0)
        if b.count < earlier:
            return tuple(now)  # the Envoy restarted: its counts began again
        out.append(Bucket(b.le, b.count - earlier))
    return tuple(out)
