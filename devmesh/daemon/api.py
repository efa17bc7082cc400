"""The daemon's local API: typed JSON documents (`devmesh.api.types`) over HTTP/1.1 on a UNIX
socket readable only by its owner. The daemon registers its `Endpoint`s; this module only
serves them.

An endpoint's handler gets its request decoded (`Endpoint.request`, or None) and returns an
API value: the answer, 200. Or it returns an iterator of values: a stream, 200 with one JSON
document a line (`application/x-ndjson`, chunked), flushed per value. A handler refuses by
raising `Refusal`; anything else it raises is a bug: 500 `internal`, its traceback logged.

Every request gets an answer, however malformed, and no client holds a thread for ever:

- a body is at most `Limits.max_body` (413), has a numeric Content-Length (400; chunked:
  411), and is valid UTF-8 JSON of the request's type (400 `bad_request` naming the field);
- a request (line, headers, body) must arrive within `request_timeout` of its first byte
  (408), and a kept connection with no request for `idle_timeout` is closed;
- a client that goes away is one debug line, never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http
import io
import logging
import os
import re
import select
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from devmesh.api import codec
from devmesh.api.types import ApiError, ErrorCode

log = logging.getLogger("devmesh.api")


class Refusal(Exception):
    """Raised by a handler to answer an error: its code says the status (`ApiError.status`)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.error = ApiError(code, message)


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    method: str  # "GET" | "POST"
    path: str  # "/v1/state"
    # Gets the decoded request (or None) and returns an API value, or an iterator of them for a
    # streamed answer. A stream's iterator should yield None when it has waited a while (say a
    # second) with nothing to send: nothing is sent, and the server ends the stream (closing
    # the iterator) if the client has gone or the server stops. Until it yields, neither can
    # be noticed: a thread cannot be interrupted inside next().
    handler: Callable[[Any], Any]
    request: type | None = None  # the dataclass the JSON body decodes into; None: no body


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    max_body: int = 1 << 20  # bytes; a larger body is refused (413) unread
    request_timeout: float = 10.0  # s from a request's first byte to its last; and to write one
    idle_timeout: float = 60.0  # s a kept connection may wait for its next request
    stream_write_timeout: float = 60.0  # s a stream's reader may take nothing before it is dropped
    stop_grace: float = 1.0  # s stop() waits for streams to close their iterators


_CONTENT_LENGTH = re.compile(r"[0-9]{1,15}")
_GONE = (ConnectionError, TimeoutError)  # a client that went away, or stopped reading
_END = object()


