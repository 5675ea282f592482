"""A fault-injecting HTTP proxy between a mount and the test S3 server (127.0.0.1 only).

Requests are forwarded unchanged unless an active `Fault` matches them: every criterion the fault sets
holds (`method`; `path`, a regex searched in the unquoted path; `ranged`, a Range header or not; `min_range`,
a range of at least that many bytes, e.g. only read-ahead parts) and fewer than `times` requests hit it so
far.  The first matching fault, in the order they were added, decides what the client gets:

- `Fault.latency(s)`: the request is held `s` seconds, then forwarded;
- `Fault.error(503, "SlowDown")`: S3's XML error with that status, nothing forwarded;
- `Fault.reset(after=n)`: the upstream response's headers and `n` body bytes, then a TCP reset (RST);
  `after=None` resets right after reading the request, before any response;
- `Fault.truncate(after=n)`: headers announcing the full length, `n` body bytes, then a clean close (FIN);
  with `honest=True` the headers announce `n` bytes instead (a consistent but short answer);
- `Fault.stall(after=n)`: headers and `n` body bytes (`None`: nothing at all), then silence until the fault
  is removed or the proxy stops; the connection is then closed;
- `Fault.deny()`: S3's 403 AccessDenied, as a bucket policy would answer.

Faults can be added and removed while the proxy serves (`add`, `remove`, `clear`, or `with
proxy.inject(fault):`); each counts the requests it hit, and `wait_for_hits` waits for one to be hit.  The
`deny` constructor argument keeps the proxy's first form working: a predicate on (method, raw path).
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
UPSTREAM_TIMEOUT = 60
#: A stalled connection is let go after this long at most, so no test can hang on the proxy itself.
MAX_STALL = 120.0


def error_body(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()


@dataclass(eq=False)
class Fault:
    """What to do to the requests it matches; `times` limits how many (None: every one until removed)."""

    kind: str
    method: str | None = None
    path: str | None = None  # a regex searched in the unquoted request path (no query string)
    ranged: bool | None = None  # True: only requests with a Range header; False: only without
    min_range: int | None = None  # only ranges `bytes=a-b` of at least this many bytes
    times: int | None = None
    delay: float = 0.0
    status: int = 503
    code: str = "SlowDown"
    after: int | None = None
    honest: bool = False
    hits: int = field(default=0, init=False)

    @classmethod
    def latency(cls, seconds: float, **match: Any) -> Fault:
        return cls("latency", delay=seconds, **match)

    @classmethod
    def error(cls, status: int = 503, code: str = "SlowDown", **match: Any) -> Fault:
        return cls("error", status=status, code=code, **match)

    @classmethod
    def reset(cls, after: int | None = 0, **match: Any) -> Fault:
        return cls("reset", after=after, **match)

    @classmethod
    def truncate(cls, after: int = 0, *, honest: bool = False, **match: Any) -> Fault:
        return cls("truncate", after=after, honest=honest, **match)

    @classmethod
    def stall(cls, after: int | None = None, **match: Any) -> Fault:
        return cls("stall", after=after, **match)

    @classmethod
    def deny(cls, **match: Any) -> Fault:
        return cls("error", status=403, code="AccessDenied", **match)

    def matches(self, method: str, path: str, byte_range: str | None) -> bool:
        return ((self.method is None or self.method == method)
                and (self.path is None or re.search(self.path, path) is not None)
                and (self.ranged is None or self.ranged == (byte_range is not None))
                and (self.min_range is None or range_length(byte_range) >= self.min_range)
                and (self.times is None or self.hits < self.times))


def range_length(byte_range: str | None) -> int:
    """Bytes a `Range: bytes=a-b` header asks for (0 for no header, or any other form)."""
    found = re.fullmatch(r"bytes=(\d+)-(\d+)", byte_range or "")
    return int(found[2]) - int(found[1]) + 1 if found else 0


@dataclass
class _Upstream:
    """The upstream server's answer, read whole; `length` is its Content-Length (a HEAD's has no body)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    length: int


