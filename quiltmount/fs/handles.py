"""One owner per open file: every handle the FUSE adapter holds answers the same calls (no FUSE here).

```
FileHandle        read, write, truncate, flush, fsync, release, attributes
  ReadHandle      a stored object: the read-ahead stream, and verification of package entries
  WriteHandle     a staged file being written (dirty.py), whose owner uploads it (overlay.py)
  MemoryFile      bytes quiltmount generates itself (node.py: search results)
FileOpener        picks and builds the handle for an open(2) or creat(2), like rclone's vfs `File.Open`
```

The adapter (`operations.py`) only translates: it keeps the handles by number and calls them.
"""

from __future__ import annotations

import errno
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from quiltmount.errors import ObjectChanged, StorageError
from quiltmount.fs.dirty import DirtyFile
from quiltmount.fs.node import FileHandle, Node, Tree
from quiltmount.fs.readahead import BlockFetcher, ReadStream
from quiltmount.fs.verify import CorruptObjects, HashVerifier

log = logging.getLogger(__name__)

class ReadHandle(FileHandle):
    """An open stored object: reads through the block cache and read-ahead (`ReadStream`); a package entry's
    bytes are also hashed as they go by and checked against its manifest hash once the file has been read."""

    def __init__(self, stream: ReadStream, verifier: HashVerifier | None, corrupt: CorruptObjects) -> None:
        self.stream = stream
        self.verifier = verifier
        self.corrupt = corrupt

    def _refuse(self) -> ObjectChanged:
        return ObjectChanged(f"{self.stream.store.name}/{self.stream.obj.key}: content does not match the "
                             "manifest hash")

    def read(self, offset: int, size: int) -> bytes:
        if self.verifier is not None and self.corrupt.contains(self.stream.identity):
            raise self._refuse()
        data = self.stream.read(offset, size)
        if self.verifier is not None and self.verifier.observe(offset, data) is False:
            self.corrupt.add(self.stream.identity)
            log.error("%s/%s: content does not match the manifest hash %s; returning EIO",
                      self.stream.store.name, self.stream.obj.key, self.verifier.expected)
            raise self._refuse()
        return data

    def attributes(self) -> Node:
        """What was opened, even if the name now points at something else."""
        obj = self.stream.obj
        return Node(is_dir=False, size=obj.size, mtime=obj.mtime, obj=obj)


class SyncStaged(Protocol):
    """The owner's fsync of a staged file: its current bytes are durable in S3 when this returns (EIO if the
    upload fails).  `writer_open`: called by a writable handle, whose bytes are to be uploaded now."""

    def __call__(self, dirty: DirtyFile, *, writer_open: bool) -> None: ...


class WriteHandle(FileHandle):
    """An open file descriptor on a staged file: its bytes are the local ones, its changes go to the
    `DirtyFile`, and fsync asks the file's owner to upload them (`sync`)."""

    def __init__(self, dirty: DirtyFile, sync: SyncStaged, *, writable: bool, sync_on_close: bool = False) -> None:
        """`sync_on_close`: close(2) of a writable descriptor uploads the bytes and waits (--sync-on-close)."""
        self.dirty = dirty
        self.sync = sync
        self.writable = writable
        self.sync_on_close = sync_on_close
        self.fd = os.open(dirty.data_path, os.O_RDWR if writable else os.O_RDONLY)

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def write(self, data: bytes, offset: int) -> int:
        if not self.writable:
            return super().write(data, offset)
        self.dirty.changing()
        try:
            written = os.pwrite(self.fd, data, offset)
        except OSError as exc:
            self.dirty.write_error = str(exc)
            raise
        if written != len(data):  # a short write to the staging disk is as bad as a failed one
            self.dirty.write_error = f"short write to the staging area ({written} of {len(data)} bytes)"
            raise OSError(errno.ENOSPC, self.dirty.write_error)
        self.dirty.wrote(offset, written)
        return written

    def truncate(self, length: int) -> bool:
        if not self.writable:
            return False
        self.dirty.changing()
        self.dirty.truncating(length)
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
            self.dirty.closed()
            if self.sync_on_close and self.dirty.modified:
                # FUSE's release comes after close(2) has returned: to make close wait, upload here.
                self.sync(self.dirty, writer_open=True)

    def fsync(self) -> None:
        if self.writable:
            os.fsync(self.fd)
        self.sync(self.dirty, writer_open=self.writable)

    def release(self) -> None:
        os.close(self.fd)
        if self.writable:
            self.dirty.release()


def is_write_open(flags: int) -> bool:
    """open(2) flags that may change the file: a write mode, or O_TRUNC (even with O_RDONLY)."""
    return flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)


class FileOpener:
    """Opens the files of one mount: the read path's parts (fetcher, verification workers, window) in one
    place, so the FUSE adapter needs none of them."""

    def __init__(self, tree: Tree, fetcher: BlockFetcher, *, max_read_window: int, hash_workers: int) -> None:
        """Verified reads are hashed on `hash_workers` threads beside the readers (hashlib lets go of the GIL)."""
        self.tree = tree
        self.fetcher = fetcher
        self.max_read_window = max_read_window
        self.corrupt = CorruptObjects()
        self._hashing = ThreadPoolExecutor(max_workers=hash_workers, thread_name_prefix="hash")

    def open(self, path: str, flags: int) -> FileHandle:
        if is_write_open(flags):
            return self.tree.open_write(path, truncate=bool(flags & os.O_TRUNC), create=False)
        local = self.tree.open_local(path)
        if local is not None:
            return local
        node = self.tree.lookup(path)
        if node.is_dir or node.obj is None or node.store is None:
            raise StorageError(f"{path}: is a directory", errno.EISDIR)
        verifier = (HashVerifier(*node.expected_hash, node.size, self._hashing) if node.expected_hash
                    else None)
        stream = ReadStream(self.fetcher, node.store, node.obj, max_window=self.max_read_window)
        return ReadHandle(stream, verifier, self.corrupt)

    def create(self, path: str) -> FileHandle:
        return self.tree.open_write(path, truncate=True, create=True)

    def close(self) -> None:
        self._hashing.shutdown(wait=False, cancel_futures=True)
