"""`quiltmount prefetch PATH...`: fill the disk cache with files, directories or whole revisions of live
mounts, from outside the daemon (no FUSE here).  Re-exported by `quiltmount.api`.

The daemon of each mount does the work (`fs/prefetch.py`, which describes the extended attributes used to
ask it): the paths of one mount form one job there, started path by path, then waited for while its progress
is read.  Once `prefetch` returns, a read of any file it fetched makes no request (unless the disk cache's
cap is smaller than what was prefetched: the oldest blocks make room for the newest).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from quiltmount import state
from quiltmount.errors import QuiltException
from quiltmount.fs.prefetch import ADD, CANCEL, MAX_FAILURES, PREFIX, PROGRESS, WAIT
from quiltmount.units import format_size

if TYPE_CHECKING:
    from tqdm import tqdm

#: How often a waiting `prefetch` reads the progress of its jobs (seconds).
PROGRESS_INTERVAL = 0.25
#: Counts summed over the jobs of several mounts.
COUNTS = ("files", "bytes", "cached", "cached_bytes", "fetched", "fetched_bytes", "skipped", "errors", "requests")


class _Job:
    """The prefetch of one mount's paths: its daemon's job `job_id`."""

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.id = secrets.token_hex(16)
        self.paths: list[str] = []
        self.summary: dict[str, Any] | None = None
        self.failure: QuiltException | None = None

    def name(self, verb: str) -> str:
        return f"{PREFIX}{verb}.{self.id}"

    def ask(self, verb: str, path: str | None = None) -> dict[str, Any]:
        """The daemon's answer (JSON) to `verb`, read on `path` (default: the mount's root)."""
        where = path or self.mountpoint
        try:
            answer = os.getxattr(where, self.name(verb))
        except OSError as exc:
            raise self._error(where, exc) from None
        try:
            found = json.loads(answer)
        except ValueError:
            found = None
        if not isinstance(found, dict):
            raise QuiltException(f"{self.mountpoint}: the mount's daemon answered a prefetch request with "
                                 f"{answer[:100]!r}")
        return found

    def _error(self, path: str, exc: OSError) -> QuiltException:
        if exc.errno == errno.ENOENT:
            return QuiltException(f"{path}: no such file or directory")
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EINVAL):
            return QuiltException(f"{self.mountpoint}: its daemon cannot prefetch (an older quiltmount: remount it "
                                  "with this one)")
        return QuiltException(f"{path}: {os.strerror(exc.errno or errno.EIO)}")

    def add(self, path: str) -> None:
        answer = self.ask(ADD, path)
        if answer.get("error"):
            raise QuiltException(f"cannot prefetch {path}: {answer['error']}")
        self.paths.append(path)

    def wait(self) -> None:
        """Wait for the daemon's summary (on a thread of its own: a FUSE request cannot be interrupted)."""
        try:
            summary = self.ask(WAIT)
        except QuiltException as exc:
            self.failure = exc
            return
        if summary.get("error") and "files" not in summary:  # the job is unknown to the daemon
            self.failure = QuiltException(f"{self.mountpoint}: {summary['error']}")
            return
        for failure in summary.get("failures", ()):
            failure["path"] = os.path.join(self.mountpoint, failure["path"])
        self.summary = summary

    def progress(self) -> dict[str, Any]:
        try:
            return self.ask(PROGRESS)
        except QuiltException:
            return {}

    def cancel(self) -> None:
        try:
            self.ask(CANCEL)
        except QuiltException:
            pass


def _mount_of(path: str, records: list[dict[str, Any]]) -> str:
    """The mountpoint of the live quiltmount mount that holds `path` (a real path)."""
    holders = [record["mountpoint"] for record in records
               if path == record["mountpoint"] or path.startswith(record["mountpoint"].rstrip("/") + "/")]
    if not holders:
        raise QuiltException(f"{path}: not in a quiltmount mount (quiltmount status lists them)")
    return max(holders, key=len)


