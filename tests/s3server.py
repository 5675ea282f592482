"""A local, in-process S3 server for quiltmount's tests and benchmarks.

This module wraps moto's ``ThreadedMotoServer`` and fixes one performance
problem of stock moto 5.x that matters a lot for a FUSE filesystem, which
reads objects almost exclusively with ranged GETs.

The problem
-----------
For ``GET /bucket/key`` with ``Range: bytes=a-b`` moto 5.x does::

    S3Response.get_object()      -> returns (200, headers, key.value)
    FakeKey.value                -> reads the WHOLE object from its buffer
    S3Response.key_response()    -> _handle_range_header(...) slices it

So every ranged GET of a 512 MiB object reads (and copies) 512 MiB, under the
key's lock, to return 8 MiB.  Eight parallel 8 MiB reads crawl along at
~24 MB/s instead of hundreds of MB/s.

The fix (:func:`install_range_fix`)
-----------------------------------
Only server-side moto code is patched; boto3/botocore are never touched.

1. ``S3Response.get_object`` is wrapped: when the request carries a non-empty
   ``Range`` header (and no ``partNumber``), a thread-local flag is set for
   the duration of the call.
2. ``FakeKey.value``'s getter is replaced: while that flag is set it returns a
   :class:`LazyKeyValue` instead of ``bytes``.  It has the same length as the
   object, and slicing it reads just that slice from the key's buffer (under
   the key's lock, exactly like the original getter).  Outside of a ranged
   ``get_object`` the original getter runs unchanged.
3. ``S3Response.key_response`` is wrapped: moto's own
   ``_handle_range_header`` does ``len(value)`` and ``value[begin:end + 1]``,
   which now read only the requested bytes.  In every case where moto does
   *not* slice (multi-range ``bytes=0-1,5-6``, unparsable ranges, ``begin >
   end``, ...) the view is still in the response and is turned back into the
   full ``bytes`` before the response leaves moto, so the response is byte
   for byte what stock moto sends.

Because moto's own range code still runs, every header and status code
(``206``, ``Content-Range``, ``Content-Length``, ``ETag``,
``x-amz-version-id``, ``416 InvalidRange``, suffix and open ranges, the
dropping of ``x-amz-checksum-*`` on partial responses, ``If-Match`` ->
``412``, ``If-None-Match`` -> ``304``) is unchanged.  HEAD, plain GET and
``partNumber`` GETs never see the view.

Moto quirks worth knowing (not changed here)
--------------------------------------------
* ``CompleteMultipartUpload`` on an unversioned bucket answers with
  ``x-amz-version-id: null``.
* Objects larger than ``MOTO_S3_DEFAULT_KEY_BUFFER_SIZE`` (5 MiB - 1 KiB by
  default) live in a ``SpooledTemporaryFile`` that has rolled over to disk.

Command line
------------
``python tests/s3server.py [--port N]`` runs a server in the foreground.  The
first line written to stdout is the endpoint URL (flushed immediately); the
server stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import logging
import signal
import sys
import threading
import time
import urllib.request
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.s3.models import FakeKey
from moto.s3.responses import S3Response

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mypy_boto3_s3 import S3Client  # type: ignore[import-not-found]

__all__ = [
    "LazyKeyValue",
    "S3TestServer",
    "install_range_fix",
    "main",
    "range_fix_installed",
    "uninstall_range_fix",
]

#: Dummy credentials accepted by moto.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"

# Name of the attribute (stored on S3Response itself, so that the patch stays
# idempotent even if this module gets imported twice under different names,
# e.g. as ``s3server`` and ``tests.s3server``) holding the original callables.
_PATCH_ATTR = "_quiltmount_range_fix_originals"

# Per-thread flag: "the current thread is inside a ranged S3Response.get_object".
# moto's server is a threading WSGI server, one request per thread.
_tls = threading.local()

# Serialises install/uninstall.
_install_lock = threading.Lock()


# --------------------------------------------------------------------------
# The range fix
# --------------------------------------------------------------------------


class LazyKeyValue:
    """A read-only, bytes-like stand-in for ``FakeKey.value``.

    It supports exactly what moto's ranged-GET code needs from the value:
    ``len()``, truthiness, slicing and indexing.  Slicing reads only the
    requested bytes from the key's ``_value_buffer`` (holding the key's lock,
    since the buffer's file position is shared), instead of the whole object.

    The view keeps a strong reference to the key, so the buffer stays open
    even if the object is overwritten while the request is in flight (moto
    only closes buffers explicitly on reset / table-bucket deletion).
    """

    __slots__ = ("_key", "_size")

    def __init__(self, key: FakeKey) -> None:
        self._key = key
        self._size: int = key.size

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __repr__(self) -> str:
        return f"<LazyKeyValue {self._key.name!r} size={self._size}>"

    def _read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` from the key's buffer."""
        if length <= 0:
            return b""
        key = self._key
        with key.lock:
            buf = key._value_buffer
            buf.seek(offset)
            return bytes(buf.read(length))

    def __getitem__(self, item: int | slice) -> Any:
        if isinstance(item, slice):
            start, stop, step = item.indices(self._size)
            if step != 1:
                return self.tobytes()[item]
            return self._read(start, stop - start)
        index = item.__index__()
        if index < 0:
            index += self._size
        if not 0 <= index < self._size:
            raise IndexError("index out of range")
        return self._read(index, 1)[0]

    def tobytes(self) -> bytes:
        """The whole value, exactly as moto's original getter returns it."""
        return _original_value_getter()(self._key)

    __bytes__ = tobytes


