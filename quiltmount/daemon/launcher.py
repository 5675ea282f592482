"""Starting a mount in the background: its options, the daemon process and the ready pipe.

`quiltmount mount` (without --foreground) starts `python -m quiltmount.daemon OPTIONS-JSON FD` in a new
session and waits on a pipe: the daemon writes `READY` once the mountpoint answers, or `ERROR: <reason>`
(one line) if it could not mount; while it prepares (indexing a large package revision) it writes a `WORKING`
beat every few seconds.  So the command exits 0 only when the mount is live.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from quiltmount.errors import UserError
from quiltmount.paths import default_log_file
from quiltmount.daemon.notify import notify
from quiltmount.daemon.process import create_log_file
from quiltmount.storage import Source
from quiltmount.units import PART_WORKERS

#: Seconds the parent waits for the daemon's word (READY or an error), or for its next WORKING beat.
READY_TIMEOUT = 60.0
READY = "READY"
ERROR = "ERROR: "
WORKING = b"WORKING"
WORKING_INTERVAL = 5.0


@dataclass
class MountOptions:
    """Everything the daemon needs to mount, sent to it as JSON on its command line (no secrets: see
    `api_key_env`)."""

    source: Source  # parsed once, by the command; the package of --package already in it
    mountpoint: str
    #: SOURCE exactly as given: the mount's name in the kernel's table, which mount(8) and systemd compare with
    #: an fstab line's to tell whether it is mounted ("": `source.url`).
    source_argument: str = ""
    read_only: bool = False
    as_of: float | None = None  # --as-of, in Unix seconds: the bucket as it was then, read-only
    cache_dir: str | None = None
    disk_cache_size: int | None = None  # None: the shared cache's cap; 0: no disk cache for this mount
    disk_cache_dir: str | None = None  # None: paths.disk_cache_dir()
    memory_cache_size: int = 512 << 20
    metadata_ttl: float = 10.0
    negative_metadata_ttl: float | None = None  # None: 1 s, or metadata_ttl if shorter (fs/tree.py)
    uid: int | None = None
    gid: int | None = None
    # None: 0644 and 0755; under --posix-metadata, bucket objects and directories that keep no mode show s3fs's
    # 0640 and 0750 instead (its get_mode), while the views (.packages, .search) keep 0644 and 0755.
    file_mode: int | None = None
    dir_mode: int | None = None
    allow_other: bool = False
    log_file: str | None = None
    log_level: str = "INFO"
    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    sync_on_close: bool = False
    upload_attempts: int = 5
    s3_timeout: int = 10
    search_limit: int = 1000
    kernel_cache_entries: int = 65_536
    quilt_credentials: bool = False
    api_key_env: str | None = None  # the *name* of the variable: the key itself never enters argv or a file
    noexec: bool = False  # the kernel's noexec mount flag (nosuid and nodev are always set)
    stop_timeout: float = 60.0  # after SIGTERM/SIGINT/SIGHUP: seconds left to pending uploads (see stopping.py)
    posix_metadata: bool = False  # modes, owners, times, symlinks, xattrs in object metadata, as s3fs (fs/posixtree.py)
    # Threads of each pool:
    fetch_workers: int = 16  # ranged GETs: read-ahead and cache misses
    lookup_workers: int = 8  # HEADs of names missing from a listing
    hash_workers: int = min(4, os.cpu_count() or 1)  # SHA-256 of package entries as they are read
    upload_workers: int = 4  # files uploaded at once
    part_workers: int = PART_WORKERS  # parts of uploads and copies in flight per bucket

    @property
    def log_path(self) -> str:
        """--log-file, or the default log of this mountpoint."""
        return self.log_file or default_log_file(os.path.abspath(self.mountpoint))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> MountOptions:
        fields = json.loads(text)
        return cls(**{**fields, "source": Source(**fields["source"])})


def start_background(options: MountOptions) -> int:
    """Start the daemon in a new session; return its pid once the mount is live, or raise `UserError` with
    its reason if it could not mount."""
    read_fd, write_fd = os.pipe()
    log_file = options.log_path
    create_log_file(log_file, chosen=options.log_file is not None)
    with open(log_file, "ab") as stderr_sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "quiltmount.daemon", options.to_json(), str(write_fd)],
            pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr_sink,
            start_new_session=True, cwd="/", close_fds=True,
        )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        text = await_word(pipe, READY_TIMEOUT)
    if text is None:
        process.kill()
        raise UserError(f"the mount did not become ready within {READY_TIMEOUT:.0f} s (log: {log_file})")
    if text == READY:
        return process.pid
    if text.startswith(ERROR):
        raise UserError(text[len(ERROR):])
    code = process.wait(timeout=10)
    raise UserError(f"the mount daemon exited with status {code} before mounting (log: {log_file})")


def await_word(pipe: IO[bytes], timeout: float) -> str | None:
    """The daemon's final word on the ready pipe ('' if it closed the pipe without one), or None once it has
    been silent for `timeout` seconds; each WORKING beat starts the wait again."""
    message = b""
    deadline = time.monotonic() + timeout
    while not message.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([pipe], [], [], remaining)[0]:
            return None
        chunk = os.read(pipe.fileno(), 4096)
        if not chunk:
            break
        message += chunk
        while message.startswith(WORKING + b"\n"):
            message = message[len(WORKING) + 1:]
            deadline = time.monotonic() + timeout
    return message.decode(errors="replace").strip()


class ReadySignal:
    """The daemon's side of the ready pipe (None in the foreground), and systemd's readiness notification
    (`notify`: only where NOTIFY_SOCKET is set, i.e. `mount --foreground` in a `Type=notify` unit)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self._lock = threading.Lock()

    def ready(self, status: str = "mounted") -> None:
        notify("READY=1", f"STATUS={status}")
        self._send(READY)

    def fail(self, reason: str) -> None:
        notify(f"STATUS={reason}")
        self._send(ERROR + reason)

    def _send(self, message: str) -> None:
        """The final word: the pipe is closed after it."""
        with self._lock:
            if self.fd is None:
                return
            try:
                os.write(self.fd, (message.replace("\n", " ") + "\n").encode())
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """While the body runs, tell the parent every few seconds that the daemon is still preparing (indexing
        a large package revision before mounting it): the parent waits as long as these keep coming."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(WORKING_INTERVAL):
                with self._lock:
                    if self.fd is None:
                        return
                    try:
                        os.write(self.fd, WORKING + b"\n")
                    except OSError:
                        return

        thread = threading.Thread(target=beat, name="working", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