def prefetch(paths: Sequence[str] | str, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Fill the disk cache with every file under `paths` (files, directories or revisions, e.g.
    `MOUNT/.packages/team/data/latest/`) of live mounts, in their daemons; symlinks inside directories are
    not followed.  Once it returns, reading those files makes no request.

    `progress` is called every `PROGRESS_INTERVAL` seconds with the totals so far (`files`, `bytes` found,
    `files_done`, `bytes_done`, `listing`: whether directories are still being walked).  Returns the summary:
    `files` and `bytes` found, `cached`/`cached_bytes` (already in the cache), `fetched`/`fetched_bytes`
    (bytes downloaded), `skipped` (files that cannot be cached on disk: staged writes, local files),
    `errors` and `failures` (path and reason, at most MAX_FAILURES), `requests` (GETs), `seconds`,
    `disk_limit` (the smallest cap of the disk caches used).  Raises `QuiltException` in one line for a path
    that is missing or not in a mount, or a mount whose disk cache is off; files that fail are counted in
    the summary instead.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise QuiltException("nothing to prefetch: give at least one path")
    started = time.monotonic()
    records = state.live_records()
    wanted: dict[str, list[str]] = {}  # mountpoint -> its paths (real paths)
    for given in paths:
        real = os.path.realpath(given)
        if not os.path.exists(real):
            raise QuiltException(f"{given}: no such file or directory")
        found = wanted.setdefault(_mount_of(real, records), [])
        if real not in found:
            found.append(real)
    jobs = {mountpoint: _Job(mountpoint) for mountpoint in wanted}
    try:
        for mountpoint, job in jobs.items():
            for path in wanted[mountpoint]:
                job.add(path)
        waiters = [threading.Thread(target=job.wait, name="prefetch", daemon=True) for job in jobs.values()]
        for waiter in waiters:
            waiter.start()
        while any(waiter.is_alive() for waiter in waiters):
            if progress is not None:
                _report(jobs.values(), progress)
            _join(waiters, PROGRESS_INTERVAL)
    except BaseException:  # KeyboardInterrupt too: the daemons stop working for nobody
        for job in jobs.values():
            if job.summary is None:
                job.cancel()
        raise
    failed = [job.failure for job in jobs.values() if job.failure is not None]
    if failed:
        raise failed[0]
    summaries = [job.summary for job in jobs.values() if job.summary is not None]
    fatal = [f"{job.mountpoint}: {job.summary['error']}" for job in jobs.values()
             if job.summary is not None and job.summary.get("error")]
    if fatal:
        raise QuiltException(f"prefetch stopped: {fatal[0]}")
    total: dict[str, Any] = {name: sum(int(summary.get(name, 0)) for summary in summaries) for name in COUNTS}
    total["failures"] = [failure for summary in summaries for failure in summary.get("failures", ())][:MAX_FAILURES]
    total["seconds"] = round(time.monotonic() - started, 3)
    total["disk_limit"] = min(int(summary.get("disk_limit", 0)) for summary in summaries)
    total["mounts"] = [job.mountpoint for job in jobs.values()]
    return total


def _report(jobs: Iterable[_Job], progress: Callable[[dict[str, Any]], None]) -> None:
    """One progress report: every job's figures summed."""
    reports = [job.progress() for job in jobs]
    report = {name: sum(int(one.get(name, 0)) for one in reports)
              for name in ("files", "bytes", "files_done", "bytes_done")}
    report["listing"] = any(one.get("listing", True) for one in reports)
    progress(report)


def _join(threads: list[threading.Thread], timeout: float) -> None:
    """Wait until every thread is done, or `timeout` seconds (in the main thread, Ctrl-C interrupts it)."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def format_summary(summary: dict[str, Any]) -> str:
    """`prefetched 10000 files (9.8 MiB) in 3.2 s: 10000 fetched, 0 already cached` (and what was skipped or
    failed)."""
    line = (f"prefetched {summary['files']} files ({format_size(summary['bytes'])}) in {summary['seconds']:.1f} s: "
            f"{summary['fetched']} fetched, {summary['cached']} already cached")
    if summary["skipped"]:
        line += f", {summary['skipped']} not cacheable (staged or local files)"
    if summary["errors"]:
        line += f", {summary['errors']} failed"
    return line


def capacity_warning(summary: dict[str, Any]) -> str | None:
    """A warning when the files prefetched do not fit in the disk cache's cap (the oldest were evicted)."""
    needed = summary["cached_bytes"] + summary["fetched_bytes"]
    if summary["disk_limit"] and needed > summary["disk_limit"]:
        return (f"{format_size(needed)} prefetched, more than the disk cache holds ({format_size(summary['disk_limit'])}"
                "): the first files were evicted again (quiltmount mount --disk-cache-size SIZE sets its cap)")
    return None


class ProgressBar:
    """A tqdm bar (bytes done of bytes found, and files) for the command line, on stderr."""

    def __init__(self) -> None:
        self._bar: tqdm | None = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def update(self, report: dict[str, Any]) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(desc="prefetching", unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)
        self._bar.total = int(report["bytes"])
        self._bar.update(int(report["bytes_done"]) - self._bar.n)
        found = f"{report['files']}+" if report["listing"] else f"{report['files']}"
        self._bar.set_postfix_str(f"{report['files_done']}/{found} files", refresh=False)
        self._bar.refresh()
