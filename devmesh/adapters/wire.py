"""Protobuf's wire format, just enough to find and count a message's repeated fields
without decoding it.

The daemon takes every span batch and every access-log message the Envoys send on the xDS
loop, which serves the Envoys' config too. A full parse there costs more than the whole of
what the daemon does with a batch until someone reads it: a count of what it holds, from
its framing (measured on this machine: Envoy's batch of 834 spans, 420 KB, parsed in
10 ms; framed and counted here in 0.7 ms).
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT, I64, LEN, I32 = 0, 1, 2, 5


def _varint(data: bytes, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise ValueError("a truncated or overlong varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def items(
    data: bytes, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of every field of the message in
    data[start:end]: the payload of a length-delimited field, the 8 or 4 bytes of a fixed
    one, a varint's bytes. ValueError when the bytes are not a protobuf message."""
    stop = len(data) if end is None else end
    i = start
    while i < stop:
        key, i = _varint(data, i, stop)
        kind = key & 7
        if kind == VARINT:
            a = i
            _, i = _varint(data, i, stop)
            yield key >> 3, kind, a, i
            continue
        if kind == I64:
            size = 8
        elif kind == I32:
            size = 4
        elif kind == LEN:
            size, i = _varint(data, i, stop)
        else:  # groups (3, 4) are in none of these messages; 6 and 7 are no wire type
            raise ValueError(f"wire type {kind} at byte {i}")
        if i + size > stop:
            raise ValueError("a field runs past its message")
        yield key >> 3, kind, i, i + size
        i += size


def fields(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the message in
    data[start:end]; fields of other wire types are skipped. ValueError when the bytes are
    not a protobuf message."""
    for number, kind, a, b in items(data, start, end):
        if kind == LEN:
            yield number, a, b


def at(
    data: bytes, path: tuple[int, ...], start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int]]:
    """(start, end) of every field the message holds at `path` (as `count`), in order:
    at(b, (1, 2, 2)) walks every log record of an OTLP logs export."""
    first, rest = path[0], path[1:]
    for number, a, b in fields(data, start, end):
        if number == first:
            if rest:
                yield from at(data, rest, a, b)
            else:
                yield a, b


def count(data: bytes, path: tuple[int, ...], start: int = 0, end: int | None = None) -> int:
    """How many fields the message holds at `path` (field numbers, outermost first, each
    but the last a message): count(b, (1, 2, 2)) counts every resource_spans[].
    scope_spans[].spans of an OTLP export request."""
    first, rest = path[0], path[1:]
    n = 0
    for number, a, b in fields(data, start, end):
        if number == first:
            n += count(data, rest, a, b) if rest else 1
    return n
