"""API bodies the daemon must refuse before anything is stored, and the ones it takes."""

from __future__ import annotations

import pytest

from devmesh.api import codec
from devmesh.api import types as api
from devmesh.daemon.api import Refusal
from devmesh.daemon.handlers import _fault


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"service": "c", "abort": {"percent": 10}}, id="abort-without-status"),
        pytest.param(
            {"service": "c", "abort": {"status": 503, "grpc_status": 2}}, id="two-statuses"
        ),
        pytest.param({"service": "c", "abort": {"status": 99999}}, id="status-99999"),
        pytest.param({"service": "c", "abort": {"status": 99}}, id="status-99"),
        pytest.param(
            {"service": "c", "abort": {"status": 503, "percent": -50}}, id="percent-negative"
        ),
        pytest.param({"service": "c", "abort": {"status": 503, "percent": 101}}, id="percent-101"),
        pytest.param(
            {"service": "c", "abort": {"status": 503, "percent": 1e308}}, id="percent-huge"
        ),
        pytest.param({"service": "c", "delay": {"fixed_ms": -1}}, id="negative-delay"),
        pytest.param({"service": "c", "delay": {"fixed_ms": 10**12}}, id="delay-years"),
        pytest.param({"service": "c", "abort": {"grpc_status": 17}}, id="grpc-17"),
    ],
)
def test_a_fault_out_of_range_is_refused(body: dict[str, object]) -> None:
    request = codec.decode(api.FaultRequest, body)
    with pytest.raises(Refusal) as caught:
        _fault(request)
    assert caught.value.error.code is api.ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            '{"service": "c", "abort": {"status": 503, "percent": Infinity}}', id="infinity"
        ),
        pytest.param('{"service": "c", "abort": {"status": 503, "percent": NaN}}', id="nan"),
        pytest.param('{"service": "c", "abort": {"status": "503"}}', id="string-status"),
        pytest.param('{"service": "c", "abort": {"status": true}}', id="bool-status"),
        pytest.param('["c"]', id="not-an-object"),
        pytest.param('{"abort": null}', id="no-service"),
        pytest.param("[" * 1000 + "]" * 1000, id="deep"),
        pytest.param('{"service": "c", "abort": {"status": ' + "9" * 5000 + "}}", id="5000-digits"),
        pytest.param(
            '{"service": "c", "delay": {"fixed_ms": 1, "percent": 1' + "0" * 400 + "}}",
            id="float-overflow",
        ),
        pytest.param('{"service": 1' + "0" * 400 + "}", id="huge-int-for-a-string"),
    ],
)
def test_a_fault_body_that_is_not_a_fault_does_not_decode(text: str) -> None:
    with pytest.raises(codec.DecodeError):
        codec.decode(api.FaultRequest, codec.loads(text))


def test_a_fault_in_range_is_taken_and_neither_part_clears() -> None:
    taken = _fault(codec.decode(api.FaultRequest, {"service": "c", "abort": {"status": 503}}))
    assert taken is not None and taken.abort is not None and taken.abort.http_status == 503
    assert _fault(api.FaultRequest("c")) is None


def test_a_restart_of_both_a_service_and_a_pod_is_refused_as_ambiguous() -> None:
    from devmesh.daemon.handlers import Handlers

    handlers = Handlers.__new__(Handlers)  # refused before the daemon's loop is asked
    for body, says in (
        (api.RestartRequest(service="c", pod="x"), "a service or a pod, not both"),
        (api.RestartRequest(), "needs a service or a pod"),
    ):
        with pytest.raises(Refusal) as caught:
            handlers.restart(body)
        assert caught.value.error.code is api.ErrorCode.BAD_REQUEST
        assert says in caught.value.error.message
