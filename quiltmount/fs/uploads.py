"""The upload queue of write-back: closed staged files go to the store in the background.

`Uploader` runs uploads in a bounded pool with retries and backoff; an upload that keeps failing keeps its
staged bytes and its error (journalled; shown by `status`, reported by `umount`) and is tried again while the
mount lives.  It knows staged files only: what an upload sends (`put`) and what happens once it has landed
(`on_uploaded`) are its owner's.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from quiltmount.errors import StorageError
from quiltmount.fs.staging import FAILED, StagedFile, StagingArea
from quiltmount.retry import call_with_retries
from quiltmount.storage.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

UPLOADED = "uploaded"  # in memory only: the journal entry is gone once a file is uploaded


@dataclass
class _Upload:
    """One submission of a staged file (a file re-opened before its upload started is submitted again)."""

    staged: StagedFile
    tries: int
    future: Future = field(default_factory=Future)
    started: bool = False
    cancelled: bool = False


@dataclass
class _Failure:
    """A staged file whose upload failed: it is tried again at `retry_at` (monotonic time)."""

    staged: StagedFile
    pause: float
    retry_at: float


class Uploader:
    """Uploads closed staged files: one task per file, `attempts` tries with exponential backoff.

    A file whose tries all fail is reported failed (status, fsync, umount) and keeps its staged bytes; while
    the mount lives it is tried again, once per round, the pause continuing to double up to
    MAX_RETRY_PAUSE, so it lands once the fault clears.  `drain` (unmount) stops those rounds.
    """

    MAX_RETRY_PAUSE = 60.0

    def __init__(self, store: ObjectStore, staging: StagingArea, *, workers: int = 4, attempts: int = 5,
                 backoff: float = 0.5, on_uploaded: Callable[[StagedFile, ObjectInfo], bool] | None = None,
                 put: Callable[[StagedFile], ObjectInfo] | None = None) -> None:
        """`put` sends one staged file (default: the store's `put_file` of its bytes)."""
        self.store = store
        self.staging = staging
        self._put = put or (lambda staged: store.put_file(staged.key, staging.data_path(staged)))
        self.attempts = attempts
        self.backoff = backoff
        self.on_uploaded = on_uploaded
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload")
        self._lock = threading.Condition()  # also wakes the retry thread when a failure is recorded
        self._uploads: dict[str, _Upload] = {}  # staged id -> its current submission
        self._failed: dict[str, _Failure] = {}
        self._stopping = False
        self.retries = 0
        self.uploaded = 0
        threading.Thread(target=self._retry_failed, name="upload-retry", daemon=True).start()

    def submit(self, staged: StagedFile) -> Future:
        with self._lock:  # registered before the task can run
            self._failed.pop(staged.id, None)
            return self._start(staged, self.attempts)

    def _start(self, staged: StagedFile, tries: int) -> Future:
        """Queue an upload of `staged` (the caller holds the lock)."""
        upload = _Upload(staged, tries)
        self._uploads[staged.id] = upload
        self._pool.submit(self._run, upload)
        return upload.future

    def _run(self, upload: _Upload) -> None:
        staged = upload.staged
        with self._lock:
            if upload.cancelled:
                upload.future.set_result(None)
                return
            upload.started = True
        try:
            info = self._upload_with_retries(staged, upload.tries)
            # on_uploaded says whether the staged bytes can go: not while a new writer has the file open.
            if self.on_uploaded is None or self.on_uploaded(staged, info):
                staged.state = UPLOADED
                self.staging.remove(staged)
            log.info("uploaded %r", staged.key)
        except StorageError as exc:
            self._record_failure(staged, upload.tries, exc)
            self._finish(upload)
            upload.future.set_exception(exc)
            return
        except BaseException as exc:
            self._finish(upload)
            upload.future.set_exception(exc)
            raise
        with self._lock:
            self.uploaded += 1
            self._failed.pop(staged.id, None)
        self._finish(upload)
        upload.future.set_result(None)

    def _record_failure(self, staged: StagedFile, tries: int, exc: StorageError) -> None:
        """Keep the bytes, journal the error, and schedule the next round (the backoff keeps doubling)."""
        staged.attempts += tries
        self.staging.set_state(staged, FAILED, str(exc))
        with self._lock:
            previous = self._failed.get(staged.id)
            pause = min(previous.pause * 2 if previous else self.backoff * 2 ** self.attempts, self.MAX_RETRY_PAUSE)
            self._failed[staged.id] = _Failure(staged, pause, time.monotonic() + pause)
            self._lock.notify_all()
        log.error("upload of %r failed, keeping %r, next try in %.0f s: %s",
                  staged.key, self.staging.data_path(staged), pause, exc)

    def _retry_failed(self) -> None:
        """Thread: start one more try of each failed upload whose pause is over, until `drain`."""
        with self._lock:
            while not self._stopping:
                now = time.monotonic()
                idle = [failure for failure in self._failed.values() if failure.staged.id not in self._uploads]
                for failure in idle:
                    if failure.retry_at <= now:
                        self.retries += 1
                        self._start(failure.staged, 1)
                later = [failure.retry_at - now for failure in idle if failure.retry_at > now]
                self._lock.wait(min(later) if later else None)

    def _finish(self, upload: _Upload) -> None:
        with self._lock:
            if self._uploads.get(upload.staged.id) is upload:
                del self._uploads[upload.staged.id]
            self._lock.notify_all()  # a failure recorded just before is now idle: the retry thread plans it

    def _upload_with_retries(self, staged: StagedFile, tries: int) -> ObjectInfo:
        def before_retry(exc: Exception, attempt: int, pause: float) -> None:
            with self._lock:
                self.retries += 1
            log.warning("upload of %r failed (attempt %d of %d), retrying in %.1f s: %s",
                        staged.key, attempt, tries, pause, exc)

        return call_with_retries(lambda: self._put(staged), attempts=tries, pause=self.backoff,
                                 retry_on=_worth_another_try, before_retry=before_retry)

    def cancel(self, staged: StagedFile) -> bool:
        """Stop a queued upload (and the retries of a failed one), or wait for one already running.

        True if the staged bytes are still there to reuse (never submitted, queued, or failed); False if an
        upload ran and removed them.
        """
        with self._lock:
            self._failed.pop(staged.id, None)
            upload = self._uploads.get(staged.id)
            if upload is None:
                return staged.state != UPLOADED
            if not upload.started:
                upload.cancelled = True
                del self._uploads[staged.id]
                return True
        try:
            upload.future.result()
        except StorageError:
            with self._lock:  # it failed meanwhile: no more rounds for it
                self._failed.pop(staged.id, None)
            return True  # failed: the bytes are still staged
        return False

    def still_to_land(self, staged: StagedFile) -> bool:
        """After a change to what `staged`'s upload sends (its attributes): wait for an upload of it that is
        running (it may have read the file before the change), then say whether an upload is still to come.

        True: none has landed since (queued, failed, not submitted yet, or landed but kept for a writer that
        re-opened the file), so the next one sends the change; False: one landed, without it."""
        with self._lock:
            upload = self._uploads.get(staged.id)
        if upload is not None and upload.started:
            try:
                upload.future.result()
            except StorageError:
                return True
        return staged.state != UPLOADED

    def wait(self, staged: StagedFile, timeout: float | None = None) -> None:
        """Block until `staged` is uploaded; raise its error (EIO) if the upload failed."""
        with self._lock:
            upload = self._uploads.get(staged.id)
            failed = self._failed.get(staged.id)
        if upload is not None:
            upload.future.result(timeout)  # raises the StorageError of a failed upload
        elif failed is not None:
            raise StorageError(f"upload of {staged.key} failed: {failed.staged.error}", errno.EIO)

    def pending(self) -> int:
        with self._lock:
            return len(self._uploads)

    def has_upload(self, staged: StagedFile) -> bool:
        with self._lock:
            return staged.id in self._uploads

    def unfinished(self) -> list[StagedFile]:
        """Files whose upload is queued or running."""
        with self._lock:
            return [upload.staged for upload in self._uploads.values()]

    def failures(self) -> list[StagedFile]:
        with self._lock:
            return [failure.staged for failure in self._failed.values()]

    def _stop_retrying(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()

    def drain(self, timeout: float | None = None) -> list[StagedFile]:
        """Unmounting: stop the rounds of failed uploads, wait for every queued upload (at most `timeout`
        seconds), and return the staged files that are still not in S3: failed, or still running when the
        timeout cut the wait short."""
        self._stop_retrying()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                futures = [upload.future for upload in self._uploads.values()]
            if not futures:
                break
            for future in futures:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    future.result(remaining)
                except StorageError:
                    pass
                except TimeoutError:
                    return self.failures() + self.unfinished()
        return self.failures()

    def close(self) -> None:
        self._stop_retrying()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _worth_another_try(exc: Exception) -> bool:
    """Any failure of the store, but one saying that something is missing (ENOENT): it would be again."""
    return isinstance(exc, StorageError) and exc.errno != errno.ENOENT
