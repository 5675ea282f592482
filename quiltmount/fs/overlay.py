"""The writable overlay: staged files laid over a bucket's tree, and the operations that change the bucket.

Stat, reads and listings show the staged (local) state of a file until its upload lands (read-your-writes).
`WritableBucketTree` opens files for writing (staging the object's bytes first unless truncating), owns each
`DirtyFile` from its first writer until its upload lands, and implements fsync, truncate, unlink, mkdir, rmdir
and rename on the bucket.  Uploads go through the `Uploader` (uploads.py), finishing the parts sent while the
file was written (`PartStreams`, partstream.py) when every byte went in order.  A staged file may carry POSIX
attributes (`StagedFile.meta`, with `--posix-metadata`: `fs/posixtree.py` sets them), which its upload sends
as the object's metadata.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

from quiltmount.errors import NotFound, ObjectChanged, StorageError
from quiltmount.fs.dirty import DirtyFile
from quiltmount.fs.handles import WriteHandle
from quiltmount.fs.node import Node, Tree
from quiltmount.fs.partstream import PartStreams
from quiltmount.fs.staging import (CLOSED, OPEN, SET_ASIDE, StagedFile, StagingArea, abort_abandoned_uploads,
                                   copy_in)
from quiltmount.fs.tree import BucketTree
from quiltmount.fs.uploads import Uploader
from quiltmount.posixmeta import NewAttrs, staged_headers
from quiltmount.storage.base import ObjectInfo

log = logging.getLogger(__name__)


class WritableBucketTree(Tree):
    """A bucket tree with staged local files laid over it, and the operations that change the bucket."""

    def __init__(self, bucket: BucketTree, staging: StagingArea, stranded_dir: str, *, sync_on_close: bool = False,
                 upload_workers: int = 4, upload_attempts: int = 5) -> None:
        """`stranded_dir`: where `recover` sets aside the files a killed daemon left open for writing."""
        self.bucket = bucket
        self.store = bucket.store
        self.staging = staging
        self.stranded_dir = stranded_dir
        self.sync_on_close = sync_on_close
        self._streams = PartStreams(self.store, staging)
        self.uploader = Uploader(self.store, staging, workers=upload_workers, attempts=upload_attempts,
                                 on_uploaded=self._uploaded, put=self._put)
        self._dirty: dict[str, DirtyFile] = {}
        self._opening: dict[str, threading.Event] = {}  # paths being staged for a first writer (`_join_or_claim`)
        self._lock = threading.Lock()  # guards `_dirty`, `_opening`, and the writer count of each of their files
        #: Files a killed daemon left open for writing, found by `recover`: (key, where their bytes are now).
        self.stranded: list[tuple[str, str]] = []

    def _dirty_file(self, path: str, staged: StagedFile, *, writers: int = 0, modified: bool = True) -> DirtyFile:
        return DirtyFile(path, staged, self.staging, self._streams, self._lock, self._last_writer_released,
                         writers=writers, modified=modified)

    # -- start-up -----------------------------------------------------------------------------------------
    def recover(self) -> int:
        """Upload what a previous daemon staged and closed; set aside the files that were still open for
        writing (their bytes may be incomplete: never uploaded) in `stranded_dir`/TIME/KEY."""
        queued = 0
        recovered = self.staging.recover()
        abort_abandoned_uploads(self.store, self.staging, recovered)  # before any of them is sent again
        aside = os.path.join(self.stranded_dir, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        for staged in recovered:
            if not os.path.exists(self.staging.data_path(staged)):
                continue  # set aside already: only its uploads are left to abort
            path = staged.key[len(self.bucket.root_prefix):] if staged.key.startswith(self.bucket.root_prefix) else None
            if path is None:
                log.warning("staged file for %r is outside this mount's prefix: left staged for a mount of its "
                            "own source", staged.key)
                continue
            if staged.state in (OPEN, SET_ASIDE):  # (set-aside: a daemon died while moving it)
                self._set_aside(staged, aside)
                continue
            self.staging.set_state(staged, CLOSED)
            with self._lock:
                self._dirty[path] = self._dirty_file(path, staged)
            self.uploader.submit(staged)
            queued += 1
        if queued:
            log.info("recovery: uploading %d staged file(s) left by a previous daemon", queued)
        return queued

    def _set_aside(self, staged: StagedFile, directory: str) -> None:
        """`staged` was open for writing when its daemon died: out of the staging area with it, once."""
        try:
            kept_at = self.staging.set_aside(staged, directory)
        except OSError as exc:
            kept_at = self.staging.data_path(staged)
            log.error("%r was still open for writing when a previous daemon stopped: not uploaded (its bytes may "
                      "be incomplete); could not move it to %r (%s): kept at %r", staged.key, directory, exc,
                      kept_at)
        else:
            log.error("%r was still open for writing when a previous daemon stopped: not uploaded (its bytes may "
                      "be incomplete); kept at %r", staged.key, kept_at)
        self.stranded.append((staged.key, kept_at))

    # -- reading the overlay ------------------------------------------------------------------------------
    def _dirty_node(self, dirty: DirtyFile) -> Node:
        return Node(is_dir=False, size=dirty.size(), mtime=dirty.mtime())

    def lookup(self, path: str) -> Node:
        with self._lock:
            dirty = self._dirty.get(path)
        if dirty is not None:
            return self._dirty_node(dirty)
        return self.bucket.lookup(path)

    def refresh(self, path: str) -> Node:
        return self.bucket.refresh(path)

    def readdir(self, path: str) -> dict[str, Node]:
        entries = dict(self.bucket.readdir(path))
        prefix = path + "/" if path else ""
        with self._lock:
            local = [dirty for key, dirty in self._dirty.items()
                     if key.startswith(prefix) and "/" not in key[len(prefix):]]
        for dirty in local:
            entries[dirty.path[len(prefix):]] = self._dirty_node(dirty)
        return dict(sorted(entries.items()))

    def staged_under(self, path: str) -> bool:
        """Whether a file under directory `path` has staged bytes (not uploaded yet, or open for writing)."""
        prefix = path + "/"
        with self._lock:
            return any(key.startswith(prefix) for key in self._dirty)

    def dirty(self, path: str) -> DirtyFile | None:
        with self._lock:
            return self._dirty.get(path)

    # -- writing ------------------------------------------------------------------------------------------
    def open_write(self, path: str, *, truncate: bool, create: bool,
                   meta: dict[str, str] | None = None) -> WriteHandle:
        """A writable handle on `path`, staging the object's current bytes first unless truncating.
        `meta`: the attributes its upload is to carry, unless its staged file has some already."""
        dirty = self._join_or_claim(path, meta)
        if dirty is not None:
            # An upload not started yet is dropped (the file is uploaded again at close); one in progress is
            # waited for, so the bytes it sends are never torn by this writer.
            self._streams.drop(dirty.staged)
            self.uploader.cancel(dirty.staged)
            self.staging.set_state(dirty.staged, OPEN)
        else:
            try:
                dirty = self._stage(path, truncate=truncate, create=create, meta=meta)
            finally:
                with self._lock:
                    self._opening.pop(path).set()
        handle = WriteHandle(dirty, self.sync, writable=True, sync_on_close=self.sync_on_close)
        if truncate:
            handle.truncate(0)
        return handle

    def _join_or_claim(self, path: str, meta: dict[str, str] | None) -> DirtyFile | None:
        """The staged file of `path`, with one more writer, if it has one; else None, with `path` claimed: the
        caller stages it, and other opens of it meanwhile wait to share that staged file (each staging its own,
        the last one's would replace the others' and their writes would be lost)."""
        while True:
            with self._lock:
                dirty = self._dirty.get(path)
                if dirty is not None:
                    dirty.writers += 1  # pinned: a finishing upload now keeps the staged bytes
                    if dirty.staged.meta is None:
                        dirty.staged.meta = meta
                    return dirty
                opening = self._opening.get(path)
                if opening is None:
                    self._opening[path] = threading.Event()
                    return None
            opening.wait()  # then share what it staged (or claim the path, if its open failed)

    def _stage(self, path: str, *, truncate: bool, create: bool, meta: dict[str, str] | None) -> DirtyFile:
        """Stage `path` for its first writer: its current bytes unless truncating.  An object another client
        replaced since it was listed is looked up again and its new bytes staged (one deleted meanwhile is
        created anew, if `create`); nothing stays staged if the open fails."""
        node = self.replaced_by_write(path, create=create)
        staged = self.staging.create(self.bucket.key_of(path), meta)
        try:
            if node is not None and not truncate and node.obj is not None:
                try:
                    copy_in(self.store, node.obj, self.staging.data_path(staged))
                except ObjectChanged:
                    node = self._restage(path, staged, create=create)
        except BaseException:
            self.staging.remove(staged)
            raise
        # A new file, or an existing one being truncated, must be uploaded even if nothing is written.
        dirty = self._dirty_file(path, staged, writers=1, modified=node is None or truncate)
        with self._lock:
            replaced = self._dirty.get(path)
            self._dirty[path] = dirty
        if replaced is not None:  # a rename put another staged file there meanwhile: this open wins
            log.warning("%r: another staged file was renamed there while it was opened for writing; the open "
                        "wins", path)
        if node is None or truncate:
            self._streams.start(staged, dirty.data_path)
        return dirty

    def _restage(self, path: str, staged: StagedFile, *, create: bool) -> Node | None:
        """`path`'s object changed since it was listed (its copy-in found it so): stage the bytes it holds now;
        the node staged, None if it is gone and `create` (NotFound if not: what a read open answers too)."""
        try:
            node = self.refresh(path)
        except NotFound:
            if not create:
                raise
            node = None
        if node is not None and node.is_dir:
            raise StorageError(f"{path}: is a directory now", errno.EISDIR)
        data_path = self.staging.data_path(staged)
        os.truncate(data_path, 0)  # (what the first copy got of the old bytes)
        if node is not None and node.obj is not None:
            log.info("%r: changed since it was listed; its current bytes staged", path)
            copy_in(self.store, node.obj, data_path)
        return node

    def open_local(self, path: str) -> WriteHandle | None:
        """A read-only handle on the staged bytes of `path`, if it has any (read-your-writes)."""
        dirty = self.dirty(path)
        return None if dirty is None else WriteHandle(dirty, self.sync, writable=False)

    def _last_writer_released(self, dirty: DirtyFile) -> None:
        """`dirty`'s last writer has released it: queue its upload, or drop its staged bytes (the path is no
        longer its own, a write failed, or there is nothing left to upload)."""
        # `DirtyFile.release` let go of this lock once the count fell to 0: a delete, rename or new open of the
        # path since then is met here as one just before the count fell (deleted: not current) or just after it
        # (renamed: current at its new path; re-opened: the writer checks below).
        with self._lock:
            current = self._dirty.get(dirty.path) is dirty
        if not current:  # deleted or replaced while open
            self._streams.drop(dirty.staged)
            self.staging.remove(dirty.staged)
            return
        if dirty.write_error is not None or not dirty.modified:
            if dirty.write_error is not None:
                # The writer was told (ENOSPC, EIO...); uploading what did get staged would put a truncated
                # object in place of good data.  The path shows the object as it was before.
                log.error("%r: not uploaded because a write failed (%s); staged bytes discarded",
                          dirty.staged.key, dirty.write_error)
            # Else it was already uploaded by fsync or by a synchronous close, or never changed.
            with self._lock:
                if dirty.writers:
                    # Re-opened since the count fell to 0: the staged bytes are that writer's now, and its
                    # own release decides (a failed write stays failed).
                    return
                if self._dirty.get(dirty.path) is dirty:
                    del self._dirty[dirty.path]
                # In the same step: a lookup in between would get the bucket's answer from before the file
                # was made ("not found", cached when it was created) although fsync put it in S3.
                self.bucket.forget(dirty.path)
            self._streams.drop(dirty.staged)
            self.staging.remove(dirty.staged)
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
                self._streams.drop(dirty.staged)
                dirty.modified = False  # set before reading the file: a write racing with us sets it again
                self._put_whole(dirty.staged, dirty.data_path, self.upload_metadata(dirty.staged))
            else:
                self.uploader.wait(dirty.staged)
        except StorageError as exc:  # whatever S3 said, for fsync(2) the data is not durable: EIO
            dirty.modified = True
            log.error("fsync of %r: upload failed: %s", dirty.staged.key, exc)
            raise StorageError(f"fsync of {dirty.staged.key}: {exc}", errno.EIO) from None

    def _put(self, staged: StagedFile) -> ObjectInfo:
        """Upload a closed staged file: finish its stream if every byte went in order, else send it whole.

        A stream's multipart upload was created while the file was being written, before its attributes
        were final: they follow in a copy of the object onto itself (server-side)."""
        path = self.staging.data_path(staged)
        metadata = self.upload_metadata(staged)
        info = self._streams.finish(staged, path)
        if info is None:
            return self._put_whole(staged, path, metadata)
        if metadata is not None:
            info = self.store.copy_object(staged.key, staged.key, metadata=metadata)
        return info

    def _put_whole(self, staged: StagedFile, path: str, metadata: dict[str, str] | None) -> ObjectInfo:
        """Send `staged`'s bytes at `path` whole; its journal entry names the multipart upload, if one is made,
        until it completes (see staging.py)."""
        started: list[str] = []

        def journal(upload_id: str) -> None:
            started.append(upload_id)
            self.staging.note_upload(staged, staged.key, upload_id)

        info = self.store.put_file(staged.key, path, metadata=metadata, on_start=journal)
        for upload_id in started:
            self.staging.upload_done(staged, upload_id)
        return info

    def upload_metadata(self, staged: StagedFile) -> dict[str, str] | None:
        """The object metadata an upload of `staged` sends now: its attributes with its bytes' times."""
        with self._lock:
            meta = None if staged.meta is None else dict(staged.meta)
        if meta is None:
            return None
        st = os.stat(self.staging.data_path(staged))
        return staged_headers(meta, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)

    def change_staged(self, dirty: DirtyFile, change: Callable[[dict[str, str] | None], dict[str, str]],
                      mtime_ns: int | None = None) -> bool:
        """Change `dirty`'s attributes from `meta` to `change(meta)` (and the mtime of its bytes, which its
        upload sends, to `mtime_ns`): True if its upload is still to come and carries them (journalled, unless
        the file is open: it is at its close); False if its bytes landed meanwhile without them: the caller
        changes the object."""
        with self._lock:
            dirty.staged.meta = change(dirty.staged.meta)
        if mtime_ns is not None:
            try:
                _set_mtime(dirty.data_path, mtime_ns)
            except FileNotFoundError:
                return False
        if not self.uploader.still_to_land(dirty.staged):
            return False
        dirty.modified = True  # a file fsynced while open is uploaded again at its release, with them
        if dirty.staged.state != OPEN:
            self.staging.save(dirty.staged)
        return True

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
            self._streams.drop(dirty.staged)
            self.uploader.cancel(dirty.staged)
            if dirty.writers == 0:
                self.staging.remove(dirty.staged)

    def mkdir(self, path: str, metadata: Mapping[str, str] | None = None) -> None:
        """`metadata`: the marker object's (the directory's attributes)."""
        self.check_absent(path)
        self.check_parent_dir(path)
        self.store.put_object(self.bucket.key_of(path) + "/", b"", metadata=metadata)
        self.bucket.remember_new_dir(path)

    def rmdir(self, path: str) -> None:
        if not self.lookup(path).is_dir:
            raise StorageError(f"{path}: not a directory", errno.ENOTDIR)
        self.bucket.forget_listing(path)
        if self.readdir(path):
            raise StorageError(f"{path}: directory not empty", errno.ENOTEMPTY)
        hidden = self.bucket.hidden_key(path)
        if hidden is not None:  # (removing the marker would leave the directory there, rmdir "done")
            raise StorageError(f"{path}: holds keys no name can show, such as {hidden!r}", errno.ENOTEMPTY)
        self.store.delete_object(self.bucket.key_of(path) + "/")
        self.bucket.forget(path)

    def rename(self, old: str, new: str, metadata: Mapping[str, str] | None = None) -> None:
        """`metadata`: the new object's, if `old` is in S3 already (else its staged file keeps its own)."""
        self.check_file_rename(old, new)
        self._discard(new)
        with self._lock:
            dirty = self._dirty.get(old)
        if dirty is not None:
            self._streams.drop(dirty.staged)  # its parts went to the old key
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
            self.store.copy_object(self.bucket.key_of(old), self.bucket.key_of(new), metadata=metadata)
            self.store.delete_object(self.bucket.key_of(old))
        self.bucket.forget(old)
        self.bucket.forget(new)

    def link(self, path: str, target: str) -> None:
        """Objects cannot be hard links: ENOTSUP, as s3fs answers (`ln` says "Operation not supported")."""
        raise StorageError(f"{path}: objects cannot be hard links", errno.ENOTSUP)

    def symlink(self, path: str, target: str) -> None:
        """EPERM, symlink(2)'s answer where a filesystem makes no symlinks (not EROFS: the mount is writable)."""
        raise StorageError(f"{path}: symlinks are kept only with --posix-metadata", errno.EPERM)

    def make_node(self, path: str, new: NewAttrs) -> None:
        """EPERM, mknod(2)'s answer for a kind of node a filesystem does not make."""
        raise StorageError(f"{path}: FIFOs and other special files are kept only with --posix-metadata",
                           errno.EPERM)

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
                "stranded": [{"key": key, "kept_at": kept_at} for key, kept_at in self.stranded]}

    def unfinished(self) -> list[dict]:
        """Closed files whose upload is queued or running (not reported failed): what a daemon that stops
        before its uploads end leaves staged; the next mount uploads them."""
        failed = {staged.id for staged in self.uploader.failures()}
        writing = {staged.id for staged in self._being_written()}
        return [{"key": staged.key, "staged": self.staging.data_path(staged),
                 "error": "upload not finished when the daemon stopped"}
                for staged in self.uploader.unfinished() if staged.id not in failed | writing]

    def open_for_writing(self) -> list[dict]:
        """Files still open for writing: a daemon that stops now leaves them as a crash would, and the next
        mount sets them aside in `stranded_dir` (never uploaded)."""
        return [{"key": staged.key, "staged": self.staging.data_path(staged),
                 "error": "still open for writing when the daemon stopped"} for staged in self._being_written()]

    def _being_written(self) -> list[StagedFile]:
        with self._lock:
            return [dirty.staged for dirty in self._dirty.values() if dirty.writers > 0]

    def close(self) -> None:
        self._streams.close()  # files still open at unmount: their staged bytes stay, their parts go
        self.uploader.close()
        self.bucket.close()


def _set_mtime(path: str, mtime_ns: int) -> None:
    """Set the mtime of a staged file, durably: it is the file's mtime for its upload, after a crash too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.utime(fd, ns=(os.fstat(fd).st_atime_ns, mtime_ns))
        os.fsync(fd)
    finally:
        os.close(fd)
