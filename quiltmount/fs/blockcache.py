"""LRU block cache: fixed-size blocks keyed by (object identity, block index).

Memory tier: a cachetools LRU bounded in bytes.  Optional disk tier: one file per block under the cache
directory (private permissions), with a hard size cap enforced before every write.  Because keys include
the object's ETag/version, a block can never be served for another version of the object.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Hashable

from cachetools import LRUCache

from quiltmount.files import atomic_file

log = logging.getLogger(__name__)

BlockKey = tuple[Hashable, int]  # (object identity, block index)


class Block:
    """One cached block: a slice of the bytes one ranged GET returned, without copying them.

    `view` hands FUSE a ctypes window on those bytes (mfusepy copies it straight into the kernel's buffer),
    so a sequential read copies each byte once on its way out instead of twice.
    """

    __slots__ = ("data", "start", "length")

    def __init__(self, data: bytes, start: int = 0, length: int | None = None) -> None:
        self.data = data
        self.start = start
        self.length = len(data) - start if length is None else length

    def __len__(self) -> int:
        return self.length

    def tobytes(self) -> bytes:
        if self.start == 0 and self.length == len(self.data):
            return self.data
        return self.data[self.start:self.start + self.length]

    def view(self, offset: int, size: int) -> ctypes.Array:
        address = ctypes.cast(ctypes.c_char_p(self.data), ctypes.c_void_p).value or 0
        window = (ctypes.c_char * size).from_address(address + self.start + offset)
        window.keep = self.data  # the bytes must outlive the window, whatever the cache evicts meanwhile
        return window



class DiskTier:
    """Blocks as files under `directory`; least recently used files go first once `capacity` is reached.

    The directory is emptied when the tier starts, so it never holds blocks whose index was lost.
    """

    def __init__(self, directory: str, capacity: int) -> None:
        self.directory = directory
        self.capacity = capacity
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._index: LRUCache[BlockKey, int] = LRUCache(maxsize=capacity, getsizeof=lambda size: max(size, 1))
        self._lock = threading.Lock()

    def _path(self, key: BlockKey) -> str:
        digest = hashlib.sha256(repr(key).encode("utf-8", "surrogateescape")).hexdigest()
        return os.path.join(self.directory, digest[:2], digest[2:])

    def contains(self, key: BlockKey) -> bool:
        with self._lock:
            return key in self._index

    @property
    def used(self) -> int:
        with self._lock:
            return int(self._index.currsize)

    def get(self, key: BlockKey) -> bytes | None:
        with self._lock:
            size = self._index.get(key)  # also marks it as recently used
        if size is None:
            return None
        try:
            with open(self._path(key), "rb") as file:
                data = file.read()
        except OSError:  # still being written by another thread, or removed by hand
            return None
        if len(data) != size:  # truncated behind our back: a short block must never be served
            log.warning("disk cache block %s has %d bytes instead of %d; dropped", self._path(key), len(data), size)
            with self._lock:
                self._index.pop(key, None)
            return None
        return data

    def put(self, key: BlockKey, data: bytes) -> None:
        if len(data) > self.capacity:
            return
        evicted: list[BlockKey] = []
        with self._lock:
            if key in self._index:
                return
            while self._index.currsize + len(data) > self.capacity and self._index:
                evicted.append(self._index.popitem()[0])
            self._index[key] = len(data)
        for old in evicted:
            try:
                os.unlink(self._path(old))
            except OSError:
                pass
        path = self._path(key)
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with atomic_file(path) as file:
                file.write(data)
        except OSError as exc:
            log.warning("disk cache write failed (%s); block kept in memory only", exc)
            with self._lock:
                self._index.pop(key, None)


class BlockCache:
    """Memory LRU of blocks (bounded in bytes) over an optional disk tier."""

    def __init__(self, memory_capacity: int, disk: DiskTier | None = None) -> None:
        self.memory_capacity = memory_capacity
        self._memory: LRUCache[BlockKey, Block] = LRUCache(maxsize=max(memory_capacity, 1), getsizeof=len)
        self._lock = threading.Lock()
        self.disk = disk
        self.hits = 0
        self.misses = 0

    def get(self, key: BlockKey) -> Block | None:
        with self._lock:
            data = self._memory.get(key)
            if data is not None:
                self.hits += 1
                return data
        if self.disk is not None:
            raw = self.disk.get(key)
            if raw is not None:
                block = Block(raw)
                self._store(key, block)
                with self._lock:
                    self.hits += 1
                return block
        with self._lock:
            self.misses += 1
        return None

    def contains(self, key: BlockKey) -> bool:
        """True if `get` would hit, without counting it or changing recency."""
        with self._lock:
            if key in self._memory:
                return True
        return self.disk is not None and self.disk.contains(key)

    def _store(self, key: BlockKey, data: Block) -> None:
        if len(data) > self.memory_capacity:
            return
        with self._lock:
            self._memory[key] = data

    def put(self, key: BlockKey, data: Block) -> None:
        self._store(key, data)
        if self.disk is not None:
            self.disk.put(key, data.tobytes())

    def stats(self) -> dict:
        with self._lock:
            result = {"memory_used": int(self._memory.currsize), "memory_limit": self.memory_capacity,
                      "hits": self.hits, "misses": self.misses}
        if self.disk is not None:
            result.update(disk_used=self.disk.used, disk_limit=self.disk.capacity)
        return result
