"""One owner per open file: every handle the FUSE adapter holds answers the same calls (no FUSE here).

```
FileHandle        read, write, truncate, flush, fsync, release, attributes
  ReadHandle      a stored object: the read-ahead stream, and verification of package entries
  WriteHandle     a staged file being written (dirty.py), whose owner uploads it (overlay.py)
  MemoryFile      bytes quiltmount generates itself (node.py: search results)
FileOpener        picks and builds the handle for an open(2) or creat(2), like rclone's vfs `File.Open`
```

The adapter (`operations.py`) only translates: it keeps the handles by number and calls them.

An object another client replaced after the mount listed it is found by the GET of its first block, which
an open makes (unless a cache has the block): the open then reads the new version and has the kernel drop
what it cached of the old one (`FileOpener`).  One found replaced by a new listing is read anew too: the
kernel keeps a file's pages across opens while its size and mtime stay the same (`auto_cache`), which a
replacement of the same size in the same second (S3's times are whole seconds) does not change, so the
opener drops them itself when a path opens as another object than the one it last opened (`_OpenedObjects`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from cachetools import LRUCache

from quiltmount.cache.keys import object_identity
from quiltmount.errors import NotFound, ObjectChanged, StorageError
from quiltmount.fs.dirty import DirtyFile
from quiltmount.fs.node import FileHandle, Node, Tree
from quiltmount.fs.readahead import BlockFetcher, ReadStream
from quiltmount.fs.verify import CorruptObjects, HashVerifier
from quiltmount.packages.manifest import make_hasher
from quiltmount.storage.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

#: Bytes per GET when a package entry whose cached copy failed its hash is read again from its source.
RECHECK_CHUNK = 8 << 20
#: Paths whose last opened object the opener remembers (`_OpenedObjects`): about 200 bytes each.
OPENED_OBJECTS_KEPT = 16_384

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

    def __init__(self, stream: ReadStream, verifier: HashVerifier | None, corrupt: CorruptObjects, *,
                 on_changed: Callable[[], None] | None = None) -> None:
        """`on_changed`: called once if a read finds the object replaced or deleted since it was opened (the
        read gets EIO all the same)."""
        self.stream = stream
        self.verifier = verifier
        self.corrupt = corrupt
        # Corrupt is where the bytes come from, not the content hash: another copy of it may be good.
        self._source = (stream.store.name, stream.obj.key, stream.obj.version_id)
        self._returned_bytes = False
        self._on_changed = on_changed
        self.on_release: Callable[[], None] | None = None  # told when the handle's last descriptor closes
        self._lock = threading.Lock()

    def _refuse(self) -> ObjectChanged:
        return ObjectChanged(f"{self.stream.store.name}/{self.stream.obj.key}: content does not match the "
                             "manifest hash")

    def load_first_block(self) -> None:
        """Fetch the object's first block into the block cache, unless a cache has it (the read that usually
        follows an open finds it there).  Its GET is pinned to the identity opened: `ObjectChanged` here means
        the object was replaced or deleted since it was listed."""
        stream = self.stream
        stream.fetcher.read(stream.store, stream.obj, 0, stream.fetcher.block_size)

    def read(self, offset: int, size: int) -> bytes:
        if self.verifier is not None and self.corrupt.contains(self._source):
            raise self._refuse()
        try:
            data = self.stream.read(offset, size)
        except ObjectChanged:
            with self._lock:
                on_changed, self._on_changed = self._on_changed, None
            if on_changed is not None:
                on_changed()
            raise
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
            log.warning("%r: cached bytes did not match the manifest hash; dropped, and read from the source, "
                        "whose bytes match", where)
            return fresh
        self.corrupt.add(self._source)
        if fresh is None:
            log.error("%r: content does not match the manifest hash %s; returning EIO", where, verifier.expected)
        else:
            log.error("%r: bytes read earlier came from a cached copy that did not match the manifest hash (dropped; "
                      "the source's bytes match): EIO for this file until the next mount", where)
        raise self._refuse()

    def release(self) -> None:
        if self.on_release is not None:
            self.on_release()

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


def _replaceable(node: Node) -> bool:
    """Whether another client can replace `node`'s object under its name: a stored object pinned by its ETag
    alone (a package entry is pinned by its hash, an object version by its id)."""
    return (node.expected_hash is None and node.obj is not None and node.obj.version_id is None
            and bool(node.obj.etag))


class KernelCache(Protocol):
    """What the kernel caches of the mount's files (`binding.KernelInvalidation`); paths are the mount's."""

    def invalidate(self, path: str) -> None:
        """Drop the attributes and pages of `path` before returning: from an open of it only (a read or a
        write holds pages of the file, which this would wait for)."""

    def invalidate_soon(self, path: str) -> None:
        """The same, sent by another thread: from anywhere."""


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
        self._appending = False

    def append_only(self) -> None:
        """Every write goes to the end of the staged file, wherever the kernel says (its size of the file may be
        older than the staged bytes: another writer's, or an object replaced since it was listed)."""
        if self.writable:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_APPEND)
            self._appending = True

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def write(self, data: bytes, offset: int) -> int:
        if not self.writable:
            return super().write(data, offset)
        self.dirty.changing()
        try:
            if self._appending:  # at the end, atomically with the other writers' appends (O_APPEND)
                written = os.write(self.fd, data)
                offset = os.lseek(self.fd, 0, os.SEEK_CUR) - written
            else:
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


