"""Stopping a mount on SIGTERM, SIGINT or SIGHUP: unmount, finish the pending uploads within
`--stop-timeout`, report what did not land, exit.

Left to their defaults these signals lose the report and may lose the wait: Python's SIGTERM and SIGHUP
kill the process where it stands, its SIGINT raises KeyboardInterrupt wherever the main thread is, and while
the FUSE loop runs libfuse's own handlers end the loop but make it return an error (the stop then reads as
a failed mount, exit 1).  So the daemon blocks them in its first thread before any other thread exists
(threads inherit the mask; libfuse's workers block every signal anyway) and takes them in one thread with
sigwait, whatever thread or phase they arrive in:

- before the mount is live: the daemon says why (ready pipe, systemd) and exits 1; nothing was served;
- while mounted: STOPPING=1 to systemd, then a lazy unmount (`fusermount3 -u -z`): the mountpoint is
  released at once, files still open keep working until closed, and the FUSE loop ends when the last one
  is; the daemon finishes the pending uploads as after any unmount, reports, and exits (0, or 1 if files
  are left staged);
- `--stop-timeout` seconds after the signal, or at a second one, the daemon stops waiting: what did not land
  is logged and left in the report `quiltmount umount` reads, and the process exits at once (status 1).
  Every closed file is in the staging journal, so the next mount of the source uploads it, as after a
  crash.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from quiltmount import mountpoint as mp
from quiltmount.daemon.launcher import READY_TIMEOUT, ReadySignal
from quiltmount.daemon.notify import notify
from quiltmount.errors import UserError

log = logging.getLogger("quiltmount")

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


class Stopper:
    """The daemon's stop signals, and the one exit that reports what is still staged."""

    def __init__(self, timeout: float, ready: ReadySignal) -> None:
        self.timeout = timeout
        self._ready = ready
        self._lock = threading.Lock()  # one report: the main thread's, or the one of a stop cut short
        self._reported = False
        self._mountpoint: str | None = None
        self._report: Callable[[bool], int] = lambda unfinished: 0
        self._loop_ended = threading.Event()
        self._stopping = False

    def install(self) -> None:
        """Block the stop signals in this thread, hence in every thread started after it, and take them in a
        thread of their own.  Call before any other thread exists."""
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        threading.Thread(target=self._run, name="stop-signals", daemon=True).start()

    def serving(self, mountpoint: str, report: Callable[[bool], int]) -> None:
        """The FUSE loop is about to mount `mountpoint`.  `report(unfinished)` logs and leaves for `umount`
        what is still staged (`unfinished`: uploads still running are abandoned) and returns how many files."""
        with self._lock:
            self._mountpoint = mountpoint
            self._report = report

    def loop_ended(self) -> None:
        """The FUSE loop returned (after a signal, or an unmount from outside)."""
        self._loop_ended.set()
        self._announce("STATUS=unmounted; finishing uploads")

    def final_report(self) -> int:
        """The main thread's report once the uploads are done; the number of files left staged."""
        with self._lock:
            self._reported = True
            return self._report(False)

    def _announce(self, status: str) -> None:
        with self._lock:
            first, self._stopping = not self._stopping, True
        if first:
            notify("STOPPING=1", status)

    def _run(self) -> None:
        name = signal.Signals(signal.sigwait(STOP_SIGNALS)).name
        deadline = time.monotonic() + self.timeout
        self._announce(f"STATUS={name}: stopping")
        with self._lock:
            mountpoint = self._mountpoint
        if mountpoint is None:
            log.warning("%s before the mount was live: exiting", name)
            self._ready.fail(f"stopped by {name} before the mount was live")
            _exit(1)
        log.info("%s: stopping the mount at %r; pending uploads get %g s more at most (--stop-timeout)", name,
                 mountpoint, self.timeout)
        self._unmount(mountpoint)
        remaining = deadline - time.monotonic()
        if remaining > 0 and signal.sigtimedwait(STOP_SIGNALS, remaining) is not None:
            log.warning("a second stop signal: not waiting for the uploads any longer")
        else:
            log.warning("--stop-timeout (%g s) is over: not waiting for the uploads any longer", self.timeout)
        with self._lock:
            if self._reported:  # the main thread is done with the uploads and exits by itself
                return
            left = self._report(True)
        _exit(1 if left else 0)

    def _unmount(self, mountpoint: str) -> None:
        """Detach the mount, which ends the FUSE loop once no file is open in it.  The signal may come just
        before the kernel shows the mount: wait for it as long as going live would."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._loop_ended.is_set() and time.monotonic() < deadline:
            if mp.is_fuse_mount(mountpoint):
                try:
                    mp.unmount(mountpoint, lazy=True)
                except UserError as exc:  # e.g. unmounted from outside meanwhile: the loop ends anyway
                    log.warning("%s", exc)
                return
            time.sleep(0.05)


def _exit(status: int) -> None:
    """Exit now, leaving running uploads behind (an orderly exit would wait for their threads): their files
    are staged and journalled, and the next mount uploads them."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(status)
