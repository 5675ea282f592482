"""Plain HTTP GETs over kept-alive connections: the least client work a ranged read of S3 can cost.

`http.client` straight, no urllib3: measured against the test server, a ~512 KiB ranged GET cost 0.55 ms of
client CPU this way, 0.9 ms through a urllib3 pool and 2.2 ms through boto3.  It only does what a GET of a
presigned URL needs: one pool of idle connections per host, a timeout on silence, TLS verified against the
CA bundle botocore would use.  Failures are raised as the botocore exceptions boto3 raises for them, so the
store's retry rules apply unchanged.  Through a proxy it does not go at all: `usable` says so, and the caller
stays on boto3.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import threading
import urllib.parse
import urllib.request

import botocore.exceptions
import botocore.httpsession

#: Idle connections kept per host; more are closed when they come back.
MAX_IDLE = 64


class Answer:
    """A response whose body has not been read yet; `read` or `discard` exactly once."""

    def __init__(self, pool: HostConnections, connection: http.client.HTTPConnection,
                 response: http.client.HTTPResponse, where: str) -> None:
        self._pool = pool
        self._connection = connection
        self._response = response
        self._where = where
        self.status = response.status
        self.length = response.length  # Content-Length (None if the server sent none)

    def read(self) -> bytes:
        """The whole body; the connection goes back to the pool once it has been read to its end."""
        try:
            data = self._response.read()
        except BaseException as exc:
            self._connection.close()
            raise _as_botocore(exc, self._where)
        self._pool.put(self._connection, self._response)
        return data

    def discard(self) -> bytes:
        """Drop the body and the connection (cheaper than reading a body nobody wants); b""."""
        self._connection.close()
        return b""


class HostConnections:
    """Kept-alive connections to one scheme://host:port, each used by one request at a time."""

    def __init__(self, scheme: str, host: str, port: int | None, timeout: float) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self._context = _tls_context() if scheme == "https" else None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """(connection, whether it was used before)."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                if self._context is not None:
                    return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                       context=self._context), False
                return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout), False
            if _still_open(connection):
                return connection, True
            connection.close()

    def put(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        if response.will_close:
            connection.close()
            return
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(connection)
                return
        connection.close()

    def get(self, target: str, headers: dict[str, str], where: str) -> Answer:
        """Send GET `target` (path?query); `where` names the request in errors (never the signed query)."""
        while True:
            connection, reused = self._take()
            try:
                connection.request("GET", target, headers=headers)
                response = connection.getresponse()
            except (ConnectionError, http.client.BadStatusLine) as exc:
                connection.close()
                if reused:  # the server closed this kept-alive connection meanwhile: once more on a new one
                    continue
                raise _as_botocore(exc, where)
            except BaseException as exc:
                connection.close()
                raise _as_botocore(exc, where)
            return Answer(self, connection, response, where)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def direct_connection_possible(url: str) -> bool:
    """False if a proxy from the environment applies to `url` (requests must then go through boto3)."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    return parts.scheme not in proxies or bool(urllib.request.proxy_bypass(parts.hostname or ""))


def _tls_context() -> ssl.SSLContext:
    """Verification against the bundle botocore uses: AWS_CA_BUNDLE, else its default (certifi's)."""
    return ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE")
                                      or botocore.httpsession.get_cert_path(True))


def _still_open(connection: http.client.HTTPConnection) -> bool:
    """A kept-alive socket with something to read (EOF, mostly) was closed by the server: not reusable."""
    sock = connection.sock
    if sock is None:
        return True  # never connected: connects on first use
    poller = select.poll()  # not select(): it fails on descriptors past 1023
    try:
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


def _as_botocore(exc: BaseException, where: str) -> BaseException:
    """The botocore exception boto3 would raise for this failure (TLS errors stay `ssl.SSLError`, and what is
    not a network failure stays itself).  Raised while `exc` is handled, so `exc` is its context."""
    if isinstance(exc, http.client.IncompleteRead):
        return botocore.exceptions.IncompleteReadError(actual_bytes=len(exc.partial),
                                                       expected_bytes=len(exc.partial) + (exc.expected or 0))
    if isinstance(exc, ssl.SSLError) or not isinstance(exc, (OSError, http.client.HTTPException)):
        return exc
    if isinstance(exc, socket.timeout):
        return botocore.exceptions.ReadTimeoutError(endpoint_url=where, error=exc)
    if isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
        return botocore.exceptions.EndpointConnectionError(endpoint_url=where, error=exc)
    return botocore.exceptions.ConnectionClosedError(endpoint_url=where, error=exc)
