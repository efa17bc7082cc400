"""The daemon's API server against clients that misbehave: many at once, malformed bodies and
framing, slow and vanished clients, streams. Toy endpoints answer `devmesh.api.types` values;
the server runs in process on a UNIX socket in tmp_path (no Docker)."""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import stat
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from devmesh import unixhttp
from devmesh.api import codec
from devmesh.api import types as api
from devmesh.client import DaemonClient, DaemonRefused, DaemonUnavailable
from devmesh.daemon.api import ApiServer, Endpoint, Limits, Refusal
from devmesh.unixhttp import UnixHTTPConnection

# Short enough for tests, long enough for a loaded machine to send a request in time.
LIMITS = Limits(max_body=1024, request_timeout=1.0, idle_timeout=1.5, stop_grace=2.0)
STATE = api.MeshState("toy", "toy", api.Phase.SERVING, ready=True)


class Toy:
    """The endpoints, and what their streams did."""

    def __init__(self) -> None:
        self.closed = threading.Event()  # a stream's generator was closed (or ran out)
        self.lines = 3

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/v1/state", lambda _: STATE),
            Endpoint("POST", "/v1/shift", self.shift, api.ShiftRequest),
            Endpoint("POST", "/v1/shutdown", lambda _: api.Ok()),
            Endpoint("GET", "/v1/refuse", self.refuse),
            Endpoint("GET", "/v1/boom", self.boom),
            Endpoint("GET", "/v1/not-a-value", lambda _: {"ok": True}),
            Endpoint("GET", "/v1/slow", self.slow),
            Endpoint("POST", "/v1/logs/follow", self.follow, api.FollowRequest),
        ]

    @staticmethod
    def shift(request: api.ShiftRequest) -> api.ShiftResult:
        return api.ShiftResult(request.service, request.route or "default", request.weights, True)

    @staticmethod
    def refuse(_: None) -> api.Ok:
        raise Refusal(api.ErrorCode.CONFLICT, "not now: the mesh file has problems")

    @staticmethod
    def boom(_: None) -> api.Ok:
        raise RuntimeError("a bug")

    @staticmethod
    def slow(_: None) -> api.Ok:
        time.sleep(0.3)
        return api.Ok()

    def follow(self, request: api.FollowRequest) -> Iterator[api.LogLine | None]:
        if request.service == "missing":
            raise Refusal(api.ErrorCode.NOT_FOUND, "no service 'missing'")
        try:
            for i in range(self.lines):
                yield api.LogLine(f"{request.service}-1", f"line {i}")
            if request.service == "quiet":  # quiet for longer than a kept connection may idle
                until = time.monotonic() + LIMITS.idle_timeout + 0.5
                while time.monotonic() < until:
                    time.sleep(0.05)
                    yield None
                yield api.LogLine("quiet-1", "at last")
            if request.service in ("crash", "refuse-late"):
                if request.service == "crash":
                    raise RuntimeError("a bug in the stream")
                raise Refusal(api.ErrorCode.UNAVAILABLE, "the engine went away")
            while request.service == "forever":  # a quiet log: tick so the server can look
                time.sleep(0.02)
                yield None
        finally:
            self.closed.set()


@pytest.fixture
def toy() -> Toy:
    return Toy()


@pytest.fixture
def sock(tmp_path: Path, toy: Toy) -> Iterator[Path]:
    path = tmp_path / "api.sock"
    server = ApiServer(path, toy.endpoints(), limits=LIMITS)
    server.start()
    try:
        yield path
    finally:
        server.stop()


def ask(
    path: Path, method: str, target: str, body: bytes | None = None
) -> tuple[int, http.client.HTTPResponse, Any]:
    conn = UnixHTTPConnection(path, timeout=5)
    try:
        conn.request(method, target, body=body)
        resp = conn.getresponse()
        return resp.status, resp, codec.loads(resp.read())
    finally:
        conn.close()