def _originals() -> dict[str, Any] | None:
    return S3Response.__dict__.get(_PATCH_ATTR)


def _original_value_getter() -> Callable[[FakeKey], bytes]:
    originals = _originals()
    if originals is None:  # fix was uninstalled while a view was alive
        return FakeKey.value.fget  # type: ignore[attr-defined,no-any-return]
    return originals["value"].fget  # type: ignore[no-any-return]


def range_fix_installed() -> bool:
    """Whether :func:`install_range_fix` is currently in effect."""
    return _originals() is not None


def _is_ranged_request(response: S3Response) -> bool:
    """Mirror moto's own test in ``S3Response.key_response`` for range handling."""
    headers = getattr(response, "headers", None)
    if not headers or "range" not in headers or headers["range"] == "":
        return False
    # GET ?partNumber=N returns key.value without going through the range code.
    querystring = getattr(response, "querystring", None) or {}
    return "partNumber" not in querystring


def install_range_fix() -> None:
    """Make moto's ranged GETs read only the requested slice of an object.

    Patches moto's server-side S3 code (``FakeKey.value``,
    ``S3Response.get_object`` and ``S3Response.key_response``; see the module
    docstring for how).  Safe to call any number of times, from any thread,
    before or after a server is started: patches take effect on the next
    request.
    """
    with _install_lock:
        if range_fix_installed():
            return

        orig_value: property = FakeKey.__dict__["value"]
        orig_get_object = S3Response.__dict__["get_object"]
        orig_key_response = S3Response.__dict__["key_response"]
        orig_fget: Callable[[FakeKey], bytes] = orig_value.fget  # type: ignore[assignment]

        def value_getter(self: FakeKey) -> Any:
            if getattr(_tls, "lazy_value", False):
                return LazyKeyValue(self)
            return orig_fget(self)

        @functools.wraps(orig_get_object)
        def get_object(self: S3Response, *args: Any, **kwargs: Any) -> Any:
            if not _is_ranged_request(self):
                return orig_get_object(self, *args, **kwargs)
            previous = getattr(_tls, "lazy_value", False)
            _tls.lazy_value = True
            try:
                return orig_get_object(self, *args, **kwargs)
            finally:
                _tls.lazy_value = previous

        @functools.wraps(orig_key_response)
        def key_response(self: S3Response, *args: Any, **kwargs: Any) -> Any:
            result = orig_key_response(self, *args, **kwargs)
            if (
                isinstance(result, tuple)
                and len(result) == 3
                and isinstance(result[2], LazyKeyValue)
            ):
                # moto did not slice (multi-range, unparsable range, ...):
                # send the full value, as stock moto does.
                status, headers, body = result
                return status, headers, body.tobytes()
            return result

        setattr(
            S3Response,
            _PATCH_ATTR,
            {
                "value": orig_value,
                "get_object": orig_get_object,
                "key_response": orig_key_response,
            },
        )
        FakeKey.value = property(  # type: ignore[assignment,method-assign]
            value_getter, orig_value.fset, orig_value.fdel, orig_value.__doc__
        )
        S3Response.get_object = get_object  # type: ignore[method-assign]
        S3Response.key_response = key_response  # type: ignore[method-assign]


def uninstall_range_fix() -> None:
    """Undo :func:`install_range_fix` (for before/after comparisons); idempotent."""
    with _install_lock:
        originals = _originals()
        if originals is None:
            return
        FakeKey.value = originals["value"]  # type: ignore[method-assign]
        S3Response.get_object = originals["get_object"]  # type: ignore[method-assign]
        S3Response.key_response = originals["key_response"]  # type: ignore[method-assign]
        delattr(S3Response, _PATCH_ATTR)


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


