"""Adaptive tracing's choice of share (daemon/sampling.py), on made-up span counts."""

from __future__ import annotations

from devmesh.daemon.sampling import EARLY, HOLD, STEPS, TARGET, WINDOW, AdaptiveSampling


def _run(sampling: AdaptiveSampling, every: float, seconds: float, start: float, total: int):
    """Feed `seconds` of traffic that would make `every` spans a second at 100 %, one
    observation a second; returns (now, total, changes)."""
    changes = []
    now = start
    for _ in range(int(seconds)):
        now += 1.0
        total += round(every * sampling.percent / 100.0)
        changed = sampling.observe(now, total)
        if changed is not None:
            changes.append(changed)
    return now, total, changes


def test_a_quiet_mesh_keeps_every_request_traced() -> None:
    s = AdaptiveSampling()
    _, _, changes = _run(s, every=TARGET, seconds=60, start=0.0, total=0)
    assert changes == [] and s.percent == 100.0


def test_load_lowers_the_share_to_the_step_that_fits_the_target_at_once() -> None:
    s = AdaptiveSampling()
    _, _, changes = _run(s, every=2000.0, seconds=10, start=0.0, total=0)  # ~1,000 req/s, 2 hops
    assert changes == [2.0]  # 2,000 x 2 % = 40 <= 50 spans a second; 5 % would be 100


def test_saturation_goes_lower_and_the_end_of_load_goes_back_to_every_request() -> None:
    s = AdaptiveSampling()
    now, total, changes = _run(s, every=12_000.0, seconds=10, start=0.0, total=0)
    assert changes == [0.2]  # 12,000 x 0.2 % = 24 <= 50; 0.5 % would be 60
    now, total, changes = _run(s, every=0.0, seconds=20, start=now, total=total)
    # (a window across the load's end may see half of it first: a step between)
    assert changes[-1] == 100.0 and s.percent == 100.0


def test_a_load_far_over_the_target_lowers_the_share_within_two_seconds() -> None:
    s = AdaptiveSampling()
    # the first observation starts the window; the next, EARLY later, already tells
    _, _, changes = _run(s, every=10_000.0, seconds=1 + int(EARLY), start=0.0, total=0)
    assert changes == [0.5]  # 10,000 x 0.5 % = 50 spans a second


def test_a_load_begun_within_a_window_is_measured_by_its_own_seconds() -> None:
    s = AdaptiveSampling()
    now, total, changes = _run(s, every=0.0, seconds=10, start=0.0, total=0)  # quiet
    assert changes == []
    # the window began in the quiet seconds: over all of it, 2,000 a second read as 500,
    # and chose 10 %
    _, _, changes = _run(s, every=2000.0, seconds=1, start=now, total=total)
    assert changes == [2.0]


def test_a_burst_of_held_spans_under_a_running_load_is_taken_with_the_window() -> None:
    """Twelve Envoys' 5 s timers falling together: a second with 750 spans after seconds of
    100 a second. The window's mean decides (316 a second: 10 %), not that second (5 %)."""
    s = AdaptiveSampling()
    assert s.observe(0.0, 0) is None
    assert s.observe(1.0, 100) is None
    assert s.observe(2.0, 200) is None
    assert s.observe(3.0, 950) == 10.0


def test_a_load_just_over_the_target_waits_until_its_spans_tell() -> None:
    s = AdaptiveSampling()
    # 2 x TARGET a second: over 1.5 x TARGET, but a few seconds of it are no whole window's
    # worth (1.5 x TARGET x WINDOW)
    now, total, changes = _run(s, every=2 * TARGET, seconds=4, start=0.0, total=0)
    assert changes == []
    _, _, changes = _run(s, every=2 * TARGET, seconds=int(WINDOW) - 3, start=now, total=total)
    assert changes == [50.0]


def test_a_small_change_of_load_changes_nothing() -> None:
    """Hysteresis: between TARGET / 2.5 and 1.5 x TARGET spans a second, the share holds."""
    s = AdaptiveSampling()
    now, total, _ = _run(s, every=2000.0, seconds=10, start=0.0, total=0)
    assert s.percent == 2.0
    _, _, changes = _run(s, every=1250.0, seconds=30, start=now, total=total)  # 25 a second
    assert changes == [] and s.percent == 2.0


def test_spans_still_buffered_at_the_old_share_do_not_lower_it_again() -> None:
    s = AdaptiveSampling()
    now, total, changes = _run(s, every=2000.0, seconds=2, start=0.0, total=0)
    assert changes == [2.0]  # lowered early: 2,000 spans in a second tell already
    # The Envoys flush what they held at 100 % in the next seconds: not measured
    total += 2000 * 3
    now += HOLD - 1
    assert s.observe(now, total) is None
    _, _, changes = _run(s, every=2000.0, seconds=10, start=now, total=total)
    assert changes == [] and s.percent == 2.0


def test_a_daemon_count_that_starts_again_starts_a_new_window() -> None:
    s = AdaptiveSampling()
    assert s.observe(0.0, 5000) is None
    assert s.observe(3.0, 10) is None  # fewer than before: not a negative rate
    assert s.percent == 100.0


def test_the_share_never_goes_under_the_last_step() -> None:
    s = AdaptiveSampling()
    _run(s, every=10_000_000.0, seconds=30, start=0.0, total=0)
    assert s.percent == STEPS[-1]