def raw(path: Path, data: bytes, *, half_close: bool = False) -> tuple[int, Any, float]:
    """Send bytes as they are; the answer's status, its JSON and how long it took."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        started = time.monotonic()
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        resp = http.client.HTTPResponse(s)
        resp.begin()
        return resp.status, codec.loads(resp.read()), time.monotonic() - started


def error_of(payload: Any) -> api.ApiError:
    return codec.decode(api.ApiError, payload["error"])


# -- 1. many clients at once --------------------------------------------------------------------


@pytest.mark.parametrize("clients", [64, 128], ids=["64-clients", "128-clients"])
@pytest.mark.parametrize("keep", [False, True], ids=["new-connections", "kept-connections"])
def test_many_concurrent_clients_are_all_served(sock: Path, clients: int, keep: bool) -> None:
    start = threading.Barrier(clients)
    failures: list[BaseException] = []
    answers: list[api.MeshState] = []

    def client() -> None:
        daemon = DaemonClient(sock, timeout=10, keep=keep)
        start.wait()
        try:
            for _ in range(5):
                answers.append(daemon.state())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert answers == [STATE] * (clients * 5)


def _full_listener(path: Path) -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose queue is full: a UNIX connect() to it fails with EAGAIN."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(0)
    queued: list[socket.socket] = []
    while True:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.setblocking(False)
        try:
            c.connect(str(path))
        except BlockingIOError:
            c.close()
            return server, queued
        queued.append(c)


@pytest.mark.parametrize(
    "accept_after, connects",
    [(0.2, True), (None, False)],
    ids=["queue-drains-in-time", "queue-stays-full"],
)
def test_connect_waits_briefly_for_room_in_a_full_listen_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accept_after: float | None, connects: bool
) -> None:
    monkeypatch.setattr(unixhttp, "CONNECT_PATIENCE", 0.6)
    path = tmp_path / "full.sock"
    server, queued = _full_listener(path)
    if accept_after is not None:
        threading.Timer(accept_after, lambda: server.accept()[0].close()).start()
    conn = UnixHTTPConnection(path, timeout=5)
    started = time.monotonic()
    try:
        if connects:
            conn.connect()
        else:
            with pytest.raises(BlockingIOError, match="listen queue stayed full"):
                conn.connect()
            assert 0.5 < time.monotonic() - started < 2
    finally:
        conn.close()
        for c in queued:
            c.close()
        server.close()


# -- 2. bodies, paths, methods, handler outcomes --------------------------------------------


@pytest.mark.parametrize(
    "body, names",
    [
        (b"[1, 2]", "expected an object, got a list"),
        (b'"api"', "expected an object, got 'api'"),
        (b'{"service": "api", "weights": {"v1": "x"}}', "weights.v1: expected an integer"),
        (b'{"service": "api", "weights": {"v1": NaN}}', "NaN is not a number"),
        (b'{"service": "api", "weights": {"v1": -Infinity}}', "-Infinity is not a number"),
        (b'{"service": "api", "weights": ' + b"[" * 40 + b"]" * 40 + b"}", "nests deeper"),
        (b'{"service": "\xff\xfe", "weights": {}}', "not UTF-8 (byte 13)"),
        (b'{"weights": {"v1": 100}}', "service: missing"),
        (b'{"service": "api", "weights"', "not JSON"),
    ],
    ids=[
        "list",
        "string",
        "string-for-int",
        "nan",
        "infinity",
        "deep-nesting",
        "invalid-utf8",
        "missing-field",
        "truncated-json",
    ],
)
def test_a_bad_body_is_refused_naming_the_field(sock: Path, body: bytes, names: str) -> None:
    status, _, payload = ask(sock, "POST", "/v1/shift", body)
    error = error_of(payload)
    assert (status, error.code) == (400, api.ErrorCode.BAD_REQUEST)
    assert names in error.message and error.message.startswith("POST /v1/shift: ")


@pytest.mark.parametrize(
    "method, target, body, status, code, contains",
    [
        ("GET", "/v1/nothing", None, 404, api.ErrorCode.NOT_FOUND, "/v1/nothing"),
        ("GET", "/v1/shift", None, 405, api.ErrorCode.BAD_REQUEST, "takes POST, not GET"),
        ("PUT", "/v1/state", b"{}", 405, api.ErrorCode.BAD_REQUEST, "takes GET, not PUT"),
        ("GET", "/v1/refuse", None, 409, api.ErrorCode.CONFLICT, "not now"),
        ("GET", "/v1/boom", None, 500, api.ErrorCode.INTERNAL, "RuntimeError: a bug"),
        ("GET", "/v1/not-a-value", None, 500, api.ErrorCode.INTERNAL, "not a value"),
    ],
    ids=["unknown-path", "wrong-method", "unknown-method", "refusal", "exception", "non-value"],
)
def test_errors_answer_their_status_and_code_and_the_server_serves_on(
    sock: Path,
    caplog: pytest.LogCaptureFixture,
    method: str,
    target: str,
    body: bytes | None,
    status: int,
    code: api.ErrorCode,
    contains: str,
) -> None:
    caplog.set_level(logging.DEBUG, "devmesh.api")
    conn = UnixHTTPConnection(sock, timeout=5)
    try:
        conn.request(method, target, body=body)
        resp = conn.getresponse()
        error = error_of(codec.loads(resp.read()))
        assert (resp.status, error.code) == (status, code)
        assert contains in error.message
        if status == 405:
            assert resp.getheader("Allow") == contains.split()[1].rstrip(",")
        conn.request("GET", "/v1/state")  # the same kept connection answers on
        again = conn.getresponse()
        assert (again.status, codec.decode(api.MeshState, codec.loads(again.read()))) == (
            200,
            STATE,
        )
    finally:
        conn.close()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == (1 if status == 500 else 0)


@pytest.mark.parametrize(
    "method, target, body",
    [
        ("POST", "/v1/shutdown", b"not json at all"),
        ("POST", "/v1/shutdown", b"\xff\xfe"),
        ("GET", "/v1/state", b'{"anything": [1, 2]}'),
    ],
    ids=["not-json", "not-utf8", "json"],
)
def test_a_body_on_an_endpoint_that_takes_none_is_ignored(
    sock: Path, method: str, target: str, body: bytes
) -> None:
    status, _, _ = ask(sock, method, target, body)
    assert status == 200


def test_an_empty_body_takes_the_request_defaults(sock: Path) -> None:
    # a required field has no default: ShiftRequest.service (FollowRequest's is optional now)
    status, _, payload = ask(sock, "POST", "/v1/shift", b"")
    assert status == 400 and error_of(payload).message.endswith("service: missing")
    conn = UnixHTTPConnection(sock, timeout=5)
    try:
        conn.request("POST", "/v1/logs/follow", body=b"")
        resp = conn.getresponse()
        lines = [codec.loads(line) for line in resp.read().splitlines() if line.strip()]
    finally:
        conn.close()
    assert resp.status == 200  # every default: service None (every service), all lines
    assert [line["pod"] for line in lines] == ["None-1"] * 3


# -- 3. framing: Content-Length, chunked, malformed requests -----------------------------------


def _post(length: str, body: bytes = b"{}", extra: str = "") -> bytes:
    head = f"POST /v1/shutdown HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}\r\n"
    return head.encode() + body


@pytest.mark.parametrize(
    "request_bytes, half_close, status, contains",
    [
        (_post("abc"), False, 400, "bad Content-Length: 'abc'"),
        (_post("-1"), False, 400, "bad Content-Length: '-1'"),
        (_post("1e3"), False, 400, "bad Content-Length"),
        (_post("2", extra="Content-Length: 3\r\n"), False, 400, "bad Content-Length: 2, 3"),
        (_post(str(LIMITS.max_body + 1)), False, 413, "at most 1024"),
        (_post("99999999999999999999"), False, 400, "bad Content-Length"),
        (_post("10", b"{}"), False, 408, "10 bytes said, not sent"),
        (_post("10", b"{}"), True, 400, "ended after 2 of its 10 bytes"),
        (
            b"POST /v1/shutdown HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            False,
            411,
            "Content-Length",
        ),
        (b"GARBAGE\r\n\r\n", False, 400, "Bad request"),
        (b"GET /v1/state HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", False, 431, "too long"),
        (b"GET /v1/state HTTP/7.0\r\n\r\n", False, 505, "Invalid HTTP version"),
    ],
    ids=[
        "non-numeric-length",
        "negative-length",
        "float-length",
        "two-lengths",
        "body-over-limit",
        "huge-length",
        "length-more-than-sent",
        "length-more-than-sent-then-eof",
        "chunked",
        "garbage-request-line",
        "header-too-long",
        "http-7",
    ],
)
def test_bad_framing_gets_an_answer_not_silence(
    sock: Path, request_bytes: bytes, half_close: bool, status: int, contains: str
) -> None:
    got, payload, took = raw(sock, request_bytes, half_close=half_close)
    assert got == status
    assert contains in error_of(payload).message
    assert took < LIMITS.request_timeout + 2


# -- 4. slow clients ----------------------------------------------------------------------------


def test_a_request_trickling_in_is_cut_at_the_request_timeout(sock: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(sock))
        started = time.monotonic()
        s.sendall(b"GET /v1/state HTTP/1.1\r\n")
        answer = b""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(100):  # a header byte every 0.1 s: each read alone is quick
                s.sendall(b"X")
                time.sleep(0.1)
                if time.monotonic() - started > LIMITS.request_timeout + 0.5:
                    break
        s.shutdown(socket.SHUT_WR)
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < LIMITS.request_timeout + 2


@pytest.mark.parametrize("requests_first", [0, 1], ids=["never-asked", "kept-after-an-answer"])
def test_an_idle_connection_is_closed_after_the_idle_timeout(
    sock: Path, requests_first: int
) -> None:
    conn = UnixHTTPConnection(sock, timeout=5)
    try:
        conn.connect()
        for _ in range(requests_first):
            conn.request("GET", "/v1/state")
            conn.getresponse().read()
        assert conn.sock is not None
        started = time.monotonic()
        assert conn.sock.recv(1) == b""  # closed by the server
        assert LIMITS.idle_timeout - 0.2 < time.monotonic() - started < LIMITS.idle_timeout + 2
    finally:
        conn.close()


def test_a_stream_outlives_the_idle_timeout(sock: Path, toy: Toy) -> None:
    toy.lines = 1
    started = time.monotonic()
    lines = [line.text for line in DaemonClient(sock).follow_logs("quiet")]
    assert lines == ["line 0", "at last"]
    assert time.monotonic() - started > LIMITS.idle_timeout


# -- 5. clients that leave early ----------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/slow HTTP/1.1\r\n\r\n",
        b'POST /v1/logs/follow HTTP/1.1\r\nContent-Length: 23\r\n\r\n{"service": "forever"}\n',
        b"GET /v1/state HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}",
    ],
    ids=["before-the-answer", "during-a-stream", "mid-body"],
)
def test_a_client_leaving_early_is_one_quiet_line_not_a_traceback(
    sock: Path, toy: Toy, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    caplog.set_level(logging.DEBUG, "devmesh.api")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock))
        s.sendall(request_bytes)
        time.sleep(0.1)
    time.sleep(0.5)  # the slow handler answers into the closed connection
    assert ask(sock, "GET", "/v1/state")[0] == 200
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert [r for r in caplog.records if "went away" in r.getMessage()]


# -- 6. streams ---------------------------------------------------------------------------------


def test_follow_logs_reads_a_stream_to_its_end(sock: Path, toy: Toy) -> None:
    lines = list(DaemonClient(sock).follow_logs("api", tail=10))
    assert lines == [api.LogLine("api-1", f"line {i}") for i in range(3)]
    assert toy.closed.wait(1)


def test_a_stream_is_ndjson_chunked_one_value_a_line(sock: Path) -> None:
    status, resp, _ = 0, None, None
    conn = UnixHTTPConnection(sock, timeout=5)
    try:
        conn.request("POST", "/v1/logs/follow", body=b'{"service": "api"}')
        resp = conn.getresponse()
        status = resp.status
        assert resp.getheader("Content-Type") == "application/x-ndjson"
        assert resp.getheader("Transfer-Encoding") == "chunked"
        body = resp.read()
    finally:
        conn.close()
    assert status == 200
    assert body.splitlines() == [codec.dumps(api.LogLine("api-1", f"line {i}")) for i in range(3)]


@pytest.mark.parametrize(
    "version, framing",
    [("HTTP/1.1", "chunked"), ("HTTP/1.0", "until-close")],
    ids=["http-1.1-chunked", "http-1.0-until-close"],
)
def test_a_stream_is_framed_for_the_clients_http_version(
    sock: Path, version: str, framing: str
) -> None:
    body = b'{"service": "api"}'
    head = f"POST /v1/logs/follow {version}\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(head.encode() + body)
        resp = http.client.HTTPResponse(s)
        resp.begin()
        assert (resp.status, resp.chunked) == (200, framing == "chunked")
        lines = resp.read().splitlines()
    assert lines == [codec.dumps(api.LogLine("api-1", f"line {i}")) for i in range(3)]


@pytest.mark.parametrize(
    "service, level, traceback",
    [("crash", logging.ERROR, True), ("refuse-late", logging.INFO, False)],
    ids=["exception", "refusal"],
)
def test_a_stream_failing_midway_is_cut_and_its_lines_kept(
    sock: Path,
    toy: Toy,
    caplog: pytest.LogCaptureFixture,
    service: str,
    level: int,
    traceback: bool,
) -> None:
    caplog.set_level(logging.DEBUG, "devmesh.api")
    with contextlib.suppress(DaemonUnavailable):
        lines = [line.text for line in DaemonClient(sock).follow_logs(service)]
        assert lines == [f"line {i}" for i in range(3)]
    assert toy.closed.wait(1)
    (logged,) = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert (logged.levelno, bool(logged.exc_info)) == (level, traceback)
    assert ask(sock, "GET", "/v1/state")[0] == 200


def test_a_stream_refused_before_its_first_line_is_an_error_answer(sock: Path) -> None:
    with pytest.raises(DaemonRefused) as refused:
        list(DaemonClient(sock).follow_logs("missing"))
    assert refused.value.error == api.ApiError(api.ErrorCode.NOT_FOUND, "no service 'missing'")


@pytest.mark.parametrize("after", [0, 2], ids=["before-reading", "after-two-lines"])
def test_a_client_leaving_a_stream_closes_its_iterator(sock: Path, toy: Toy, after: int) -> None:
    lines = DaemonClient(sock).follow_logs("forever")
    assert isinstance(lines, Generator)
    for _ in range(after):
        next(lines)
    if after == 0:
        next(lines)  # the request is sent on the first next()
    lines.close()  # the client closes its connection
    assert toy.closed.wait(1)


def test_stop_ends_streams_and_closes_their_iterators(tmp_path: Path, toy: Toy) -> None:
    path = tmp_path / "api.sock"
    server = ApiServer(path, toy.endpoints(), limits=LIMITS)
    server.start()
    lines = DaemonClient(path).follow_logs("forever")
    next(lines)
    server.stop()
    assert toy.closed.is_set()  # stop() waited for it
    # The stream is cut (no last chunk); the client reads what was sent and its iteration
    # ends. (It reads a cut as the end: telling them apart is the client's to do.)
    with contextlib.suppress(DaemonUnavailable):
        assert len(list(lines)) <= toy.lines - 1


# -- 7. the socket file -------------------------------------------------------------------------


def test_the_socket_is_its_owners_only_and_stop_removes_it_and_kept_connections(
    tmp_path: Path, toy: Toy
) -> None:
    path = tmp_path / "api.sock"
    path.write_text("left by a dead daemon")
    server = ApiServer(path, toy.endpoints(), limits=LIMITS)
    server.start()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_ISSOCK(path.stat().st_mode)
    client = DaemonClient(path, timeout=5, keep=True)
    assert client.state() == STATE
    server.stop()
    assert not path.exists()
    with pytest.raises(DaemonUnavailable):
        client.state()


def test_two_endpoints_for_one_method_and_path_are_refused(tmp_path: Path) -> None:
    twice = [Endpoint("GET", "/v1/state", lambda _: STATE)] * 2
    with pytest.raises(ValueError, match="two endpoints for GET /v1/state"):
        ApiServer(tmp_path / "api.sock", twice)
