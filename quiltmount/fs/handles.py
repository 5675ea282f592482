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
from quiltmount.packages.manifest import make_hasher
from quiltmount.storage.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

#: Bytes per GET when a package entry whose cached copy failed its hash is read again from its source.
RECHECK_CHUNK = 8 << 20

class ReadHandle(FileHandle):
    """An open stored object: reads through the block cache and read-ahead (`ReadStream`); a package entry's
    bytes are also hashed as they go by and checked against its manifest hash once the file has been read.

    A match lets the disk cache serve the entry's blocks to every mount (`BlockCache.checked`).  A mismatch
    drops every cached block of the entry (memory and disk) and reads it again from its source, once: if the
    source's bytes match, the cached copy was wrong (the disk cache serves only checked copies, so this takes
    a block altered on disk that kept its CRC-32) and the read gets the source's bytes, provided the handle
    returned nothing before (a file read in one go: most package files).  Otherwise the entry is corrupt in
    this mount: EIO now and for every later read (pages the kernel got from the wrong copy may still be in
    its cache, so a later open could not be trusted either; a remount reads it again).
    """

    def __init__(self, stream: ReadStream, verifier: HashVerifier | None, corrupt: CorruptObjects) -> None:
        self.stream = stream
        self.verifier = verifier
        self.corrupt = corrupt
        # Corrupt is where the bytes come from, not the content hash: another copy of it may be good.
        self._source = (stream.store.name, stream.obj.key, stream.obj.version_id)
        self._returned_bytes = False

    def _refuse(self) -> ObjectChanged:
        return ObjectChanged(f"{self.stream.store.name}/{self.stream.obj.key}: content does not match the "
                             "manifest hash")

    def read(self, offset: int, size: int) -> bytes:
        if self.verifier is not None and self.corrupt.contains(self._source):
            raise self._refuse()
        data = self.stream.read(offset, size)
        verdict = None if self.verifier is None else self.verifier.observe(offset, data)
        if verdict is True:
            self.stream.fetcher.cache.checked(self.stream.identity)
        elif verdict is False:
            data = self._after_mismatch(self.verifier, offset, size)
        self._returned_bytes = self._returned_bytes or bool(data)
        return data

    def _after_mismatch(self, verifier: HashVerifier, offset: int, size: int) -> bytes:
        stream = self.stream
        where = f"{stream.store.name}/{stream.obj.key}"
        stream.fetcher.cache.forget(stream.identity)
        fresh = _range_if_source_matches(stream.store, stream.obj, verifier, offset, size)
        if fresh is not None and not self._returned_bytes:
            log.warning("%s: cached bytes did not match the manifest hash; dropped, and read from the source, "
                        "whose bytes match", where)
            return fresh
        self.corrupt.add(self._source)
        if fresh is None:
            log.error("%s: content does not match the manifest hash %s; returning EIO", where, verifier.expected)
        else:
            log.error("%s: bytes read earlier came from a cached copy that did not match the manifest hash (dropped; "
                      "the source's bytes match): EIO for this file until the next mount", where)
        raise self._refuse()

    def attributes(self) -> Node:
        """What was opened, even if the name now points at something else."""
        obj = self.stream.obj
        return Node(is_dir=False, size=obj.size, mtime=obj.mtime, obj=obj)


def _range_if_source_matches(store: ObjectStore, obj: ObjectInfo, verifier: HashVerifier, offset: int,
                             size: int) -> bytes | None:
    """Bytes [offset, offset+size) of the object read again from `store` (past every cache), if the whole
    object hashes to what the manifest says; None if it does not."""
    hasher = make_hasher(verifier.hash_type, obj.size)
    wanted = bytearray()
    end = min(offset + size, obj.size)
    for start in range(0, obj.size, RECHECK_CHUNK):
        chunk = store.get_range(obj, start, min(start + RECHECK_CHUNK, obj.size))
        hasher.update(chunk)
        if start < end and start + len(chunk) > offset:
            wanted += chunk[max(offset - start, 0):end - start]
    return bytes(wanted) if hasher.value() == verifier.expected else None


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