class _MotoServer(ThreadedMotoServer):
    """``ThreadedMotoServer`` that reports bind errors instead of hanging.

    Stock ``ThreadedMotoServer.start()`` waits forever for a ready event that
    is never set when ``make_server`` raises (e.g. port already in use).
    """

    def __init__(self, ip_address: str, port: int) -> None:
        super().__init__(ip_address=ip_address, port=port, verbose=False)
        self.startup_error: BaseException | None = None

    def _server_entry(self) -> None:
        try:
            super()._server_entry()
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self.startup_error = exc
            self._server_ready_event.set()

    def start_and_wait(self, timeout: float) -> None:
        """Start the thread; raise if the socket could not be bound in time."""
        self._thread = threading.Thread(
            target=self._server_entry, name=f"moto-s3-{self._port}", daemon=True
        )
        self._thread.start()
        if not self._server_ready_event.wait(timeout):
            raise TimeoutError("moto server did not start in time")
        error = self.startup_error
        if error is not None:
            self._thread.join(timeout)
            if isinstance(error, OSError):
                raise error
            # werkzeug prints the bind error to stderr and calls sys.exit(1).
            raise OSError(
                f"could not listen on {self._ip_address}:{self._port} "
                f"({type(error).__name__}: {error}; see stderr)"
            ) from error

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._thread.join()
        self._thread = None


class S3TestServer:
    """A moto S3 server on 127.0.0.1 in a background thread, with the range fix.

    Use as a context manager::

        with S3TestServer() as server:
            s3 = server.client()
            s3.create_bucket(Bucket="b")
            ...
            server.reset()          # wipe all moto state

    The server runs in this process, so tests can also inspect moto's backend
    (``moto.s3.models.s3_backends``) directly.

    :param host: address to listen on.
    :param port: port to listen on; ``0`` (default) picks a free one.
    :param range_fix: apply :func:`install_range_fix` (default ``True``).
    :param quiet: silence werkzeug's per-request log lines on stderr.
    :param start_timeout: seconds to wait for the server to answer HTTP.
    """

    #: How many times to retry startup when the port was picked automatically.
    START_ATTEMPTS = 5

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        range_fix: bool = True,
        quiet: bool = True,
        start_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._range_fix = range_fix
        self._quiet = quiet
        self._start_timeout = start_timeout
        self._server: _MotoServer | None = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> S3TestServer:
        """Start the server and return once it answers HTTP requests."""
        if self._server is not None:
            return self
        if self._range_fix:
            install_range_fix()
        if self._quiet:
            logging.getLogger("werkzeug").setLevel(logging.ERROR)

        attempts = 1 if self._requested_port else self.START_ATTEMPTS
        last_error: BaseException | None = None
        for _ in range(attempts):
            # Port 0: the listening socket itself binds an ephemeral port, so
            # there is no window in which another process can grab a port we
            # probed earlier.  The retry covers anything else that goes wrong.
            server = _MotoServer(self.host, self._requested_port)
            try:
                server.start_and_wait(self._start_timeout)
            except OSError as exc:
                last_error = exc
                server.stop()
                continue
            self._server = server
            self._port = int(server.get_host_and_port()[1])
            break
        else:
            raise RuntimeError(
                f"could not start moto server on {self.host}:{self._requested_port}"
            ) from last_error

        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        while True:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
            try:
                conn.request("GET", "/")
                conn.getresponse().read()
                return  # any HTTP answer will do
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                conn.close()

    def stop(self) -> None:
        """Stop the server; idempotent.  The range fix stays installed."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> S3TestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- accessors ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    def client(self, **kwargs: Any) -> S3Client:
        """A boto3 S3 client for this server (path-style, dummy credentials).

        Keyword arguments are passed on to ``boto3.client`` and override the
        defaults (e.g. ``config=botocore.config.Config(...)``).
        """
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region_name": REGION,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "config": Config(s3={"addressing_style": "path"}),
        }
        options.update(kwargs)
        return boto3.client("s3", **options)  # type: ignore[no-any-return]

    def reset(self) -> None:
        """Wipe all moto state (``POST /moto-api/reset``)."""
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset", data=b"", method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            if response.status != 200:
                raise RuntimeError(f"moto reset failed: HTTP {response.status}")

    def __repr__(self) -> str:
        where = self.endpoint_url if self._port is not None else "not started"
        return f"<S3TestServer {where}>"


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run a server in the foreground until SIGTERM/SIGINT.

    Prints the endpoint URL as the first line of stdout.
    """
    parser = argparse.ArgumentParser(
        description="Run a local moto S3 server (with the ranged-GET fix)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument(
        "--port", type=int, default=0, help="default: pick a free port"
    )
    parser.add_argument(
        "--no-range-fix",
        action="store_true",
        help="run stock moto (slow ranged GETs), for comparisons",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="log every request to stderr"
    )
    args = parser.parse_args(argv)

    if args.verbose:
        logging.basicConfig(level=logging.INFO)

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    server = S3TestServer(
        args.host,
        args.port,
        range_fix=not args.no_range_fix,
        quiet=not args.verbose,
    )
    with server:
        print(server.endpoint_url, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
