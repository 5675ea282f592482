"""The daemon process's own set-up: its private log file and logging, malloc tuning, its RSS for `status`."""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import signal
import sys
from typing import TextIO

from quiltmount.errors import UserError
from quiltmount.names import one_line

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc mallopt parameters


def create_log_file(log_file: str, *, chosen: bool) -> None:
    """The log names keys and paths: a new log file (and a new default log directory) is private to the
    user.  The directory of a log `chosen` with --log-file must exist: creating it would make directories
    anywhere a typo points (as root, anywhere at all)."""
    directory = os.path.dirname(log_file)
    if not chosen:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    elif not os.path.isdir(directory):
        reason = "is not a directory" if os.path.lexists(directory) else "does not exist"
        raise UserError(f"--log-file {log_file}: {directory} {reason}")
    os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))


class OneLineFormatter(logging.Formatter):
    """Each message on one line of the log: a line break in it (in a name, or in an error that quotes one)
    is written escaped, so that no key or file name can forge a log line.  Names are logged quoted (%r)
    anyway; this also covers error messages that name them.  A traceback after the message keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))


def setup_logging(log_file: str, level: str, also_stderr: bool, *, chosen: bool) -> None:
    """Log to `log_file` (`chosen` with --log-file: see `create_log_file`), and to stderr if `also_stderr`."""
    create_log_file(log_file, chosen=chosen)
    handlers: list[logging.Handler] = [logging.FileHandler(log_file)]
    if also_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    logging.getLogger("mfusepy").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)


#: The log file as faulthandler writes into it (open for the life of the process).
_thread_dump_stream: TextIO | None = None


def dump_threads_on_sigusr1(log_file: str) -> None:
    """`kill -USR1 PID` appends the stack of every thread to the log and the daemon carries on: a mount that
    seems stuck (an unmount that does not end, a read that hangs) can be looked into where it stands."""
    global _thread_dump_stream
    _thread_dump_stream = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 - for the process's life
    faulthandler.register(signal.SIGUSR1, file=_thread_dump_stream, all_threads=True)


def bound_malloc() -> None:
    """Keep freed buffers from inflating RSS.  Upload parts and whole small files (up to 8 MiB) come and go
    all the time; with glibc's default dynamic mmap threshold they soon land in per-thread heaps that never
    shrink, and RSS drifts far above the cache budget (measured: 371 MiB instead of ~210 under the soak
    test's load).  A fixed 4 MiB threshold keeps those in mmaps, returned when freed, while the 1 MiB
    cache blocks stay in the heap (an mmap per block costs cold reads ~15%).  A fixed threshold also fixes
    the trim threshold, at 128 KiB unless set: every freed read buffer then handed its pages back and the
    next one faulted them in again (measured: ~180 page faults per random 4 KiB-1 MiB read, ~0.3 ms of
    CPU per read; with 8 MiB ~45 faults remain)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(M_MMAP_THRESHOLD, 4 << 20)
    libc.mallopt(M_ARENA_MAX, 4)
    libc.mallopt(M_TRIM_THRESHOLD, 8 << 20)


def rss_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
