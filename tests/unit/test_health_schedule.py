"""When the health monitor probes an app next (daemon/health.py `probe_delay`): a new app,
which a roll's new pod waits for, is probed often at first."""

from __future__ import annotations

import pytest

from devmesh.daemon.health import STARTING_EVERY, STARTING_FOR, UNTIL_HEALTHY, probe_delay


@pytest.mark.parametrize(
    ("ok", "interval", "starting", "expected"),
    [
        pytest.param(True, 2.0, None, 2.0, id="healthy-its-own-interval"),
        pytest.param(True, 2.0, 0.1, 2.0, id="healthy-as-it-starts-too"),
        pytest.param(False, 2.0, 0.0, STARTING_EVERY, id="new-app-often"),
        pytest.param(False, 2.0, STARTING_FOR - 0.1, STARTING_EVERY, id="new-app-for-a-while"),
        pytest.param(False, 2.0, STARTING_FOR, UNTIL_HEALTHY, id="slow-starter-less-often"),
        pytest.param(False, 2.0, None, UNTIL_HEALTHY, id="was-healthy-once"),
        pytest.param(False, 0.01, 0.0, 0.01, id="never-less-often-than-its-interval"),
    ],
)
def test_probe_delay(ok: bool, interval: float, starting: float | None, expected: float) -> None:
    assert probe_delay(ok, interval, starting) == pytest.approx(expected)