class FaultProxy:
    def __init__(self, upstream: str, deny: Callable[[str, str], bool] | None = None) -> None:
        self.upstream = urlparse_host(upstream)
        self.deny = deny
        self.denied = 0
        self._faults: list[Fault] = []
        self._changed = threading.Condition()
        self._released = threading.Event()  # set when the proxy stops: stalled handlers let go
        self.server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self.endpoint_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- rules --------------------------------------------------------------------------------------------
    def add(self, fault: Fault) -> Fault:
        with self._changed:
            self._faults.append(fault)
            self._changed.notify_all()
        return fault

    def remove(self, fault: Fault) -> None:
        with self._changed:
            if fault in self._faults:
                self._faults.remove(fault)
            self._changed.notify_all()

    def clear(self) -> None:
        with self._changed:
            self._faults.clear()
            self._changed.notify_all()

    @contextmanager
    def inject(self, fault: Fault) -> Iterator[Fault]:
        self.add(fault)
        try:
            yield fault
        finally:
            self.remove(fault)

    def wait_for_hits(self, fault: Fault, hits: int = 1, timeout: float = 30.0) -> None:
        """Wait until `fault` has hit `hits` requests; AssertionError after `timeout` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: fault.hits >= hits, timeout):
                raise AssertionError(f"{fault.kind} fault hit {fault.hits} requests, expected {hits}")

    def _match(self, method: str, raw_path: str, byte_range: str | None) -> Fault | None:
        if self.deny is not None and self.deny(method, raw_path):
            with self._changed:
                self.denied += 1
            return Fault.deny()
        path = unquote(urlsplit(raw_path).path)
        with self._changed:
            for fault in self._faults:
                if fault.matches(method, path, byte_range):
                    fault.hits += 1
                    self._changed.notify_all()
                    return fault
        return None

    def _unhit(self, fault: Fault) -> None:
        with self._changed:
            fault.hits -= 1

    def _stall_until_removed(self, fault: Fault) -> None:
        with self._changed:
            self._changed.wait_for(lambda: fault not in self._faults or self._released.is_set(), MAX_STALL)

    # -- serving ------------------------------------------------------------------------------------------
    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Upstream:
        host, port = self.upstream
        connection = http.client.HTTPConnection(host, port, timeout=UPSTREAM_TIMEOUT)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders()
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
            length = int(response.getheader("Content-Length") or 0) if method == "HEAD" else len(data)
            return _Upstream(response.status, kept, data, length)
        finally:
            connection.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

            def _upstream(self, body: bytes) -> _Upstream:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    headers["Content-Length"] = str(len(body))
                return proxy.forward(self.command, self.path, headers, body)

            def _send(self, answer: _Upstream, length: int, body: bytes) -> None:
                """Headers announcing `length` body bytes, then `body` (which may be shorter)."""
                self.send_response(answer.status)
                for key, value in answer.headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD" and body:
                    self.wfile.write(body)
                self.wfile.flush()

            def _reset(self) -> None:
                """Abort the connection: SO_LINGER 0 makes close() send a TCP RST (once `rfile`, the
                socket's only other user, is closed)."""
                self.close_connection = True
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()
                self.connection.close()

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._match(self.command, self.path, self.headers.get("Range"))
                if fault is None or fault.kind == "latency":
                    if fault is not None:
                        time.sleep(fault.delay)
                    answer = self._upstream(body)
                    self._send(answer, answer.length, answer.body)
                elif fault.kind == "error":
                    payload = error_body(fault.code, f"injected {fault.status}")
                    headers = [("Content-Type", "application/xml")]
                    self._send(_Upstream(fault.status, headers, payload, len(payload)), len(payload), payload)
                elif fault.after is None:  # reset or stall before any response
                    if fault.kind == "stall":
                        proxy._stall_until_removed(fault)
                    self._reset()
                else:
                    self._cut(fault, self._upstream(body))

            def _cut(self, fault: Fault, answer: _Upstream) -> None:
                """reset / truncate / stall after `fault.after` bytes of the upstream body (a shorter body
                goes through whole, and does not count as a hit)."""
                if fault.after is not None and fault.after >= len(answer.body):
                    proxy._unhit(fault)
                    self._send(answer, answer.length, answer.body)
                    return
                sent = answer.body[:fault.after]
                announced = len(sent) if fault.honest else answer.length
                self._send(answer, announced, sent)
                if fault.kind == "stall":
                    proxy._stall_until_removed(fault)
                if fault.kind == "reset":
                    self._reset()
                self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
        with self._changed:
            self._changed.notify_all()
        self.server.shutdown()
        self.server.server_close()


class _QuietServer(ThreadingHTTPServer):
    """Clients hanging up on a cut or stalled answer is what the faults are for: no traceback for it."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def urlparse_host(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80
