"""Write-back: files written into a bucket mount are staged on local disk and uploaded in the background.

`Uploader` runs uploads in a bounded pool with retries and backoff; an upload that keeps failing keeps its
staged bytes and its error (shown by `status`, reported by `umount`).  `WritableBucketTree` lays the staged
files over the bucket's tree, so stat, reads and listings show the local state until the upload lands
(read-your-writes), and implements create/write/truncate/unlink/mkdir/rmdir/rename on the bucket.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from quiltmount.errors import NotFound, StorageError
from quiltmount.fs.node import FileHandle, Node, Tree
from quiltmount.fs.staging import CLOSED, FAILED, OPEN, StagedFile, StagingArea
from quiltmount.fs.tree import BucketTree
from quiltmount.storage.base import ObjectInfo, ObjectStore, PartUpload

log = logging.getLogger(__name__)

COPY_CHUNK = 8 << 20
MAX_PARTS = 10_000  # S3's limit: a longer sequential write is uploaded after close instead
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
            log.info("uploaded %s", staged.key)
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
        log.error("upload of %s failed, keeping %s, next try in %.0f s: %s",
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
        delay = self.backoff
        for attempt in range(1, tries + 1):
            try:
                return self._put(staged)
            except StorageError as exc:
                if attempt == tries or exc.errno == errno.ENOENT:
                    raise
                with self._lock:
                    self.retries += 1
                log.warning("upload of %s failed (attempt %d of %d), retrying in %.1f s: %s",
                            staged.key, attempt, tries, delay, exc)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

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

    def failures(self) -> list[StagedFile]:
        with self._lock:
            return [failure.staged for failure in self._failed.values()]

    def _stop_retrying(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()

    def drain(self, timeout: float | None = None) -> list[StagedFile]:
        """Unmounting: stop the rounds of failed uploads, wait for every queued upload, and return the
        staged files that are still not in S3."""
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
                    return self.failures() + [StagedFile("?", "?")]
        return self.failures()

    def close(self) -> None:
        self._stop_retrying()
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class DirtyFile:
    """A staged file over a bucket path: open writers, and whether an upload is pending."""

    path: str
    staged: StagedFile
    data_path: str
    writers: int = 0  # changed under the tree's lock
    write_error: str | None = None  # a write failed (e.g. ENOSPC): these bytes must never be uploaded
    modified: bool = True  # bytes changed since the last upload (fsync, or flush with --sync-on-close)

    def size(self) -> int:
        try:
            return os.stat(self.data_path).st_size
        except FileNotFoundError:
            return 0

    def mtime(self) -> float:
        try:
            return os.stat(self.data_path).st_mtime
        except FileNotFoundError:
            return time.time()


@dataclass
class _Stream:
    """A file written sequentially from its start: its complete parts go to S3 while the writer writes, so
    the upload after close has only the tail left.  Any other write pattern drops it (see `wrote`)."""

    upload: PartUpload
    end: int = 0  # bytes written so far, all in order from 0
    parts: int = 0  # parts handed to the upload: bytes [0, parts * upload.part_size) must not change
    lock: threading.Lock = field(default_factory=threading.Lock)


class WriteHandle(FileHandle):
    """An open file descriptor on a staged file."""

    def __init__(self, tree: WritableBucketTree, dirty: DirtyFile, *, writable: bool) -> None:
        self.tree = tree
        self.dirty = dirty
        self.writable = writable
        self.fd = os.open(dirty.data_path, os.O_RDWR if writable else os.O_RDONLY)

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def write(self, data: bytes, offset: int) -> int:
        if not self.writable:
            return super().write(data, offset)
        self.dirty.modified = True
        self.tree.mark_open(self.dirty)
        try:
            written = os.pwrite(self.fd, data, offset)
        except OSError as exc:
            self.dirty.write_error = str(exc)
            raise
        if written != len(data):  # a short write to the staging disk is as bad as a failed one
            self.dirty.write_error = f"short write to the staging area ({written} of {len(data)} bytes)"
            raise OSError(errno.ENOSPC, self.dirty.write_error)
        self.tree.wrote(self.dirty, offset, written)
        return written

    def truncate(self, length: int) -> bool:
        if not self.writable:
            return False
        self.dirty.modified = True
        self.tree.mark_open(self.dirty)
        self.tree.truncated(self.dirty, length)
        try:
            os.ftruncate(self.fd, length)
        except OSError as exc:
            self.dirty.write_error = str(exc)
            raise
        return True

    def flush(self) -> None:
        """close(2) of a descriptor: the bytes so far are complete for the user, so a crash before the
        (asynchronous) release must not lose them: make them durable on disk and journal them as closed."""
        if self.writable:
            os.fdatasync(self.fd)
            self.tree.mark_closed(self.dirty)
            if self.tree.sync_on_close and self.dirty.modified:
                # FUSE's release comes after close(2) has returned: to make close wait, upload here.
                self.tree.sync(self.dirty, writer_open=True)

    def fsync(self) -> None:
        if self.writable:
            os.fsync(self.fd)
        self.tree.sync(self.dirty, writer_open=self.writable)

    def release(self) -> None:
        os.close(self.fd)
        if self.writable:
            self.tree.release_writer(self.dirty)


class WritableBucketTree(Tree):
    """A bucket tree with staged local files laid over it, and the operations that change the bucket."""

    def __init__(self, bucket: BucketTree, staging: StagingArea, *, sync_on_close: bool = False,
                 upload_workers: int = 4, upload_attempts: int = 5) -> None:
        self.bucket = bucket
        self.store = bucket.store
        self.staging = staging
        self.sync_on_close = sync_on_close
        self.uploader = Uploader(self.store, staging, workers=upload_workers, attempts=upload_attempts,
                                 on_uploaded=self._uploaded, put=self._put)
        self._streams: dict[str, _Stream] = {}  # staged id -> parts sent while a sequential writer writes
        self._dirty: dict[str, DirtyFile] = {}
        self._lock = threading.Lock()
        self.stranded: list[StagedFile] = []

    # -- start-up -----------------------------------------------------------------------------------------
    def recover(self) -> int:
        """Upload what a previous daemon staged and closed; report files that were still open."""
        queued = 0
        for staged in self.staging.recover():
            path = staged.key[len(self.bucket.root_prefix):] if staged.key.startswith(self.bucket.root_prefix) else None
            if staged.state == OPEN or path is None:
                log.error("staged file for %s was still open when the daemon stopped: kept at %s, not uploaded",
                          staged.key, self.staging.data_path(staged))
                self.stranded.append(staged)
                continue
            self.staging.set_state(staged, CLOSED)
            with self._lock:
                self._dirty[path] = DirtyFile(path, staged, self.staging.data_path(staged))
            self.uploader.submit(staged)
            queued += 1
        if queued:
            log.info("recovery: uploading %d staged file(s) left by a previous daemon", queued)
        return queued

    # -- reading the overlay ------------------------------------------------------------------------------
    def _dirty_node(self, dirty: DirtyFile) -> Node:
        return Node(is_dir=False, size=dirty.size(), mtime=dirty.mtime())

    def lookup(self, path: str) -> Node:
        with self._lock:
            dirty = self._dirty.get(path)
        if dirty is not None:
            return self._dirty_node(dirty)
        return self.bucket.lookup(path)

    def readdir(self, path: str) -> dict[str, Node]:
        entries = dict(self.bucket.readdir(path))
        prefix = path + "/" if path else ""
        with self._lock:
            local = [dirty for key, dirty in self._dirty.items()
                     if key.startswith(prefix) and "/" not in key[len(prefix):]]
        for dirty in local:
            entries[dirty.path[len(prefix):]] = self._dirty_node(dirty)
        return dict(sorted(entries.items()))

    def dirty(self, path: str) -> DirtyFile | None:
        with self._lock:
            return self._dirty.get(path)

    # -- writing ------------------------------------------------------------------------------------------
    def _check_parent(self, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent and not self.lookup(parent).is_dir:
            raise StorageError(f"{parent}: not a directory", errno.ENOTDIR)

    def open_write(self, path: str, *, truncate: bool, create: bool) -> WriteHandle:
        """A writable handle on `path`, staging the object's current bytes first unless truncating."""
        with self._lock:
            dirty = self._dirty.get(path)
            if dirty is not None:
                dirty.writers += 1  # pinned: a finishing upload now keeps the staged bytes
        if dirty is not None:
            # An upload not started yet is dropped (the file is uploaded again at close); one in progress is
            # waited for, so the bytes it sends are never torn by this writer.
            self._drop_stream(dirty.staged)
            self.uploader.cancel(dirty.staged)
            self.staging.set_state(dirty.staged, OPEN)
        else:
            node = None
            try:
                node = self.lookup(path)
            except NotFound:
                if not create:
                    raise
                self._check_parent(path)
            if node is not None and node.is_dir:
                raise StorageError(f"{path}: is a directory", errno.EISDIR)
            staged = self.staging.create(self.bucket.key_of(path))
            # A new file, or an existing one being truncated, must be uploaded even if nothing is written.
            dirty = DirtyFile(path, staged, self.staging.data_path(staged), writers=1,
                              modified=node is None or truncate)
            if node is not None and not truncate and node.obj is not None:
                self._copy_in(node.obj, dirty.data_path)
            with self._lock:
                replaced = self._dirty.get(path)
                self._dirty[path] = dirty
            if replaced is not None:  # another writer created it meanwhile: the last one opened wins
                log.warning("%s: opened for writing by two writers at once; the later open wins", path)
            if node is None or truncate:
                self._start_stream(dirty)
        handle = WriteHandle(self, dirty, writable=True)
        if truncate:
            handle.truncate(0)
        return handle

    # -- parts sent while writing -----------------------------------------------------------------------
    def _start_stream(self, dirty: DirtyFile) -> None:
        upload = self.store.part_upload(dirty.staged.key, dirty.data_path)
        if upload is not None:
            with self._lock:
                self._streams[dirty.staged.id] = _Stream(upload)

    def wrote(self, dirty: DirtyFile, offset: int, length: int) -> None:
        """After a write: the next complete part of an in-order file goes to S3; anything else drops it."""
        with self._lock:
            stream = self._streams.get(dirty.staged.id)
        if stream is None:
            return
        with stream.lock:
            in_order = offset == stream.end and dirty.writers == 1
            if in_order:
                stream.end += length
                while stream.parts < min(stream.end // stream.upload.part_size, MAX_PARTS):
                    stream.parts += 1
                    stream.upload.add_part(stream.parts)
        if not in_order:
            self._drop_stream(dirty.staged)

    def truncated(self, dirty: DirtyFile, length: int) -> None:
        with self._lock:
            stream = self._streams.get(dirty.staged.id)
        if stream is not None and length != stream.end:
            self._drop_stream(dirty.staged)

    def _drop_stream(self, staged: StagedFile) -> None:
        """The file will be uploaded whole after all (or not at all): abort what was sent."""
        with self._lock:
            stream = self._streams.pop(staged.id, None)
        if stream is not None:
            _abort_soon(stream)

    def _put(self, staged: StagedFile) -> ObjectInfo:
        """Upload a closed staged file: finish its stream if every byte went in order, else send it whole."""
        with self._lock:
            stream = self._streams.pop(staged.id, None)
        path = self.staging.data_path(staged)
        if stream is not None and stream.parts:
            size = os.path.getsize(path)
            if size == stream.end and stream.upload.key == staged.key:
                return stream.upload.finish(size)
            _abort_soon(stream)
        return self.store.put_file(staged.key, path)

    def open_local(self, path: str) -> WriteHandle | None:
        """A read-only handle on the staged bytes of `path`, if it has any (read-your-writes)."""
        dirty = self.dirty(path)
        return None if dirty is None else WriteHandle(self, dirty, writable=False)

    def _copy_in(self, obj: ObjectInfo, data_path: str) -> None:
        with open(data_path, "r+b") as file:
            for start in range(0, obj.size, COPY_CHUNK):
                file.write(self.store.get_range(obj, start, min(obj.size, start + COPY_CHUNK)))

    def mark_open(self, dirty: DirtyFile) -> None:
        if dirty.staged.state != OPEN:
            self.staging.set_state(dirty.staged, OPEN)

    def mark_closed(self, dirty: DirtyFile) -> None:
        if dirty.staged.state == OPEN:
            self.staging.set_state(dirty.staged, CLOSED)

    def release_writer(self, dirty: DirtyFile) -> None:
        with self._lock:
            dirty.writers -= 1
            if dirty.writers > 0:
                return
            current = self._dirty.get(dirty.path) is dirty
        if not current:  # deleted or replaced while open
            self._drop_stream(dirty.staged)
            self.staging.remove(dirty.staged)
            return
        if dirty.write_error is not None:
            # The writer was told (ENOSPC, EIO...); uploading what did get staged would put a truncated
            # object in place of good data.  The path shows the object as it was before.
            log.error("%s: not uploaded because a write failed (%s); staged bytes discarded",
                      dirty.staged.key, dirty.write_error)
            self._drop_stream(dirty.staged)
            with self._lock:
                if self._dirty.get(dirty.path) is dirty:
                    del self._dirty[dirty.path]
            self.staging.remove(dirty.staged)
            self.bucket.forget(dirty.path)
            return
        if not dirty.modified:  # already uploaded by fsync or by a synchronous close, or never changed
            self._drop_stream(dirty.staged)
            with self._lock:
                if self._dirty.get(dirty.path) is dirty and dirty.writers == 0:
                    del self._dirty[dirty.path]
            self.staging.remove(dirty.staged)
            self.bucket.forget(dirty.path)
            return
        self.staging.set_state(dirty.staged, CLOSED)
        with self._lock:
            # A writer that opened the file since the count fell to 0 has cancelled nothing (nothing was
            # queued yet): it uploads at its own release.  Submitting here too would run two uploads of one
            # file at once, the older one landing last (stale bytes, or a deleted file coming back).
            if dirty.writers == 0 and self._dirty.get(dirty.path) is dirty:
                self.uploader.submit(dirty.staged)

    def sync(self, dirty: DirtyFile, *, writer_open: bool) -> None:
        """fsync: the file's current bytes are durable in S3 when this returns (EIO if the upload fails)."""
        try:
            # A descriptor opened after close(2) can fsync before the kernel's (asynchronous) release has
            # queued the upload: then nothing is pending yet, and the bytes are uploaded here.
            if writer_open or (dirty.modified and not self.uploader.has_upload(dirty.staged)):
                self._drop_stream(dirty.staged)
                dirty.modified = False  # set before reading the file: a write racing with us sets it again
                self.store.put_file(dirty.staged.key, dirty.data_path)
            else:
                self.uploader.wait(dirty.staged)
        except StorageError as exc:  # whatever S3 said, for fsync(2) the data is not durable: EIO
            dirty.modified = True
            log.error("fsync of %s: upload failed: %s", dirty.staged.key, exc)
            raise StorageError(f"fsync of {dirty.staged.key}: {exc}", errno.EIO) from None

    def _uploaded(self, staged: StagedFile, info: ObjectInfo) -> bool:
        """An upload landed: the path shows the object again, unless a writer re-opened it meanwhile."""
        with self._lock:
            for path, dirty in list(self._dirty.items()):
                if dirty.staged is staged:
                    if dirty.writers:
                        return False
                    del self._dirty[path]
                    self.bucket.remember(path, info)
        return True

    def truncate(self, path: str, length: int) -> None:
        handle = self.open_write(path, truncate=length == 0, create=False)
        try:
            handle.truncate(length)
        finally:
            handle.release()

    def unlink(self, path: str) -> None:
        node = self.lookup(path)
        if node.is_dir:
            raise StorageError(f"{path}: is a directory", errno.EISDIR)
        self._discard(path)
        self.store.delete_object(self.bucket.key_of(path))
        self.bucket.forget(path)

    def _discard(self, path: str) -> None:
        """`path`'s object is being deleted or replaced: drop its staged bytes and any upload of them (an
        open writer keeps its bytes until it closes; its release then finds the path no longer its own)."""
        with self._lock:
            dirty = self._dirty.pop(path, None)
        if dirty is not None:
            self._drop_stream(dirty.staged)
            self.uploader.cancel(dirty.staged)
            if dirty.writers == 0:
                self.staging.remove(dirty.staged)

    def mkdir(self, path: str) -> None:
        try:
            self.lookup(path)
        except NotFound:
            pass
        else:
            raise StorageError(f"{path}: exists", errno.EEXIST)
        self._check_parent(path)
        self.store.put_object(self.bucket.key_of(path) + "/", b"")
        self.bucket.remember_new_dir(path)

    def rmdir(self, path: str) -> None:
        if not self.lookup(path).is_dir:
            raise StorageError(f"{path}: not a directory", errno.ENOTDIR)
        self.bucket.forget_listing(path)
        if self.readdir(path):
            raise StorageError(f"{path}: directory not empty", errno.ENOTEMPTY)
        self.store.delete_object(self.bucket.key_of(path) + "/")
        self.bucket.forget(path)

    def rename(self, old: str, new: str) -> None:
        node = self.lookup(old)
        if node.is_dir:
            # Directories are prefixes: moving one is a copy of every object.  EXDEV makes mv(1) do exactly
            # that, object by object (not atomic, as documented).
            raise StorageError(f"{old}: directories cannot be renamed in place", errno.EXDEV)
        try:
            if self.lookup(new).is_dir:
                raise StorageError(f"{new}: is a directory", errno.EISDIR)
        except NotFound:
            self._check_parent(new)
        self._discard(new)
        with self._lock:
            dirty = self._dirty.get(old)
        if dirty is not None:
            self._drop_stream(dirty.staged)  # its parts went to the old key
        if dirty is not None and (dirty.writers > 0 or self.uploader.cancel(dirty.staged)):
            # Not uploaded yet: the staged bytes simply go to the new key.
            with self._lock:
                self._dirty.pop(old, None)
                dirty.path = new
                self._dirty[new] = dirty
            dirty.staged.key = self.bucket.key_of(new)
            self.staging.save(dirty.staged)
            if dirty.writers == 0:
                self.uploader.submit(dirty.staged)
            try:
                self.store.delete_object(self.bucket.key_of(old))
            except NotFound:
                pass
        else:
            self.store.copy_object(self.bucket.key_of(old), self.bucket.key_of(new))
            self.store.delete_object(self.bucket.key_of(old))
        self.bucket.forget(old)
        self.bucket.forget(new)

    def set_attributes(self, path: str) -> None:
        """chmod/chown/utimens: accepted and not stored (mode, owner and mtime come from the mount options
        and S3), so cp -p, rsync -a and touch work; documented in SEMANTICS."""
        self.lookup(path)

    def stats(self) -> dict:
        failures = self.uploader.failures()
        return {"pending_uploads": self.uploader.pending(), "uploaded": self.uploader.uploaded,
                "upload_retries": self.uploader.retries,
                "failed_uploads": [{"key": staged.key, "error": staged.error,
                                    "staged": self.staging.data_path(staged)} for staged in failures],
                "stranded": [{"key": staged.key, "staged": self.staging.data_path(staged)}
                             for staged in self.stranded]}

    def close(self) -> None:
        with self._lock:  # files still open at unmount: their staged bytes stay, their parts go
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            if stream.parts:
                stream.upload.abort()
        self.uploader.close()
        self.bucket.close()


def _abort_soon(stream: _Stream) -> None:
    """Abort a stream's upload in the background (aborting waits for the parts in flight)."""
    if stream.parts:
        threading.Thread(target=stream.upload.abort, name="abort-upload", daemon=True).start()