class _OpenedObjects(LRUCache):
    """Path -> the ETag of the object last opened for reading there, for the replaceable objects the kernel may
    hold pages of.  A path forgotten to keep this bounded has those pages dropped, as it can no longer be told
    whether they are of the object the path names."""

    def __init__(self, kernel: KernelCache | None) -> None:
        super().__init__(OPENED_OBJECTS_KEPT)
        self.kernel = kernel

    def popitem(self) -> tuple[str, str]:
        path, etag = super().popitem()
        if self.kernel is not None:
            self.kernel.invalidate_soon(path)
        return path, etag


class FileOpener:
    """Opens the files of one mount: the read path's parts (fetcher, verification workers, window) in one
    place, so the FUSE adapter needs none of them."""

    def __init__(self, tree: Tree, fetcher: BlockFetcher, *, max_read_window: int, hash_workers: int,
                 kernel: KernelCache | None = None) -> None:
        """Verified reads are hashed on `hash_workers` threads beside the readers (hashlib lets go of the GIL).
        `kernel`: the kernel's cache of the mount, told of files found replaced."""
        self.tree = tree
        self.fetcher = fetcher
        self.max_read_window = max_read_window
        self.kernel = kernel
        self.corrupt = CorruptObjects()
        self._hashing = ThreadPoolExecutor(max_workers=hash_workers, thread_name_prefix="hash")
        self._opened = _OpenedObjects(kernel)
        self._open_readers: dict[str, Counter[str]] = {}  # path -> ETags of its read handles open, counted
        self._opened_lock = threading.Lock()

    def open(self, path: str, flags: int) -> FileHandle:
        """A handle on `path`.  A stored object that can be replaced under its name (one pinned by its ETag
        alone: not a package entry, not a version) has its first block fetched now, unless cached: if the GET
        finds the object replaced since it was listed, the open reads the version the store holds now."""
        if is_write_open(flags):
            handle = self.tree.open_write(path, truncate=bool(flags & os.O_TRUNC), create=False)
            if flags & os.O_APPEND:
                handle.append_only()
            return handle
        local = self.tree.open_local(path)
        if local is not None:
            return local
        node = self.tree.lookup(path)
        handle = self._read_handle(path, node)
        if _replaceable(node):
            try:
                handle.load_first_block()
            except ObjectChanged as changed:
                handle = self._reopen(path, handle.stream.obj, changed)
            self._opening(path, handle)
        return handle

    def _opening(self, path: str, handle: ReadHandle) -> None:
        """`path` opens as `handle`'s object.  The kernel keeps one page cache per file, which every descriptor
        of it reads: while handles of another object of the path are open (it was replaced meanwhile), this
        one is read past that cache, so that neither gets the other's bytes.  Otherwise, if the path last
        opened as another object, the kernel drops the pages it may keep of that one (before the open
        returns: it decides on them just after)."""
        etag = handle.stream.obj.etag
        with self._opened_lock:
            open_etags = self._open_readers.setdefault(path, Counter())
            others_open = any(other != etag for other in open_etags)
            open_etags[etag] += 1
            before = None if others_open else self._opened.get(path)
            if not others_open:
                self._opened[path] = etag
        handle.on_release = lambda: self._released(path, etag)
        if others_open:
            log.info("%r opens as a newer object while the one it replaced is still open: read past the kernel's "
                     "cache", path)
            handle.kernel_cached = False
        elif before is not None and before != etag and self.kernel is not None:
            log.debug("%r opens as another object than last time: the kernel's pages of it dropped", path)
            self.kernel.invalidate(path)

    def _released(self, path: str, etag: str) -> None:
        """A handle `_opening` counted is closed."""
        with self._opened_lock:
            open_etags = self._open_readers[path]
            open_etags[etag] -= 1
            if open_etags[etag] == 0:
                del open_etags[etag]
            if not open_etags:
                del self._open_readers[path]

    def _read_handle(self, path: str, node: Node) -> ReadHandle:
        if node.is_dir or node.obj is None or node.store is None:
            raise StorageError(f"{path}: is a directory", errno.EISDIR)
        verifier = (HashVerifier(*node.expected_hash, node.size, self._hashing) if node.expected_hash
                    else None)
        obj = self._pinned_if_caching(node.store, node.obj)
        stream = ReadStream(self.fetcher, node.store, obj, max_window=self.max_read_window)
        return ReadHandle(stream, verifier, self.corrupt,
                          on_changed=(lambda: self._changed_while_open(path)) if _replaceable(node) else None)

    def _pinned_if_caching(self, store: ObjectStore, obj: ObjectInfo) -> ObjectInfo:
        """`obj` pinned to the ETag its key has now (one HEAD) if it is a package entry that nothing pins (an
        unversioned bucket's) and blocks of it will be fetched for the disk cache: those blocks are tagged with
        the exact bytes they come from, and the reads cannot mix two versions.  Left unpinned if the key holds
        no object (the read then fails as it would)."""
        if not self.fetcher.cache.lacks_origin(object_identity(store, obj), self.fetcher.last_block(obj)):
            return obj
        try:
            return store.pinned(obj)
        except NotFound:
            return obj

    def _reopen(self, path: str, opened: ObjectInfo, changed: ObjectChanged) -> ReadHandle:
        """`path`'s object is no longer `opened` (the open's first GET said so): a handle on the one the store
        holds now.  The kernel drops the size and pages it has of the old one before the open returns, so that
        the reader asks for the size again instead of stopping at the old one."""
        try:
            node = self.tree.refresh(path)
        except NotFound:
            log.info("%r: deleted since it was listed", path)
            raise
        finally:
            if self.kernel is not None:
                self.kernel.invalidate(path)
        handle = self._read_handle(path, node)  # EISDIR if a directory took the name
        now = handle.stream.obj
        if (now.etag, now.version_id) == (opened.etag, opened.version_id):
            raise changed  # the store refused the version it still names: nothing newer to open
        log.info("%r changed since it was listed (%d bytes, now %d): reading the new version", path,
                 opened.size, now.size)
        return handle

    def _changed_while_open(self, path: str) -> None:
        """A read found `path`'s object replaced after its open, too late for that handle (EIO): refresh the
        name, so that the next open reads the new version, and the kernel's cache of it."""
        try:
            self.tree.refresh(path)
        except StorageError as exc:  # NotFound included: the caches learnt it
            log.info("%r: changed while open; looking it up again: %s", path, exc)
        if self.kernel is not None:
            self.kernel.invalidate_soon(path)

    def create(self, path: str) -> FileHandle:
        return self.tree.open_write(path, truncate=True, create=True)

    def close(self) -> None:
        self._hashing.shutdown(wait=False, cancel_futures=True)