class _Answer(Exception):
    """An error answer decided before (or instead of) the handler."""

    def __init__(
        self, status: int, code: ErrorCode, message: str, *, close: bool = False, **headers: str
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = ApiError(code, message)
        self.close = close
        self.headers = headers


class _TimedReader(io.RawIOBase):
    """The reading side of a connection. Between requests a read may wait `idle_timeout`;
    from a request's first byte, the whole request has `request_timeout` (a per-read timeout
    alone would let a client that sends a byte every few seconds keep the thread)."""

    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        super().__init__()
        self._sock = sock
        self._limits = limits
        self.deadline: float | None = None  # None: between requests

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is None:
            self._sock.settimeout(self._limits.idle_timeout)
        else:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not arrive in time")
            self._sock.settimeout(left)
        n = self._sock.recv_into(buffer)
        if n and self.deadline is None:
            self.deadline = time.monotonic() + self._limits.request_timeout
        return n


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A thread per connection; connections are HTTP/1.1 and kept (the TUI reads on one)."""

    daemon_threads = True
    # The listen backlog (Python's default is 5): 40 clients connecting at once found it full,
    # and a UNIX socket's connect() fails with EAGAIN then instead of waiting.
    request_queue_size = 256
    routes: dict[str, dict[str, Endpoint]]  # path -> method -> endpoint
    limits: Limits

    def server_activate(self) -> None:
        super().server_activate()
        self.open: set[socket.socket] = set()
        self.open_lock = threading.Lock()
        self.stopping = threading.Event()
        self.streams = 0
        self.streams_done = threading.Condition()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.open_lock:
            self.open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.open_lock:
            self.open.discard(request)
        super().shutdown_request(request)

    def close_open(self) -> None:
        """End the kept connections: a stopped API answers nothing more on them."""
        with self.open_lock:
            for request in self.open:
                with contextlib.suppress(OSError):  # already gone
                    request.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # What escaped a connection's handler (socketserver's own prints a traceback to stderr).
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("API connection ended: %s", exc or type(exc).__name__)
        else:
            log.exception("API connection failed")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    _reader: _TimedReader

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # read through the timed reader instead
        self._reader = _TimedReader(self.connection, self.server.limits)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.deadline = None
        self.command = self.path = self.requestline = ""  # until the request line is read
        try:
            self._one_request()
        except _Answer as answer:
            self._refuse(answer)
        except TimeoutError as exc:
            self.close_connection = True
            if self._reader.deadline is None:
                log.debug("API connection idle for %g s: closed", self.server.limits.idle_timeout)
            else:
                self._refuse(_Answer(408, ErrorCode.BAD_REQUEST, str(exc), close=True))
        except ConnectionError as exc:
            self.close_connection = True
            log.debug("API client went away: %s %s: %s", self.command, self.path, exc)

    def _one_request(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline:
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            raise _Answer(414, ErrorCode.BAD_REQUEST, "the request line is too long", close=True)
        if not self.parse_request():
            return  # answered by send_error
        body = self._read_body()
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            raise _Answer(404, ErrorCode.NOT_FOUND, f"no endpoint {self.path}")
        endpoint = route.get(self.command)
        if endpoint is None:
            allowed = ", ".join(sorted(route))
            raise _Answer(
                405,
                ErrorCode.BAD_REQUEST,
                f"{self.path} takes {allowed}, not {self.command}",
                Allow=allowed,
            )
        self._run(endpoint, body)

    def _read_body(self) -> bytes:
        if "Transfer-Encoding" in self.headers:
            raise _Answer(
                411, ErrorCode.BAD_REQUEST, "send the body with a Content-Length", close=True
            )
        values = {v.strip() for v in self.headers.get_all("Content-Length", [])}
        if not values:
            return b""
        if len(values) > 1 or not _CONTENT_LENGTH.fullmatch(text := values.pop()):
            shown = ", ".join(sorted(values)) if len(values) > 1 else repr(text)
            raise _Answer(400, ErrorCode.BAD_REQUEST, f"bad Content-Length: {shown}", close=True)
        length = int(text)
        if length > self.server.limits.max_body:
            raise _Answer(
                413,
                ErrorCode.BAD_REQUEST,
                f"the body is {length} bytes; at most {self.server.limits.max_body} are taken",
                close=True,
            )
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise _Answer(
                408,
                ErrorCode.BAD_REQUEST,
                f"the body did not arrive: {length} bytes said, not sent within "
                f"{self.server.limits.request_timeout:g} s",
                close=True,
            ) from None
        if len(body) < length:
            raise _Answer(
                400,
                ErrorCode.BAD_REQUEST,
                f"the body ended after {len(body)} of its {length} bytes",
                close=True,
            )
        return body

    def _decode(self, endpoint: Endpoint, body: bytes) -> Any:
        if endpoint.request is None:
            return None  # a body sent anyway is ignored
        where = f"{self.command} {endpoint.path}"
        try:
            text = body.decode()
        except UnicodeDecodeError as exc:
            raise _Answer(
                400, ErrorCode.BAD_REQUEST, f"{where}: the body is not UTF-8 (byte {exc.start})"
            ) from None
        try:
            data = codec.loads(text) if text.strip() else {}
            return codec.decode(endpoint.request, data)
        except codec.DecodeError as exc:
            raise _Answer(400, ErrorCode.BAD_REQUEST, f"{where}: {exc}") from None
        except (ValueError, OverflowError, RecursionError) as exc:  # not a value we can read
            log.info("API %s: an unreadable body: %s", where, type(exc).__name__)
            raise _Answer(400, ErrorCode.BAD_REQUEST, f"{where}: an unreadable body") from None

    def _run(self, endpoint: Endpoint, body: bytes) -> None:
        request = self._decode(endpoint, body)
        data = b""
        try:
            result = endpoint.handler(request)
            if not isinstance(result, Iterator):
                if not dataclasses.is_dataclass(result) or isinstance(result, type):
                    raise TypeError(f"the handler answered {type(result).__name__}, not a value")
                data = codec.dumps(result)
        except Refusal as refusal:
            raise _Answer(refusal.error.status, refusal.error.code, refusal.error.message) from None
        except Exception as exc:  # a bug; the API answers, whatever went wrong inside
            log.exception("API %s %s failed", self.command, self.path)
            raise self._internal(exc) from None
        if isinstance(result, Iterator):
            self._stream(result)
        else:
            self._send(200, "application/json", data)

    def _stream(self, items: Iterator[Any]) -> None:
        """One value a line, each flushed as it comes; the iterator is closed however the
        stream ends (its end, the client gone, the server stopping, an error)."""
        server = self.server
        with server.streams_done:
            server.streams += 1
        try:
            try:
                item = next(items, _END)  # before the head: a handler may still refuse here
            except Refusal as refusal:
                raise _Answer(
                    refusal.error.status, refusal.error.code, refusal.error.message
                ) from None
            except Exception as exc:
                log.exception("API %s %s failed", self.command, self.path)
                raise self._internal(exc) from None
            chunked = self.request_version >= "HTTP/1.1"
            head = "Transfer-Encoding: chunked\r\n" if chunked else "Connection: close\r\n"
            self.close_connection = self.close_connection or not chunked
            self.connection.settimeout(server.limits.stream_write_timeout)
            if not self._write(self._head(200, "application/x-ndjson", head)):
                return
            while item is not _END:
                if server.stopping.is_set():
                    log.debug("API stream %s ended: the server stops", self.path)
                    self.close_connection = True  # no last chunk: the client sees it cut
                    return
                if item is None:
                    if self._client_gone():
                        log.debug("API client went away from stream %s", self.path)
                        self.close_connection = True
                        return
                    # A bare newline: the client knows the daemon is alive on a quiet stream.
                    if not self._write(b"1\r\n\n\r\n" if chunked else b"\n"):
                        return
                else:
                    try:
                        line = codec.dumps(item) + b"\n"
                    except Exception:
                        log.exception("API stream %s: an item is not an API value", self.path)
                        self.close_connection = True
                        return
                    if not self._write(b"%x\r\n%s\r\n" % (len(line), line) if chunked else line):
                        return
                try:
                    item = next(items, _END)
                except Refusal as refusal:  # too late for an error answer: the stream is cut
                    log.info("API stream %s refused: %s", self.path, refusal.error.message)
                    self.close_connection = True
                    return
                except Exception:
                    log.exception("API stream %s failed", self.path)
                    self.close_connection = True
                    return
            if chunked:
                self._write(b"0\r\n\r\n")
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("API stream %s: closing its iterator failed", self.path)
            with server.streams_done:
                server.streams -= 1
                server.streams_done.notify_all()

    def _client_gone(self) -> bool:
        """Whether the client closed its end (it sends nothing while it reads a stream)."""
        poller = select.poll()
        poller.register(self.connection, select.POLLIN | select.POLLHUP)
        if not poller.poll(0):
            return False
        try:
            return not self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True

    # -- writing ------------------------------------------------------------------------------

    def _internal(self, exc: Exception) -> _Answer:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return _Answer(
            500, ErrorCode.INTERNAL, f"{self.command} {self.path} failed ({why}); see the log"
        )

    def _refuse(self, answer: _Answer) -> None:
        if answer.close:
            self.close_connection = True
        data = codec.dumps({"error": answer.error})
        extra = "".join(f"{k}: {v}\r\n" for k, v in answer.headers.items())
        self._send(answer.status, "application/json", data, extra)

    def _head(self, status: int, content_type: str, extra: str) -> bytes:
        self.log_request(status)
        phrase = http.HTTPStatus(status).phrase
        close = "Connection: close\r\n" if self.close_connection else ""
        return (
            f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\n{extra}{close}\r\n"
        ).encode()

    def _send(self, status: int, content_type: str, data: bytes, extra: str = "") -> None:
        # Head and body in one write: one syscall per answer.
        self.connection.settimeout(self.server.limits.request_timeout)
        head = self._head(status, content_type, f"Content-Length: {len(data)}\r\n{extra}")
        self._write(head + data)

    def _write(self, data: bytes) -> bool:
        """False: the client went away (or took nothing for the write timeout)."""
        try:
            self.wfile.write(data)
            return True
        except _GONE as exc:
            self.close_connection = True
            log.debug("API client went away from %s %s: %s", self.command, self.path, exc)
            return False

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line or headers), as API errors."""
        error = ErrorCode.NOT_FOUND if code == 404 else (
            ErrorCode.INTERNAL if code >= 500 else ErrorCode.BAD_REQUEST
        )  # fmt: skip
        text = message or http.HTTPStatus(code).phrase
        self._refuse(_Answer(code, error, f"{text}: {explain}" if explain else text, close=True))

    def address_string(self) -> str:
        return "local"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


class ApiServer:
    def __init__(
        self, socket_path: Path, endpoints: Sequence[Endpoint], *, limits: Limits = Limits()
    ) -> None:
        routes: dict[str, dict[str, Endpoint]] = {}
        for endpoint in endpoints:
            methods = routes.setdefault(endpoint.path, {})
            if endpoint.method in methods:
                raise ValueError(f"two endpoints for {endpoint.method} {endpoint.path}")
            methods[endpoint.method] = endpoint
        self.socket_path = socket_path
        if socket_path.exists() or socket_path.is_symlink():
            socket_path.unlink()
        old = os.umask(0o177)  # the socket is created 0600: its owner only
        try:
            self._server = _Server(str(socket_path), _Handler)
        finally:
            os.umask(old)
        self._server.routes = routes
        self._server.limits = limits
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="api",
            kwargs={"poll_interval": 0.2},
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Serve no more: kept connections end, streams end (their iterators closed when they
        next yield; this waits `stop_grace` for that), the socket file goes."""
        server = self._server
        server.stopping.set()
        if self._thread.is_alive():
            server.shutdown()
        server.close_open()
        with server.streams_done:
            server.streams_done.wait_for(lambda: server.streams == 0, server.limits.stop_grace)
        server.server_close()
        self.socket_path.unlink(missing_ok=True)
