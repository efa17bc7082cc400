"""Protobuf framing without decoding (adapters/wire.py): fields found and counted as a
full parse finds them, bytes that are not protobuf refused."""

from __future__ import annotations

import pytest
from envoy.service.accesslog.v3 import als_pb2

from devmesh.adapters import wire


def _message(http: int, tcp: int) -> als_pb2.StreamAccessLogsMessage:
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.node.id = "n"  # a field before and between the counted ones
    for i in range(http):
        e = msg.http_logs.log_entry.add()
        e.common_properties.sample_rate = 1.0  # fixed64 (double)
        e.response.response_code.value = 200 + i  # varints inside
        e.request.request_body_bytes = 1 << 40  # a long varint
    for _ in range(tcp):
        msg.tcp_logs.log_entry.add().connection_properties.sent_bytes = 3
    return msg


# http_logs and tcp_logs are one oneof: a message holds one kind
@pytest.mark.parametrize(("http", "tcp"), [(0, 0), (1, 0), (0, 5), (300, 0)])
def test_counts_match_a_full_parse(http: int, tcp: int) -> None:
    data = _message(http, tcp).SerializeToString()
    assert wire.Counter((2, 1))(data) == http
    assert wire.Counter((3, 1))(data) == tcp
    assert wire.Counter((1,))(data) == 1
    assert wire.Counter((4,))(data) == 0


def test_a_count_runs_over_every_branch_of_the_path() -> None:
    # field 1 twice, each holding field 2 twice, each holding field 3 (1, then 2 times);
    # a varint field 4 and an empty field 9 after them, counted only when asked for, and
    # a field 2 that is a varint, not the message the path says: not counted (as `at`)
    leaf = b"\x1a\x01x"
    inner = (b"\x12\x03" + leaf, b"\x12\x06" + leaf * 2)
    outer = b"".join(inner) + b"\x20\x05" + b"\x4a\x00" + b"\x10\x07"
    data = (b"\x0a" + bytes([len(outer)]) + outer) * 2
    assert wire.Counter((1, 2, 3))(data) == 6
    assert wire.Counter((1, 2))(data) == 4
    assert wire.Counter((1, 9))(data) == 2
    assert len(list(wire.at(data, (1, 2, 3)))) == 6  # the pure walk finds the same


def test_an_empty_path_is_refused() -> None:
    with pytest.raises(ValueError):
        wire.Counter(())


def test_fields_give_each_length_delimited_field_and_skip_the_rest() -> None:
    # field 1 varint 150, field 2 bytes "ab", field 3 fixed32, field 4 fixed64, field 2 ""
    data = b"\x08\x96\x01" + b"\x12\x02ab" + b"\x1d" + b"\0" * 4 + b"\x21" + b"\0" * 8 + b"\x12\x00"
    assert [(n, data[a:b]) for n, a, b in wire.fields(data)] == [(2, b"ab"), (2, b"")]


@pytest.mark.parametrize(
    "data",
    [b"\x0a\x05\x12\x03", b"\x0a", b"\x0b\x00", b"\x0a\x80", b"\x1d\x00", b"\x08" + b"\xff" * 11],
    ids=["runs-past", "no-length", "group", "truncated-varint", "short-fixed32", "overlong"],
)
def test_bytes_that_are_not_protobuf_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        list(wire.fields(data))


@pytest.mark.parametrize(
    "data",
    [b"\x0a\x02\x12\x05", b"\x0a\x05\x12\x03", b"\x0a\x80", b"\x0b\x00"],
    ids=["inside", "runs-past", "truncated-varint", "group"],
)
def test_a_refusal_inside_a_counted_field_is_found(data: bytes) -> None:
    with pytest.raises(ValueError):
        wire.Counter((1, 2))(data)
