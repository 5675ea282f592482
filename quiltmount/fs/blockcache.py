"""Block cache: fixed-size blocks keyed by (object identity, block index), in memory over the disk cache.

Memory tier: cachetools LRUs bounded in bytes, this mount's own.  Disk tier: the persistent cache shared by
every mount of the user (`cache/disk.py`), for blocks whose identity is durable (`cache/keys.py`).  Because
identities name immutable bytes, a block can never be served for another version of an object.

Blocks loaded from the disk tier are kept in memory in an LRU of their own, a share of the memory budget
(`loaded_capacity`): the kernel keeps a block file's pages once it is read, and memory that keeps growing costs
a page fault per 4 KiB.  Measured on a 512 MiB re-read from disk with the default memory budget: with every
loaded block kept, faulting new memory took half of the daemon's CPU and the re-read ran at 0.85-0.89 GB/s;
with loaded blocks recycled through the read-ahead budget (128 MiB), at 1.0-1.35 GB/s.
"""

from __future__ import annotations

import ctypes
import threading

from cachetools import LRUCache

from quiltmount.cache.disk import DiskCache
from quiltmount.cache.keys import Identity

BlockKey = tuple[Identity, int]  # (object identity, block index)


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

    def memoryview(self) -> memoryview:
        """The block's bytes without a copy (they keep the whole GET's bytes alive while the view lives)."""
        return memoryview(self.data)[self.start:self.start + self.length]

    def view(self, offset: int, size: int) -> ctypes.Array:
        address = ctypes.cast(ctypes.c_char_p(self.data), ctypes.c_void_p).value or 0
        window = (ctypes.c_char * size).from_address(address + self.start + offset)
        window.keep = self.data  # the bytes must outlive the window, whatever the cache evicts meanwhile
        return window


class BlockCache:
    """Memory LRUs of blocks (bounded in bytes together) over the optional shared disk cache."""

    def __init__(self, memory_capacity: int, disk: DiskCache | None = None, *,
                 loaded_capacity: int | None = None) -> None:
        """`loaded_capacity`: of `memory_capacity`, the bytes that blocks loaded from `disk` may hold (at most
        half; default a quarter); it should hold what read-ahead loads ahead of its readers."""
        self.memory_capacity = memory_capacity
        loaded = 0 if disk is None else min(memory_capacity // 4 if loaded_capacity is None else loaded_capacity,
                                            memory_capacity // 2)
        self._memory: LRUCache[BlockKey, Block] = LRUCache(maxsize=max(memory_capacity - loaded, 1), getsizeof=len)
        self._loaded: LRUCache[BlockKey, Block] = LRUCache(maxsize=max(loaded, 1), getsizeof=len)
        self._lock = threading.Lock()
        self.disk = disk
        self.hits = 0
        self.misses = 0

    def get(self, key: BlockKey) -> Block | None:
        block = self.get_memory(key)
        return block if block is not None else self.from_disk(key)

    def get_memory(self, key: BlockKey) -> Block | None:
        """The block if this mount's memory has it (a hit or a miss of the memory tier)."""
        with self._lock:
            data = self._memory.get(key)
            if data is None:
                data = self._loaded.get(key)
            if data is not None:
                self.hits += 1
            else:
                self.misses += 1
            return data

    def in_memory(self, key: BlockKey) -> bool:
        with self._lock:
            return key in self._memory or key in self._loaded

    def from_disk(self, key: BlockKey) -> Block | None:
        """The block from the disk cache (kept in the memory share of loaded blocks), or None."""
        identity, index = key
        if self.disk is None or identity.disk_key is None:
            return None
        raw = self.disk.get(identity.disk_key, index)
        if raw is None:
            return None
        block = Block(raw)
        if len(block) <= self._loaded.maxsize:
            with self._lock:
                self._loaded[key] = block
        return block

    def on_disk(self, identity: Identity, first: int, last: int) -> set[int]:
        """Which of blocks first..last of `identity` the disk cache holds (one index query)."""
        if self.disk is None or identity.disk_key is None:
            return set()
        return self.disk.cached_blocks(identity.disk_key, first, last)

    def contains(self, key: BlockKey) -> bool:
        """True if `get` would hit, without counting it or changing recency."""
        with self._lock:
            if key in self._memory or key in self._loaded:
                return True
        identity, index = key
        return (self.disk is not None and identity.disk_key is not None
                and self.disk.contains(identity.disk_key, index))

    def _store(self, key: BlockKey, data: Block) -> None:
        if len(data) > self._memory.maxsize:
            return
        with self._lock:
            self._memory[key] = data

    def put(self, key: BlockKey, data: Block) -> None:
        self._store(key, data)
        identity, index = key
        if self.disk is not None and identity.written_to_disk:
            assert identity.disk_key is not None
            self.disk.put(identity.disk_key, index, data.memoryview(), identity.source,
                          pending=identity.origin if identity.checked_on_disk else None)

    def checked(self, identity: Identity) -> None:
        """The whole of `identity` was read and matched its content hash: its blocks on disk that came from the
        same bytes (its origin) may be served."""
        if self.disk is not None and identity.disk_key is not None and identity.origin is not None:
            self.disk.mark_checked(identity.disk_key, identity.origin)

    def lacks_origin(self, identity: Identity, last: int) -> bool:
        """Whether blocks 0..last of `identity`, a package entry that nothing pins, would be read from the
        source and not be written to the disk cache for want of an origin: some of them are not on disk."""
        return (identity.checked_on_disk and identity.origin is None and identity.disk_key is not None
                and self.disk is not None and self.disk.enabled and len(self.on_disk(identity, 0, last)) <= last)

    def forget(self, identity: Identity) -> None:
        """Drop every block of `identity` from memory and disk (bytes that failed their content check)."""
        with self._lock:
            for tier in (self._memory, self._loaded):
                for key in [key for key in tier if key[0] == identity]:
                    del tier[key]
        if self.disk is not None and identity.disk_key is not None:
            self.disk.evict(identity.disk_key)

    def stats(self) -> dict:
        with self._lock:
            result = {"memory_used": int(self._memory.currsize + self._loaded.currsize),
                      "memory_limit": self.memory_capacity,
                      "memory_hits": self.hits, "memory_misses": self.misses}
        if self.disk is not None:
            result.update(self.disk.stats())
        return result
